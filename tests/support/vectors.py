"""The conformance vectors of ``spec/vectors/`` and the spec's own scripts, loaded once for
``tests/unit/test_spec_vectors.py`` (pthfmt's reading) and ``tests/interop/test_spec_vectors.py``
(torch's).  ``spec/make_vectors.py`` imports torch only inside the functions that need it, so
loading it here needs no torch.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

SPEC = ROOT / "spec"
VECTORS = SPEC / "vectors"


def load_spec_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_spec_{name}", SPEC / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mv = load_spec_module("make_vectors")
gen_tables = load_spec_module("gen_tables")

DOCS = [
    json.loads(p.read_text(encoding="utf-8"))
    for p in sorted(VECTORS.glob("*.json"))
    if p.name != mv.MANIFEST
]
VALID = [d for d in DOCS if d["valid"] and d["format"] != "torchscript"]
INVALID = [d for d in DOCS if not d["valid"]]
TORCHSCRIPT = [d for d in DOCS if d["valid"] and d["format"] == "torchscript"]

#: Vectors pthfmt gets wrong: name -> reason (each is an xfail(strict=True) and a bug report).
PTHFMT_BUGS: dict[str, str] = {}


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in docs]


def params(docs: list[dict[str, Any]]) -> list[Any]:
    out = []
    for d in docs:
        marks = []
        if d["name"] in PTHFMT_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {PTHFMT_BUGS[d['name']]}"))
        out.append(pytest.param(d, id=d["name"], marks=marks))
    return out


def path_of(doc: dict[str, Any]) -> Path:
    return VECTORS / doc["file"]


def torch_written_pickles() -> list[tuple[str, bytes]]:
    """``data.pkl`` of every valid zip vector torch wrote with its default protocol 2."""
    out = []
    for d in VALID:
        if (
            d["origin"] != "torch"
            or d["format"] != "zip"
            or d["torch"]["load"].get("weights_only") is False
        ):
            continue
        _, records = mv.read_zip_records(path_of(d).read_bytes())  # CRC 0 allowed
        out.append((d["name"], dict(records)["data.pkl"]))
    return out
