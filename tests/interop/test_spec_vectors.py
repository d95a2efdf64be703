"""The conformance vectors of ``spec/vectors/`` read by torch: the installed torch must still
produce each valid vector's JSON (so the vectors are proven right by it, not just by the torch
that generated them) and do what the JSON records with each invalid one; and pthfmt's dtype,
opcode and allowlist tables must match torch's.  pthfmt's own reading of the vectors is in
``tests/unit/test_spec_vectors.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import pthfmt
from tests.support.vectors import (
    INVALID,
    TORCHSCRIPT,
    VALID,
    gen_tables,
    mv,
    params,
    path_of,
    torch_written_pickles,
)

pytestmark = pytest.mark.torch


def _torch_agrees(doc: dict[str, Any]) -> list[Any]:
    if doc["torch"].get("agrees", True):
        return []
    return [pytest.mark.xfail(strict=True, reason=f"torch bug: {doc['torch']['reason']}")]


@pytest.mark.parametrize(
    "doc", [pytest.param(d, id=d["name"], marks=_torch_agrees(d)) for d in VALID]
)
def test_torch_reads_valid_vector(doc: dict[str, Any], torch_mod: Any) -> None:
    value, tensors = mv.torch_view(path_of(doc), doc["torch"]["load"])
    assert value == doc["value"]
    assert tensors == doc["tensors"]


@pytest.mark.parametrize("doc", params(TORCHSCRIPT))
def test_torch_reads_torchscript(doc: dict[str, Any], torch_mod: Any) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch_mod.jit.load(str(path_of(doc)), map_location="cpu")
    got = {
        k: {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "sha256": mv.sha256(mv.torch_values_bytes(t)),
        }
        for k, t in module.state_dict().items()
    }
    assert got == doc["state_dict"]
    assert mv.torch_outcome(path_of(doc), {}) == doc["torch"]["weights_only_load"]


@pytest.mark.parametrize("doc", [pytest.param(d, id=d["name"]) for d in INVALID])
def test_torch_on_invalid_vector(doc: dict[str, Any], torch_mod: Any) -> None:
    load = {k: v for k, v in doc["torch"]["load"].items() if k != "weights_only"}
    load["weights_only"] = doc["torch"]["load"].get("weights_only", True)
    got = mv.torch_outcome(path_of(doc), load)
    assert got["outcome"] == doc["torch"]["outcome"], got


def test_dtype_table_matches_torch(torch_mod: Any) -> None:
    torch = torch_mod
    storages = {
        name: str(d).removeprefix("torch.")
        for d, name in torch.storage._dtype_to_storage_type_map().items()
    }
    new = {str(d).removeprefix("torch.") for d in torch.storage._new_dtypes()}
    for info in pthfmt.DTYPES:
        dtype = getattr(torch, info.name)
        size = (
            torch._utils._element_size(dtype)
            if info.kind == "quantized"
            else torch.empty(0, dtype=dtype).element_size()
        )
        assert info.itemsize == size, info.name
        if info.storage:
            assert storages[info.storage] == info.name
            assert info.name not in new
        else:
            assert info.name in new, info.name
    assert len(storages) == sum(1 for i in pthfmt.DTYPES if i.storage)


def test_opcode_classes_match_torch(torch_mod: Any) -> None:
    """Every opcode torch's weights-only unpickler implements is one a reader MUST accept."""
    import inspect
    import re

    from torch import _weights_only_unpickler as wo

    source = inspect.getsource(wo.Unpickler.load)
    torch_ops = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\[0\]", source))
    classes = gen_tables.opcode_classes()
    must = {name for name, cls in classes.items() if cls == "accept"}
    assert torch_ops <= must | {name for name, cls in classes.items() if cls == "emit"}
    assert {n for n, c in classes.items() if c == "emit"} <= torch_ops


def test_globals_torch_writes_are_in_both_allowlists(torch_mod: Any) -> None:
    """§6.4/§10: every global in torch's protocol-2 output is allowed by torch's weights-only
    loader and by pthfmt's allowlist (after the Python 2 module aliases)."""
    import pickletools

    import torch._dynamo
    import torch.nested  # noqa: F401
    from torch import _weights_only_unpickler as wo

    from pthfmt.torch.handlers import ALLOWLIST, MODULE_ALIASES

    torch_allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    names = set()
    for _, pkl in torch_written_pickles():
        for op, arg, _ in pickletools.genops(pkl):
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                names.add(f"{MODULE_ALIASES.get(module, module)}.{name}")
    assert names, "no globals found"
    assert names <= set(ALLOWLIST), sorted(names - set(ALLOWLIST))
    assert names <= torch_allowed, sorted(names - torch_allowed)
