"""Mutations of valid checkpoints either load or raise PthError: never another exception.

Seeds are the committed files in ``fuzz/corpus`` (torch-written).  Mutations: bit flips,
truncation, insertion, swapping two records' contents, and opcode-level edits of the pickle
inside a re-zipped, CRC-correct archive (so that the mutation reaches the unpickler rather
than stopping at the zip layer).  ``test_fuzz_regressions.py`` replays saved crashes.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import zipfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pthfmt.pickle.opcodes import OPCODES
from tests.support import ROOT
from tests.support.host import child_env


def _exercise() -> Any:
    """``fuzz/exercise.py``'s ``exercise``, shared with the fuzz harness (loaded from its
    file: ``fuzz/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("_fuzz_exercise", ROOT / "fuzz" / "exercise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.exercise


exercise = _exercise()

SEEDS = {p.name: p.read_bytes() for p in sorted((ROOT / "fuzz" / "corpus").glob("*.pt"))}
CODES = [op.code for op in OPCODES]


def rezip(data: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    records = {i.filename: src.read(i.filename) for i in src.infolist()}
    records = edit(records)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name, body in records.items():
            dst.writestr(name, body)
    return buf.getvalue()


seeds = st.sampled_from(sorted(SEEDS))
fast = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@fast
@given(seeds, st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips(name, flips):
    data = bytearray(SEEDS[name])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    exercise(bytes(data))


@fast
@given(seeds, st.integers(0, 10**7))
def test_truncation(name, cut):
    data = SEEDS[name]
    exercise(data[: cut % len(data)])


@fast
@given(seeds, st.integers(0, 10**7), st.binary(min_size=1, max_size=64))
def test_insertion(name, pos, junk):
    data = SEEDS[name]
    pos %= len(data)
    exercise(data[:pos] + junk + data[pos:])


@fast
@given(
    st.sampled_from([n for n in sorted(SEEDS) if SEEDS[n][:2] == b"PK"]),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_record_swaps(name, i, j):
    def swap(records):
        names = list(records)
        a, b = names[i % len(names)], names[j % len(names)]
        records[a], records[b] = records[b], records[a]
        return records

    exercise(rezip(SEEDS[name], swap))


@fast
@given(
    st.sampled_from([n for n in sorted(SEEDS) if SEEDS[n][:2] == b"PK"]),
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(["set", "insert", "delete"]),
            st.sampled_from([*CODES, 0, 0xFF]),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_pickle_opcode_mutations(name, edits):
    def mutate(records):
        pkl = next(n for n in records if n.endswith("data.pkl"))
        body = bytearray(records[pkl])
        for pos, how, code in edits:
            pos %= len(body)
            if how == "set":
                body[pos] = code
            elif how == "insert":
                body.insert(pos, code)
            elif len(body) > 1:
                del body[pos]
        records[pkl] = bytes(body)
        return records

    exercise(rezip(SEEDS[name], mutate))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_truncation_of_small_seeds(name):
    data = SEEDS[name]
    step = max(1, len(data) // 400)
    for cut in range(0, len(data), step):
        exercise(data[:cut])


def test_atheris_short_pass(tmp_path):
    """CI's bounded coverage-guided pass (the long run is documented in fuzz/fuzz_load.py)."""
    pytest.importorskip("atheris")
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_load.py"),
            str(work),
            str(ROOT / "fuzz" / "corpus"),
            "-runs=1500",
            "-timeout=20",
            "-rss_limit_mb=3072",
            f"-artifact_prefix={tmp_path}/crash-",
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        cwd=tmp_path,
        env=child_env(),
    )
    crashes = list(tmp_path.glob("crash-*"))
    assert out.returncode == 0 and not crashes, out.stderr[-4000:]
    covered = re.search(r"INITED cov: (\d+)", out.stderr)
    assert covered and int(covered.group(1)) > 500, "pthfmt is not instrumented"


@pytest.mark.slow
@settings(
    max_examples=20000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seeds, st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips_long(name, flips):
    test_bit_flips.hypothesis.inner_test(name, flips)


assert SEEDS, "fuzz/corpus has no seeds"
assert os.path.isdir(ROOT / "fuzz")
