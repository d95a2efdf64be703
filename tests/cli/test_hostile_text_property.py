"""Property: whatever strings, numbers and nesting a checkpoint holds (control characters, ESC,
bidi overrides, lone surrogates, NEL, BOM, huge ints, NaN), every command's text output and
stderr are printable, valid UTF-8 and free of internal errors, and ``--json`` is valid JSON;
convert's outputs read back."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt.cli import main

HOSTILE = st.sampled_from(list("\x1b\u202e\udc80\x07\r\x85\u2028\x00\x9b\ufeff\u200f\n"))
TEXT = st.text(st.characters(codec=None) | HOSTILE, max_size=20)
LEAF = st.one_of(
    TEXT,
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.none(),
    st.booleans(),
    st.builds(lambda n: np.arange(n, dtype=np.float32), st.integers(0, 4)),
)
TREE = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _clean(text: str, argv: list[str]) -> None:
    raw = [c for c in text if not c.isprintable() and c != "\n"]
    assert not raw, (argv, raw[:5], text[:300])
    text.encode("utf-8")
    assert "internal error" not in text and "Traceback" not in text, (argv, text[:500])


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(TEXT, TREE, min_size=1, max_size=4), st.dictionaries(TEXT, TREE, max_size=3))
def test_every_command_prints_hostile_text_escaped(a: dict[str, Any], b: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = str(Path(tmp) / "a.pth"), str(Path(tmp) / "b.pth")
        try:
            pthfmt.save(a, pa)
            pthfmt.save(b, pb)
        except pthfmt.PthError:
            return
        outputs = [str(Path(tmp) / "o.safetensors"), str(Path(tmp) / "o.npz")]
        for argv in (
            ["inspect", pa],
            ["inspect", "--json", pa],
            ["validate", pa],
            ["validate", "--json", pa],
            ["diff", pa, pb],
            ["diff", "--json", pa, pb],
            *(["convert", pa, o] for o in outputs),
            *(["convert", o, str(Path(tmp) / "back.pth")] for o in outputs),
            ["inspect", "--json", outputs[0]],
        ):
            status, out, err = _run(argv)
            assert status in (0, 1), (argv, status, err)
            _clean(out, argv)
            _clean(err, argv)
            if "--json" in argv:
                json.loads(out)
