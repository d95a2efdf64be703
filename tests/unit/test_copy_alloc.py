"""The buffers a copying load fills: populated up front, exact bytes, clean failure.

``fresh_buffer`` is where the copy-load allocation strategy lives (see the measurements in
benchmarks/README.md, "Copy load: where the buffer comes from"): large buffers are private
anonymous ``MAP_POPULATE`` mappings, smaller ones and platforms without ``MAP_POPULATE`` get
``np.empty``.  ``Source.copy`` fills them with ``preadv`` from the page cache.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
import pthfmt.source as source

MiB = 1 << 20
FILE_BYTES = 9 * MiB + 12345  # straddles the 1 MiB preadv threshold several times over
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = np.random.default_rng(19).integers(0, 256, FILE_BYTES, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("copy") / "data.bin"
    path.write_bytes(data)
    return path, data


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offset=st.integers(0, FILE_BYTES),
    nbytes=st.one_of(
        st.integers(0, 2 * MiB),
        st.sampled_from([MiB - 1, MiB, MiB + 1, 4 * MiB, 8 * MiB]),
    ),
)
def test_copy_is_the_bytes_at_the_offset(
    data_file: tuple[Path, bytes], offset: int, nbytes: int
) -> None:
    path, data = data_file
    nbytes = min(nbytes, FILE_BYTES - offset)
    src = source.Source(str(path))
    out = src.copy(offset, nbytes)
    assert out.dtype == np.uint8 and out.shape == (nbytes,)
    assert out.flags.writeable and out.flags.c_contiguous
    assert out.tobytes() == data[offset : offset + nbytes]
    out[:] = 0  # private: writing it changes neither the file nor a second copy
    assert src.copy(offset, nbytes).tobytes() == data[offset : offset + nbytes]
    assert path.read_bytes()[offset : offset + nbytes] == data[offset : offset + nbytes]


def test_copy_past_the_end_is_corrupt(data_file: tuple[Path, bytes]) -> None:
    path, _ = data_file
    with pytest.raises(pthfmt.CorruptError) as info:
        source.Source(str(path)).copy(FILE_BYTES - MiB, 2 * MiB)
    assert info.value.message == (
        f"data of {2 * MiB} bytes at file offset {FILE_BYTES - MiB} runs past the end of the "
        f"{FILE_BYTES}-byte file"
    )


@pytest.mark.skipif(not getattr(mmap, "MAP_POPULATE", 0), reason="no MAP_POPULATE here")
@linux_only
def test_a_large_buffer_is_resident_before_it_is_written() -> None:
    # the decision (benchmarks/README.md): the kernel provides every page in the one mmap call,
    # none is faulted in by the copy; np.empty would leave RssAnon unchanged until written
    before = rss_anon()
    buf = source.fresh_buffer(64 * MiB)
    grown = rss_anon() - before
    assert grown >= 64 * MiB, grown
    assert buf.shape == (64 * MiB,) and buf.flags.writeable
    assert not buf.any()  # anonymous memory starts zeroed


@linux_only
def test_small_buffers_are_not_populated_mappings() -> None:
    # below the preadv threshold a copy comes from the mapping: no mmap call per small buffer
    buf = source.fresh_buffer(source.PREAD_FROM - 1)
    assert buf.base is None or not isinstance(buf.base, mmap.mmap)
    assert buf.shape == (source.PREAD_FROM - 1,)


def test_without_map_populate_copies_are_the_same(
    data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file
    monkeypatch.setattr(source, "_POPULATE", 0)  # the platform has no MAP_POPULATE
    out = source.Source(str(path)).copy(100, 5 * MiB)
    assert out.tobytes() == data[100 : 100 + 5 * MiB]
    assert out.flags.writeable


@linux_only
def test_an_impossible_buffer_is_a_limit_error() -> None:
    with open("/proc/sys/vm/overcommit_memory") as f:
        if f.read().strip() == "1":  # "always overcommit": the mapping would be granted
            pytest.skip("vm.overcommit_memory=1")
    nbytes = 1 << 46  # 64 TiB: refused by mmap and by malloc under heuristic overcommit
    with pytest.raises(pthfmt.LimitError) as info:
        source.fresh_buffer(nbytes)
    assert info.value.message == f"out of memory allocating {nbytes} bytes"
    assert info.value.__context__ is None and info.value.__cause__ is None
