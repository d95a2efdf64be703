"""``pthfmt diff --atol/--rtol`` and the library's ``pthfmt.diff()``: numpy ``isclose``
semantics, float64 comparison across dtypes, the largest absolute and relative difference
per key, and the :class:`pthfmt.DiffResult` the command line prints."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pthfmt
from tests.support import ROOT
from tests.support.host import child_env

RESULT_KEYS = {
    "a",
    "b",
    "atol",
    "rtol",
    "values_compared",
    "only_a",
    "only_b",
    "mismatched",
    "different",
    "equal",
    "hints",
    "load_state_dict_strict_ok",
    "ok",
    "identical",
}


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", "diff", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=child_env(),
        cwd=ROOT,
    )


@pytest.fixture()
def halves(tmp_path: Path) -> tuple[Path, Path, dict]:
    """The same weights saved by torch in float32 and float16."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    sd = {"w": torch.randn(16, 8), "b": torch.randn(8) * 100, "step": torch.tensor(3)}
    torch.save(sd, tmp_path / "fp32.pt")
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()},
               tmp_path / "fp16.pt")  # fmt: skip
    return tmp_path / "fp32.pt", tmp_path / "fp16.pt", sd


@pytest.mark.torch
def test_fp16_against_fp32_within_tolerance(halves):
    a, b, _ = halves
    out = run(a, b)
    assert out.returncode == 1
    assert "values differ (2):" in out.stdout
    out = run("--atol", "0.01", "--rtol", "0.001", a, b)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[-1] == (
        "3 entries equal. load_state_dict(strict=True) would accept B; all values equal "
        "within atol=0.01, rtol=0.001."
    )
    assert "dtype mismatch (2, load_state_dict casts):" in out.stdout


@pytest.mark.torch
def test_largest_differences_match_torch(halves):
    a, b, sd = halves
    out = run("--json", a, b)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert set(doc) == RESULT_KEYS
    assert doc["mismatched"] == [
        {"key": "w", "what": "dtype", "a": "float32", "b": "float16"},
        {"key": "b", "what": "dtype", "a": "float32", "b": "float16"},
    ]
    by_key = {d["key"]: d for d in doc["different"]}
    assert set(by_key) == {"w", "b"}
    for key in ("w", "b"):
        x, y = sd[key].double(), sd[key].half().double()
        delta = (x - y).abs()
        assert by_key[key]["max_abs_diff"] == delta.max().item()
        assert by_key[key]["max_rel_diff"] == (delta / y.abs()).max().item()
        assert by_key[key]["not_close"] == int((x != y).sum())
        assert by_key[key]["dtype"] == "float32/float16"
    assert doc["equal"] == 1 and doc["load_state_dict_strict_ok"] and not doc["ok"]


@pytest.mark.torch
def test_library_diff_result(halves, tmp_path):
    import torch

    a, b, sd = halves
    result = pthfmt.diff(a, b, atol=0.01, rtol=0.001)
    assert isinstance(result, pthfmt.DiffResult)
    assert result.ok and not result.identical
    assert result.only_a == result.only_b == result.different == []
    assert [m["what"] for m in result.mismatched] == ["dtype", "dtype"]
    assert set(result.to_dict()) == RESULT_KEYS
    other = dict(sd, extra=torch.ones(1), w=torch.zeros(3))
    other["module.b"] = other.pop("b")
    torch.save(other, tmp_path / "other.pt")
    result = pthfmt.diff(a, tmp_path / "other.pt")
    assert result.only_a == ["b"] and result.only_b == ["extra", "module.b"]
    assert result.mismatched == [{"key": "w", "what": "shape", "a": [16, 8], "b": [3]}]
    assert not result.ok
    stripped = pthfmt.diff(tmp_path / "other.pt", a, strip_a="module.")
    assert stripped.only_a == ["extra"] and stripped.only_b == []
    with pytest.raises(pthfmt.PthError, match="no key 'nope' in the file"):
        pthfmt.diff(a, b, key_a="nope")
    with pytest.raises(ValueError, match="atol and rtol must be 0 or more"):
        pthfmt.diff(a, b, atol=-1.0)
    with pytest.raises(OSError):
        pthfmt.diff(a, tmp_path / "missing.pt")


@pytest.mark.torch
def test_usage_errors(halves):
    a, b, _ = halves
    out = run("--atol", "-1", a, b)
    assert out.returncode == 2 and "must be a finite number >= 0: '-1'" in out.stderr
    out = run("--no-values", "--rtol", "0.1", a, b)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        "pthfmt: diff: --atol/--rtol compare values: not with --no-values"
    )


floats = st.one_of(
    st.floats(-4, 4, width=32),
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([float("nan"), float("inf"), 0.0, -0.0]),
)


@settings(max_examples=60, deadline=None)
@given(
    x=st.lists(floats, min_size=1, max_size=20),
    noise=st.lists(st.floats(-2, 2), min_size=20, max_size=20),
    atol=st.sampled_from([0.0, 1e-6, 0.1, 3.0]),
    rtol=st.sampled_from([0.0, 1e-4, 0.5]),
)
def test_isclose_semantics(x, noise, atol, rtol):
    """``not_close`` and ``ok`` are numpy's ``isclose(a, b, rtol, atol, equal_nan=True)``;
    the compared values are float64 of float32 against float64."""
    a = np.array(x, dtype=np.float32)
    b = a.astype(np.float64) + np.array(noise[: len(x)]) * (np.arange(len(x)) % 3 == 0)
    with tempfile.TemporaryDirectory() as tmp:
        pthfmt.save({"t": a}, Path(tmp) / "a.pt")
        pthfmt.save({"t": b}, Path(tmp) / "b.pt")
        result = pthfmt.diff(Path(tmp) / "a.pt", Path(tmp) / "b.pt", atol=atol, rtol=rtol)
    expected = ~np.isclose(a.astype(np.float64), b, rtol=rtol, atol=atol, equal_nan=True)
    assert result.ok == (not expected.any())
    if expected.any():
        (found,) = result.different
        assert found["not_close"] == int(expected.sum())
    else:
        assert result.different == []
