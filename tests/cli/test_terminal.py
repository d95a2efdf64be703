"""What a file controls never reaches the terminal raw: keys, values, class names, paths and
warnings with ESC, BEL, CR, bidi overrides and lone surrogates are printed escaped by
``pthfmt.text.escape`` in every command, under a strict UTF-8 (or ASCII) stdout; ``--json``
is valid UTF-8 (ASCII) JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.host import child_env

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

HOSTILE = "k\x1b[2J\x07\r\u202e\udc80"
ESCAPED = "k\\x1b[2J\\x07\\x0d\\u202e\\udc80"
RAW = ("\x1b", "\x07", "\r", "\u202e")


def run(*args: object, encoding: str = "utf-8:strict") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", *map(str, args)],
        capture_output=True,
        timeout=120,
        env=child_env(PYTHONIOENCODING=encoding),
        cwd=ROOT,
    )


def clean(data: bytes) -> str:
    """``data`` decoded strictly, asserting that no raw control character is in it."""
    text = data.decode("utf-8")
    assert not any(c in text for c in RAW), text
    assert "Traceback" not in text
    return text


class Odd:
    """A class outside the allowlist (a stub when read)."""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    path = d / "hostile.pt"
    obj = {HOSTILE: torch.ones(2), "value": HOSTILE, "odd": Odd(), "n": 2**20000}
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii:strict"])
def test_inspect_text_is_escaped(hostile, encoding):
    out = run("inspect", hostile, encoding=encoding)
    assert out.returncode == 0, out.stderr
    text = clean(out.stdout)
    lines = text.splitlines()
    assert any(line.split()[:2] == [ESCAPED, "float32"] for line in lines)
    assert "value = 'k\\x1b[2J\\x07\\r\\u202e\\udc80'" in lines  # a value is its repr
    assert "n     = '<a 20001-bit int>'" in lines


def test_inspect_json_is_valid_utf8(hostile):
    out = run("inspect", "--json", hostile)
    assert out.returncode == 0
    assert out.stdout.isascii()
    doc = json.loads(out.stdout.decode("utf-8"))
    assert [t["key"] for t in doc["tensors"]] == [ESCAPED]
    assert doc["values"]["value"] == ESCAPED
    assert doc["values"]["n"] == "<a 20001-bit int>"
    assert doc["classes"] == [f"{Odd.__module__}.Odd"]


def test_diff_is_escaped(hostile, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"w": torch.ones(2), "value": "plain"}, other)
    out = run("diff", hostile, other)
    assert out.returncode == 1
    text = clean(out.stdout)
    assert f"  {ESCAPED}" in text.splitlines()
    json_out = run("diff", "--json", hostile, other)
    assert json_out.stdout.isascii()
    doc = json.loads(json_out.stdout)
    assert ESCAPED in doc["only_a"]


def test_convert_warnings_are_escaped(tmp_path):
    src = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2), HOSTILE: Odd()}, src)
    out = run("convert", src, tmp_path / "o.safetensors")
    assert out.returncode == 0, out.stderr
    assert clean(out.stderr).splitlines() == [
        "pthfmt: warning: left out 1 value that safetensors metadata cannot carry: "
        f"{ESCAPED} ({Odd.__module__}.Odd)"
    ]
    import pthfmt

    warnings = pthfmt.convert(src, tmp_path / "o.npz")
    assert warnings == [
        f"left out 1 value that the npz sidecar cannot carry: {ESCAPED} ({Odd.__module__}.Odd)"
    ]


def test_validate_escapes_file_names(tmp_path):
    name = tmp_path / "x\x1b[31m\x07.pt"
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    (tmp_path / "plain.pt").rename(name)
    out = run("validate", name)
    assert out.returncode == 0
    assert clean(out.stdout).splitlines() == [f"{tmp_path}/x\\x1b[31m\\x07.pt: ok (zip)"]
    missing = run("validate", tmp_path / "gone\x1b.pt")
    assert clean(missing.stderr).splitlines() == [
        f"pthfmt: {tmp_path}/gone\\x1b.pt: No such file or directory"
    ]


def test_undecodable_path_under_strict_stdout(tmp_path):
    """A file name that is not UTF-8 (a surrogate-escaped argument) prints escaped."""
    raw = bytes(tmp_path) + b"/bad\xff.pt"
    torch.save({"w": torch.ones(2)}, tmp_path / "bad.pt")
    (tmp_path / "bad.pt").rename(raw.decode("utf-8", "surrogateescape"))
    out = subprocess.run(
        [sys.executable, "-m", "pthfmt", "validate", raw],
        capture_output=True,
        timeout=120,
        env=child_env(PYTHONIOENCODING="utf-8:strict"),
        cwd=ROOT,
    )
    assert out.returncode == 0
    assert clean(out.stdout).splitlines() == [f"{tmp_path}/bad\\udcff.pt: ok (zip)"]


def test_prefix_hint_is_linear_in_key_length():
    from pthfmt.engines.diff import _prefix_hint

    long_key = ".".join(["a"] * 200_000)
    start = time.process_time()
    hint = _prefix_hint([long_key[2:]], [long_key, "x"], "b", None)
    assert time.process_time() - start < 1.0
    assert hint == "B's keys match under the prefix 'a.': try --strip-b a."
    start = time.process_time()
    assert _prefix_hint(["zzz"], [long_key] * 20, "b", None) is None
    assert time.process_time() - start < 2.0
