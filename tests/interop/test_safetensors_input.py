"""safetensors as a checkpoint input: files the ``safetensors`` package writes read bit for bit
(every dtype both torch and safetensors have, bf16 and float8 included), zero copy with mmap,
through :func:`read_safetensors_source` directly and through ``pthfmt.open``/``load``/
``load_sharded``/``validate``.

The reader, sharded and validation hooks (one or two lines each in ``reader.py``,
``sharded.py`` and ``validation/__init__.py``) may not be applied yet: the ``hooks`` fixture
applies exactly the proposed change for the test's duration when it is missing, and does
nothing once it is there, so these tests pass before and after.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.safetensors]
torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

import pthfmt  # noqa: E402
from pthfmt import reader, sharded  # noqa: E402
from pthfmt.errors import FormatError, UnsupportedError  # noqa: E402
from pthfmt.formats.contract import Options  # noqa: E402
from pthfmt.formats.safetensors import SAFETENSORS_DTYPES, read_safetensors_source  # noqa: E402
from pthfmt.formats.sharding import open_shards, save_sharded, shard_layout  # noqa: E402
from pthfmt.model.device import location_mapper  # noqa: E402
from pthfmt.model.dtypes import from_numpy  # noqa: E402
from pthfmt.source import Source  # noqa: E402
from tests.support.torch_helpers import ALL_DTYPES, dtype_name, make_tensor, torch_bytes  # noqa: E402

Written = tuple[Path, dict[str, Any]]
ST_DTYPES = [d for d in ALL_DTYPES if dtype_name(d) in SAFETENSORS_DTYPES]


# -- the hooks, as proposed for the files this change does not own -------------------------------


def _reader_dispatches(tmp: Path) -> bool:
    path = tmp / "probe.safetensors"
    st_torch.save_file({"x": torch.zeros(1)}, str(path))
    try:
        reader.open(path)
    except FormatError:
        return False
    return True


def _hooked_parse_format(original: Any) -> Any:
    def parse(src: Source, opts: Options) -> Any:
        head = bytes(src.buf[:8])
        if (
            len(head) == 8
            and int.from_bytes(head, "little") < src.size
            and bytes(src.buf[8:9]) == b"{"
        ):
            return read_safetensors_source(src, opts)
        return original(src, opts)

    return parse


def _hooked_init(self: Any, index: str, *, mmap: bool = False, map_location: Any = None) -> None:
    layout = shard_layout(index)
    self.index_path, self.metadata, self.mmap = layout.index_path, layout.metadata, mmap
    self.shards, self.refs, self.weight_map = open_shards(layout, map_location)


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply the reader and sharded hooks unless they already are."""
    if not _reader_dispatches(tmp_path):
        monkeypatch.setattr(reader, "_parse_format", _hooked_parse_format(reader._parse_format))
    if "shard_layout" not in vars(sharded):
        monkeypatch.setattr(sharded.ShardedCheckpoint, "__init__", _hooked_init)


# -- files -------------------------------------------------------------------------------------


def every_dtype(seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {dtype_name(d): make_tensor(d, (3, 4), gen) for d in ST_DTYPES}
    tensors["scalar"] = torch.tensor(7, dtype=torch.int32)
    tensors["empty"] = torch.zeros(0, 5, dtype=torch.bfloat16)
    tensors["deep"] = torch.arange(24, dtype=torch.float16).reshape(2, 3, 1, 4)
    return tensors


@pytest.fixture
def written(tmp_path: Path) -> Written:
    tensors = every_dtype()
    path = tmp_path / "model.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"format": "pt", "origin": "test"})
    return path, tensors


def same(array: np.ndarray, t: Any, key: str) -> None:
    info = from_numpy(array.dtype)
    assert info is not None and info.name == dtype_name(t.dtype), key
    assert tuple(array.shape) == tuple(t.shape), key
    assert np.ascontiguousarray(array).tobytes() == torch_bytes(t), key


def file_map(array: np.ndarray) -> Any:
    """The object at the root of ``array``'s base chain (the file's mmap when zero copy)."""
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def parse(path: Path, *, eager: bool, mmap_: bool) -> Any:
    src = Source(path)
    return read_safetensors_source(src, Options(location_mapper(None), eager, mmap_))


# -- through the module --------------------------------------------------------------------------


@pytest.mark.parametrize("mmap_", [False, True])
def test_module_reads_every_dtype_bit_for_bit(written: Written, mmap_: bool) -> None:
    path, tensors = written
    parsed = parse(path, eager=True, mmap_=mmap_)
    assert parsed.format == "safetensors"
    assert parsed.metadata == {"format": "pt", "origin": "test"}
    assert set(parsed.obj) == set(tensors)
    for key, t in tensors.items():
        same(parsed.obj[key], t, key)
        assert parsed.obj[key].flags.writeable is not mmap_


def test_checkpoint_metadata(written: Written, tmp_path) -> None:
    path, _ = written
    with pthfmt.open(path) as ck:
        assert ck.format == "safetensors" and ck.version is None
        assert ck.metadata == {"format": "pt", "origin": "test"}
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    with pthfmt.open(tmp_path / "w.pt") as ck:
        assert ck.metadata is None and ck.constants is None


def test_module_lazy_refs(written: Written) -> None:
    path, tensors = written
    parsed = parse(path, eager=False, mmap_=False)
    for key, ref in parsed.obj.items():
        t = tensors[key]
        assert ref.dtype == dtype_name(t.dtype) and ref.shape == tuple(t.shape)
        assert ref.nbytes == t.numel() * t.element_size() and str(ref.device) == "cpu"
        same(ref.numpy(), t, key)
    assert len({ref.storage_key for ref in parsed.obj.values()}) == len(tensors)


def test_module_mmap_is_zero_copy(written: Written) -> None:
    path, _ = written
    parsed = parse(path, eager=True, mmap_=True)
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    start = 8 + int.from_bytes(data[:8], "little")
    maps = {id(file_map(array)) for array in parsed.obj.values()}
    assert len(maps) == 1  # one mapping of the file, every array a view of it
    for key, array in parsed.obj.items():
        the_map = file_map(array)
        assert isinstance(the_map, mmap.mmap) and not array.flags.writeable, key
        whole = np.frombuffer(the_map, np.uint8)
        begin, end = header[key]["data_offsets"]
        if array.size:
            assert np.shares_memory(array, whole[start + begin : start + end]), key
            assert not np.shares_memory(array, whole[: start + begin]), key
    copied = parse(path, eager=True, mmap_=False)
    for key, array in copied.obj.items():
        assert not isinstance(file_map(array), mmap.mmap), key


def test_module_refuses_f6(tmp_path: Path) -> None:
    text = json.dumps({"f6": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}})
    text += " " * (-len(text) % 8)
    path = tmp_path / "f6.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + bytes(3))
    with pytest.raises(UnsupportedError) as info:
        parse(path, eager=False, mmap_=False)
    assert info.value.message == "safetensors entry f6 (F6_E2M3) has no torch dtype"
    assert info.value.offset == 9 and info.value.key_path == "f6"


# -- through pthfmt.open / load (hook applied or proposed) ---------------------------------------


@pytest.mark.usefixtures("hooks")
def test_open_lists_every_tensor(written: Written) -> None:
    path, tensors = written
    with pthfmt.open(path) as ck:
        assert ck.format == "safetensors" and ck.byteorder == "little"
        found = dict(ck.tensors())
        assert set(found) == set(tensors) and len(ck.storages) == len(tensors)
        for key, ref in found.items():
            same(ref.numpy(), tensors[key], key)


@pytest.mark.usefixtures("hooks")
@pytest.mark.parametrize("mmap_", [False, True])
def test_load_every_dtype(written: Written, mmap_: bool) -> None:
    path, tensors = written
    loaded = pthfmt.load(path, mmap=mmap_)
    assert set(loaded) == set(tensors)
    for key, t in tensors.items():
        same(loaded[key], t, key)
        assert isinstance(file_map(loaded[key]), mmap.mmap) is mmap_, key


@pytest.mark.usefixtures("hooks")
def test_load_of_a_file_object_and_map_location(written: Written) -> None:
    path, tensors = written
    with open(path, "rb") as fh:
        loaded = pthfmt.load(fh)
    for key, t in tensors.items():
        same(loaded[key], t, key)
    with pthfmt.open(path, map_location="cuda:1") as ck:
        assert {str(ref.device) for _, ref in ck.tensors()} == {"cuda:1"}


@pytest.mark.usefixtures("hooks")
def test_open_then_save_is_read_by_torch(written: Written, tmp_path: Path) -> None:
    path, tensors = written
    with pthfmt.open(path) as ck:
        pthfmt.save(ck.obj, tmp_path / "back.pth")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    for key, t in tensors.items():
        assert back[key].dtype == t.dtype and torch_bytes(back[key]) == torch_bytes(t), key


@pytest.mark.usefixtures("hooks")
def test_load_sharded_safetensors_index_folder_and_single_file(tmp_path: Path) -> None:
    tensors = every_dtype(1)
    arrays = {k: pthfmt.load(_pth(tmp_path, {k: t}))[k] for k, t in tensors.items()}
    out = tmp_path / "hf"
    save_sharded(arrays, out, max_shard_size=100, format="safetensors")
    for source in (out, out / "model.safetensors.index.json"):
        for mmap_ in (False, True):
            merged = pthfmt.load_sharded(source, mmap=mmap_)
            assert set(merged) == set(tensors) and len(merged.shards) > 2
            for key, t in tensors.items():
                same(merged[key], t, key)
    single = tmp_path / "single"
    save_sharded(arrays, single, format="safetensors")
    assert os.listdir(single) == ["model.safetensors"]
    for source in (single, single / "model.safetensors"):
        merged = pthfmt.load_sharded(source)
        assert set(merged) == set(tensors) and merged.index_path.endswith("model.safetensors")
        for key, t in tensors.items():
            same(merged[key], t, key)


@pytest.mark.usefixtures("hooks")
def test_a_folder_with_both_kinds_of_index_reads_the_safetensors_one(tmp_path: Path) -> None:
    arrays = {"a": np.arange(40, dtype=np.float32), "b": np.ones(30, np.float32)}
    save_sharded(arrays, tmp_path, max_shard_size=150, format="pth")
    save_sharded(
        {k: v + 1 for k, v in arrays.items()}, tmp_path, max_shard_size=150, format="safetensors"
    )
    merged = pthfmt.load_sharded(tmp_path)
    assert merged.index_path.endswith("model.safetensors.index.json")
    assert np.array_equal(merged["a"], arrays["a"] + 1)
    merged = pthfmt.load_sharded(tmp_path / "pytorch_model.bin.index.json")
    assert np.array_equal(merged["a"], arrays["a"])


def _pth(tmp: Path, tensors: dict[str, Any]) -> Path:
    path = tmp / "one.pth"
    torch.save(tensors, path)
    return path


# -- validate ------------------------------------------------------------------------------------


def test_check_safetensors_of_a_package_file_is_clean(written: Written) -> None:
    from pthfmt.reader import detect_format
    from pthfmt.validation.safetensors import check_safetensors

    path, _ = written
    src = Source(path)
    assert detect_format(bytes(src.buf[:512]), src.size) == "safetensors"
    assert check_safetensors(src) == []


def test_check_safetensors_reports_every_problem(written: Written, tmp_path: Path) -> None:
    from pthfmt.validation.safetensors import check_safetensors

    path, _ = written
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["float32"]["dtype"] = "F99"
    header["int8"]["shape"] = [-1]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + n :]))
    problems = check_safetensors(Source(bad))
    codes = [(p.code, p.key_path) for p in problems]
    assert ("safetensors.dtype", "float32") in codes and ("safetensors.shape", "int8") in codes
    # the two entries left out leave their bytes as gaps
    assert [p.code for p in problems].count("safetensors.offsets") >= 1
    assert all(p.severity == "error" and p.offset is not None for p in problems)


# -- validate (runs once the validation hook is applied) -----------------------------------------

import pthfmt.validation as _validation  # noqa: E402

needs_validation_hook = pytest.mark.skipif(
    "check_safetensors" not in vars(_validation),
    reason="the validation hook (validation/__init__.py) is not applied yet",
)


@needs_validation_hook
def test_validate_a_sound_file(written: Written) -> None:
    path, _ = written
    report = pthfmt.validate(path)
    assert report.ok and report.format == "safetensors" and report.problems == []


@needs_validation_hook
def test_validate_reports_header_problems_once(written: Written, tmp_path: Path) -> None:
    path, _ = written
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begin, end = header["float32"]["data_offsets"]
    header["float32"]["data_offsets"] = [begin, end - 4]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + n :]))
    report = pthfmt.validate(bad)
    assert not report.ok and report.format == "safetensors"
    after = next(
        k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][0] == end
    )
    assert [(p.code, p.key_path) for p in report.problems] == [
        ("safetensors.size", "float32"),
        ("safetensors.offsets", after),  # the entry left out leaves a gap
    ]
    assert report.problems[1].message.startswith(f"safetensors data has a gap of {end - begin}")
    assert report.load_error is not None and "F32 shape [3, 4] needs 48 bytes" in report.load_error


@needs_validation_hook
def test_validate_warns_for_f6(tmp_path: Path) -> None:
    text = json.dumps({"f6": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}})
    text += " " * (-len(text) % 8)
    path = tmp_path / "f6.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + bytes(3))
    report = pthfmt.validate(path)
    assert [(p.code, p.severity) for p in report.problems] == [
        ("safetensors.no_torch_dtype", "warning")
    ]


@pytest.mark.parametrize("keep", [9, 40])
def test_a_truncated_safetensors_file_says_so(written: Written, tmp_path: Path, keep: int) -> None:
    """A download cut inside the header is a safetensors error naming the header's end, from
    load and validate alike, not "not a checkpoint"; text with ``{`` at byte 8 is still not
    a checkpoint."""
    path, _ = written
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep])
    with pytest.raises(pthfmt.CorruptError) as info:
        pthfmt.load(cut)
    assert info.value.message == (
        f"safetensors header of {header} bytes runs past the end of the {keep}-byte file"
    )
    report = pthfmt.validate(cut)
    assert (report.format, report.codes) == ("safetensors", ["safetensors.header"])
    text = tmp_path / "notes.txt"
    text.write_bytes(b"abcdefgh{ not a checkpoint }")
    with pytest.raises(FormatError, match=r"^not a torch checkpoint"):
        pthfmt.load(text)
