"""The conformance vectors of ``spec/vectors/``: pthfmt and torch against their expected JSON.

Every vector ``<name>.pt`` has an expected decoding ``<name>.json`` made from torch's reading
of the file by ``spec/make_vectors.py``.  Here:

* pthfmt reads every valid vector three ways (``open`` with lazy tensor references, ``load``
  into numpy arrays, ``load(mmap=True)``) and must produce exactly the JSON: the non-tensor
  values, and for every tensor its key path, dtype, shape, stride, offset, device, storage
  sharing, flags and the sha256 of its little-endian values;
* pthfmt must refuse every invalid vector with the ``PthError`` subclass its JSON names;
* torch reads every valid vector again and must still produce the JSON (so the vectors are
  proven right by the installed torch, not just by the one that generated them), and does
  what the JSON records with each invalid one;
* ``spec/pth-format.md``'s generated tables must match pthfmt's tables, and those must
  match torch's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pthfmt
from pthfmt.model.device import Device
from pthfmt.model.dtypes import DType
from pthfmt.model.tensor import StorageInfo, TensorRef

SPEC = Path(__file__).resolve().parents[1] / "spec"
VECTORS = SPEC / "vectors"


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_spec_{name}", SPEC / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mv = _module("make_vectors")
gen_tables = _module("gen_tables")

DOCS = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTORS.glob("*.json"))
        if p.name != mv.MANIFEST]
VALID = [d for d in DOCS if d["valid"] and d["format"] != "torchscript"]
INVALID = [d for d in DOCS if not d["valid"]]
TORCHSCRIPT = [d for d in DOCS if d["valid"] and d["format"] == "torchscript"]

#: Vectors pthfmt gets wrong: name -> reason (each is an xfail(strict=True) and a bug report).
PTHFMT_BUGS: dict[str, str] = {}


def _ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in docs]


def _params(docs: list[dict[str, Any]]) -> list[Any]:
    out = []
    for d in docs:
        marks = []
        if d["name"] in PTHFMT_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {PTHFMT_BUGS[d['name']]}"))
        out.append(pytest.param(d, id=d["name"], marks=marks))
    return out


def _path(doc: dict[str, Any]) -> Path:
    return VECTORS / doc["file"]


def _sha(arr: np.ndarray) -> str:
    data = np.ascontiguousarray(arr)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


def _dtype_name(dtype: np.dtype) -> str:
    meta = dtype.metadata or {}
    return meta.get("torch", dtype.name)


def _special(obj: Any) -> Any:
    if isinstance(obj, Device):
        return {"$device": str(obj)}
    if isinstance(obj, DType):
        return {"$dtype": obj.name}
    return None


def _pthfmt_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- pthfmt's view ---------------------------------------------------------------------------------

def _storage_entry(info: StorageInfo, path: str, mmap: bool) -> dict[str, Any]:
    """A bare storage, as a 1-d view of all of it."""
    buf = info.buffer(mmap)
    dtype = info.dtype.name if info.dtype else "uint8"
    return {
        "path": path,
        "kind": "storage",
        "dtype": dtype,
        "shape": [info.numel],
        "stride": [1],
        "offset": 0,
        "device": str(info.device),
        "storage": id(_root(buf)),
        "storage_nbytes": info.nbytes,
        "requires_grad": False,
        "parameter": False,
        "conj": False,
        "neg": False,
        "attrs": None,
        "sha256": hashlib.sha256(np.ascontiguousarray(buf).tobytes()).hexdigest(),
    }


def _ref_entry(ref: TensorRef, path: str) -> dict[str, Any]:
    return {
        "path": path,
        "kind": "tensor",
        "dtype": ref.dtype,
        "shape": list(ref.shape),
        "stride": list(ref.stride),
        "offset": ref.storage_offset,
        "device": str(ref.device),
        "storage": id(_root(ref.storage.buffer(False))),
        "storage_nbytes": ref.storage.nbytes,
        "requires_grad": ref.requires_grad,
        "parameter": ref.is_parameter,
        "conj": ref.conj,
        "neg": ref.neg,
        "attrs": None if not ref.state else mv.Encoder(lambda o, p: None, _special)
        .encode(dict(ref.state)),
        "sha256": _sha(ref.numpy()),
    }


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def _array_entry(arr: np.ndarray, path: str) -> dict[str, Any]:
    root = _root(arr)
    size = arr.dtype.itemsize
    start = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return {
        "path": path,
        "kind": "tensor",
        "dtype": _dtype_name(arr.dtype),
        "shape": list(arr.shape),
        "stride": [s // size for s in arr.strides],
        "offset": start // size,
        "storage": id(root),
        "storage_nbytes": root.nbytes,
        "sha256": _sha(arr),
    }


def pthfmt_open_view(path: Path, **kw: Any) -> tuple[Any, list[dict[str, Any]], Any]:
    with pthfmt.open(path, **kw) as ck:
        def tensor(obj: Any, p: str) -> dict | None:
            if isinstance(obj, StorageInfo):
                return _storage_entry(obj, p, False)
            return _ref_entry(obj, p) if isinstance(obj, TensorRef) else None
        enc = mv.Encoder(tensor, _special)
        value = enc.encode(ck.obj)
        walked = [(p, r) for p, r in ck.tensors()]
        mv.relabel_storages(enc.tensors)
        meta = {"format": ck.format, "byteorder": ck.byteorder, "archive_name": ck.archive_name,
                "tensors": walked}
        return value, enc.tensors, meta


def pthfmt_load_view(path: Path, **kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    obj = pthfmt.load(path, **kw)

    def tensor(o: Any, p: str) -> dict | None:
        if isinstance(o, StorageInfo):
            return _storage_entry(o, p, kw.get("mmap", False))
        return _array_entry(o, p) if isinstance(o, np.ndarray) else None

    enc = mv.Encoder(tensor, _special)
    value = enc.encode(obj)
    mv.relabel_storages(enc.tensors)
    return value, enc.tensors


def _load_or_unsupported(doc: dict[str, Any], fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a pthfmt read; a vector of an optional feature may be refused as unsupported."""
    try:
        return fn(*args, **kw)
    except pthfmt.UnsupportedError as exc:
        if doc.get("requires"):
            pytest.skip(f"optional feature {doc['requires']!r} refused as the spec allows: "
                        f"{exc}")
        raise


def _compare_tensors(got: list[dict], want: list[dict], fields: tuple[str, ...],
                     name: str) -> None:
    assert [g["path"] for g in got] == [w["path"] for w in want], f"{name}: key paths"
    for g, w in zip(got, want):
        for f in fields:
            assert g[f] == w[f], f"{name}: tensor {w['path']!r}: {f} is {g[f]!r}, " \
                                 f"expected {w[f]!r}"


_REF_FIELDS = ("kind", "dtype", "shape", "stride", "offset", "device", "storage", "storage_nbytes",
               "requires_grad", "parameter", "conj", "neg", "attrs", "sha256")


@pytest.mark.parametrize("doc", _params(VALID))
def test_pthfmt_open(doc: dict[str, Any]) -> None:
    value, tensors, meta = _load_or_unsupported(doc, pthfmt_open_view, _path(doc))
    assert meta["format"] == doc["format"]
    assert meta["byteorder"] == doc["byteorder"]
    if "archive_name" in doc:
        assert meta["archive_name"] == doc["archive_name"]
    assert value == doc["value"]
    _compare_tensors(tensors, doc["tensors"], _REF_FIELDS, doc["name"])
    # Checkpoint.tensors() walks the same paths, in the same order (tensors, not storages).
    assert [p for p, _ in meta["tensors"]] == \
        [t["path"] for t in doc["tensors"] if t["kind"] == "tensor"]


@pytest.mark.parametrize("doc", _params(VALID))
@pytest.mark.parametrize("mmap", [False, True], ids=["copy", "mmap"])
def test_pthfmt_load(doc: dict[str, Any], mmap: bool) -> None:
    value, tensors = _load_or_unsupported(doc, pthfmt_load_view, _path(doc), mmap=mmap)
    assert value == doc["value"]
    _compare_tensors(tensors, doc["tensors"], ("kind", "dtype", "shape", "stride", "sha256"),
                     doc["name"])
    # Offsets and sharing as numpy sees them: one buffer per storage (not for lazily
    # conjugated/negated tensors, which numpy materialises, nor for empty arrays).
    plain = [(g, w) for g, w in zip(tensors, doc["tensors"])
             if not (w["conj"] or w["neg"]) and 0 not in w["shape"]]
    for g, w in plain:
        assert g["offset"] == w["offset"], f"{w['path']}: offset"
        assert g["storage_nbytes"] == w["storage_nbytes"], f"{w['path']}: storage size"
    groups_got = {}
    groups_want = {}
    for g, w in plain:
        groups_got.setdefault(g["storage"], set()).add(w["path"])
        groups_want.setdefault(w["storage"], set()).add(w["path"])
    assert sorted(map(sorted, groups_got.values())) == sorted(map(sorted, groups_want.values()))


@pytest.mark.parametrize("doc", _params(VALID))
def test_pthfmt_map_location(doc: dict[str, Any]) -> None:
    _, tensors, _ = _load_or_unsupported(doc, pthfmt_open_view, _path(doc),
                                         map_location="cpu")
    assert {t["device"] for t in tensors} <= {"cpu"}
    tags = {t["device"] for t in doc["tensors"]} - {"cpu"}
    if tags:
        mapping = {tag: "cpu" for tag in tags}
        _, tensors, _ = pthfmt_open_view(_path(doc), map_location=mapping)
        assert {t["device"] for t in tensors} <= {"cpu"}


@pytest.mark.parametrize("doc", _params(INVALID))
def test_pthfmt_refuses(doc: dict[str, Any]) -> None:
    expected = getattr(pthfmt, doc["error"])
    with pytest.raises(pthfmt.PthError) as info:
        pthfmt.load(_path(doc))
    assert isinstance(info.value, expected), _pthfmt_error(info.value)
    # Lazily: the error comes at open, or at the latest when the tensors are read.
    with pytest.raises(pthfmt.PthError) as info:
        with pthfmt.open(_path(doc)) as ck:
            for _, ref in ck.tensors():
                ref.numpy()
    assert isinstance(info.value, expected), _pthfmt_error(info.value)


@pytest.mark.parametrize("doc", _params(TORCHSCRIPT))
def test_pthfmt_torchscript_detected(doc: dict[str, Any]) -> None:
    try:
        with pthfmt.open(_path(doc)) as ck:
            assert ck.format == "torchscript"
            assert ck.archive_name == doc["archive_name"]
    except pthfmt.UnsupportedError:
        pass  # the spec allows refusing TorchScript, as unsupported


# -- torch's view ----------------------------------------------------------------------------------

def _torch_agrees(doc: dict[str, Any]) -> list[Any]:
    if doc["torch"].get("agrees", True):
        return []
    return [pytest.mark.xfail(strict=True, reason=f"torch bug: {doc['torch']['reason']}")]


@pytest.mark.parametrize("doc", [pytest.param(d, id=d["name"], marks=_torch_agrees(d))
                                 for d in VALID])
def test_torch_reads_valid_vector(doc: dict[str, Any], torch_mod: Any) -> None:
    value, tensors = mv.torch_view(_path(doc), doc["torch"]["load"])
    assert value == doc["value"]
    assert tensors == doc["tensors"]


@pytest.mark.parametrize("doc", _params(TORCHSCRIPT))
def test_torch_reads_torchscript(doc: dict[str, Any], torch_mod: Any) -> None:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch_mod.jit.load(str(_path(doc)), map_location="cpu")
    got = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
               "sha256": mv.sha256(mv.torch_values_bytes(t))}
           for k, t in module.state_dict().items()}
    assert got == doc["state_dict"]
    assert mv.torch_outcome(_path(doc), {}) == doc["torch"]["weights_only_load"]


@pytest.mark.parametrize("doc", [pytest.param(d, id=d["name"]) for d in INVALID])
def test_torch_on_invalid_vector(doc: dict[str, Any], torch_mod: Any) -> None:
    load = {k: v for k, v in doc["torch"]["load"].items() if k != "weights_only"}
    load["weights_only"] = doc["torch"]["load"].get("weights_only", True)
    got = mv.torch_outcome(_path(doc), load)
    assert got["outcome"] == doc["torch"]["outcome"], got


# -- the vector set itself -------------------------------------------------------------------------

def test_manifest_lists_every_vector() -> None:
    manifest = json.loads((VECTORS / mv.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["torch"].startswith("2.")
    listed = {e["file"]: e for e in manifest["vectors"]}
    on_disk = {p.name for p in VECTORS.glob("*.pt")}
    assert set(listed) == on_disk
    assert {d["file"] for d in DOCS} == on_disk
    for name, entry in listed.items():
        data = (VECTORS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    total = sum(p.stat().st_size for p in VECTORS.iterdir())
    assert total < 1_000_000


def test_vectors_cover_the_issue() -> None:
    """Every dtype, both containers (and tar), big-endian, device tags, shared storage,
    views, Parameters, metadata, and invalid files of every error class."""
    dtypes = {t["dtype"] for d in VALID for t in d["tensors"]}
    assert dtypes >= {info.name for info in pthfmt.DTYPES}
    formats = {d["format"] for d in DOCS if d["valid"]}
    assert formats >= {"zip", "legacy", "tar", "torchscript"}
    assert any(d["byteorder"] == "big" for d in VALID)
    assert any(t["device"].startswith("cuda") for d in VALID for t in d["tensors"])
    assert any(t["parameter"] for d in VALID for t in d["tensors"])
    assert any(t["offset"] for d in VALID for t in d["tensors"])
    assert any(len({t["storage"] for t in d["tensors"]}) < len(d["tensors"]) for d in VALID)
    assert any("$attrs" in json.dumps(d["value"]) for d in VALID)
    errors = {d["error"] for d in INVALID}
    assert errors == {"FormatError", "CorruptError", "UnsafePickleError", "UnsupportedError"}
    assert {d["origin"] for d in DOCS} == {"torch", "hand"}


# -- the spec's generated tables -------------------------------------------------------------------

def test_spec_tables_are_up_to_date() -> None:
    text = (SPEC / "pth-format.md").read_text(encoding="utf-8")
    fresh = gen_tables.render(text)
    if fresh != text:
        stale = [name for name in gen_tables.regions(text)
                 if gen_tables.region(text, name) != gen_tables.region(fresh, name)]
        pytest.fail(f"spec/pth-format.md is stale in {stale}: run python spec/gen_tables.py")


def test_dtype_table_matches_torch(torch_mod: Any) -> None:
    torch = torch_mod
    storages = {name: str(d).removeprefix("torch.")
                for d, name in torch.storage._dtype_to_storage_type_map().items()}
    new = {str(d).removeprefix("torch.") for d in torch.storage._new_dtypes()}
    for info in pthfmt.DTYPES:
        dtype = getattr(torch, info.name)
        size = torch._utils._element_size(dtype) if info.kind == "quantized" else \
            torch.empty(0, dtype=dtype).element_size()
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


def _torch_written_pickles() -> list[tuple[str, bytes]]:
    """``data.pkl`` of every valid zip vector torch wrote with its default protocol 2."""
    out = []
    for d in VALID:
        if d["origin"] != "torch" or d["format"] != "zip" or d["torch"]["load"].get(
                "weights_only") is False:
            continue
        _, records = mv.read_zip_records(_path(d).read_bytes())   # CRC 0 allowed
        out.append((d["name"], dict(records)["data.pkl"]))
    return out


def test_torch_protocol2_output_uses_only_emitted_opcodes() -> None:
    """§6.2: the opcodes a writer emits are exactly those torch's own output uses."""
    import pickletools
    used = set()
    for _, pkl in _torch_written_pickles():
        used |= {op.name for op, _, _ in pickletools.genops(pkl)}
    emit = {n for n, c in gen_tables.opcode_classes().items() if c == "emit"}
    assert used == emit, (sorted(used - emit), sorted(emit - used))


def test_globals_torch_writes_are_in_both_allowlists(torch_mod: Any) -> None:
    """§6.4/§10: every global in torch's protocol-2 output is allowed by torch's weights-only
    loader and by pthfmt's allowlist (after the Python 2 module aliases)."""
    import pickletools

    from torch import _weights_only_unpickler as wo

    from pthfmt.torch.handlers import ALLOWLIST, MODULE_ALIASES
    torch_allowed = set(wo._get_allowed_globals())
    names = set()
    for _, pkl in _torch_written_pickles():
        for op, arg, _ in pickletools.genops(pkl):
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                names.add(f"{MODULE_ALIASES.get(module, module)}.{name}")
    assert names, "no globals found"
    assert names <= set(ALLOWLIST), sorted(names - set(ALLOWLIST))
    assert names <= torch_allowed, sorted(names - torch_allowed)
