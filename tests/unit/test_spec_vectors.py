"""The conformance vectors of ``spec/vectors/``: pthfmt against their expected JSON.

Every vector ``<name>.pt`` has an expected decoding ``<name>.json`` made from torch's reading
of the file by ``spec/make_vectors.py``.  Here:

* pthfmt reads every valid vector three ways (``open`` with lazy tensor references, ``load``
  into numpy arrays, ``load(mmap=True)``) and must produce exactly the JSON: the non-tensor
  values, and for every tensor its key path, dtype, shape, stride, offset, device, storage
  sharing, flags and the sha256 of its little-endian values;
* pthfmt must refuse every invalid vector with the ``PthError`` subclass its JSON names;
* ``spec/pth-format.md``'s generated tables must match pthfmt's tables.

That torch still reads every vector as its JSON says, and that pthfmt's tables match torch's,
is checked in ``tests/interop/test_spec_vectors.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pthfmt
from pthfmt.model.device import Device
from pthfmt.model.dtypes import DType
from pthfmt.model.kinds import as_array, pack_subbyte
from pthfmt.model.tensor import StorageInfo, TensorRef
from tests.support.vectors import (
    DOCS,
    INVALID,
    SPEC,
    TORCHSCRIPT,
    VALID,
    VECTORS,
    gen_tables,
    mv,
    params,
    path_of,
    torch_written_pickles,
)


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
        "attrs": None
        if not ref.state
        else mv.Encoder(lambda o, p: None, _special).encode(dict(ref.state)),
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


def _quantized_entry(q: pthfmt.QuantizedArray, path: str) -> dict[str, Any]:
    """A quantized tensor as the vectors describe it: its integer data, under the quantized
    dtype; sub-byte values packed as torch's ``int_repr()`` packs them."""
    bits = {"quint4x2": 4, "quint2x4": 2}.get(q.dtype)
    if bits is None:
        entry = _array_entry(q.data, path)
    else:
        entry = _array_entry(q.int_repr(), path)
        entry["sha256"] = _sha(pack_subbyte(q.int_repr(), bits))
    entry["dtype"] = q.dtype
    return entry


_KINDS = (pthfmt.SparseArray, pthfmt.NestedArray, pthfmt.JaggedArray, pthfmt.MetaArray)
_PLAIN = ("tensor", "storage")  # the kinds of entry with a storage


def _part(value: Any) -> dict[str, Any]:
    arr = as_array(value)
    return {"dtype": _dtype_name(arr.dtype), "shape": list(arr.shape), "sha256": _sha(arr)}


def _kind_entry(obj: Any, path: str) -> dict[str, Any]:
    """A sparse, nested, jagged or meta tensor as the vectors describe it."""
    entry: dict[str, Any] = {"path": path, "kind": None, "dtype": None}
    if isinstance(obj, pthfmt.MetaArray):
        entry.update(kind="meta", dtype=obj.dtype, shape=list(obj.shape), stride=list(obj.stride))
    elif isinstance(obj, pthfmt.SparseArray):
        names = ("indices", "values")
        if obj.layout != "sparse_coo":
            names = ("compressed_indices", "plain_indices", "values")
        entry.update(kind="sparse", layout=obj.layout, shape=list(obj.shape))
        if obj.layout == "sparse_coo":
            entry["coalesced"] = obj.coalesced
        entry["parts"] = {n: _part(getattr(obj, n)) for n in names}
        entry["dtype"] = entry["parts"]["values"]["dtype"]
    elif isinstance(obj, pthfmt.JaggedArray):
        lengths = None if obj.lengths is None else _part(obj.lengths)
        parts = {"values": _part(obj.values), "offsets": _part(obj.offsets), "lengths": lengths}
        entry.update(kind="jagged", dtype=parts["values"]["dtype"], shape=list(obj.shape))
        entry.update(ragged_idx=obj.ragged_idx, parts=parts)
        entry["components"] = [_part(c) for c in obj.arrays()]
    else:
        components = [_part(c) for c in obj.components]
        entry.update(kind="nested", dtype=_part(obj.buffer)["dtype"], components=components)
    entry["requires_grad"] = getattr(obj, "requires_grad", False)
    return entry


def pthfmt_open_view(path: Path, **kw: Any) -> tuple[Any, list[dict[str, Any]], Any]:
    with pthfmt.open(path, **kw) as ck:

        def tensor(obj: Any, p: str) -> dict | None:
            if isinstance(obj, _KINDS):
                return _kind_entry(obj, p)
            if isinstance(obj, StorageInfo):
                return _storage_entry(obj, p, False)
            return _ref_entry(obj, p) if isinstance(obj, TensorRef) else None

        enc = mv.Encoder(tensor, _special)
        value = enc.encode(ck.obj)
        walked = [(p, r) for p, r in ck.tensors()]
        mv.relabel_storages(enc.tensors)
        meta = {
            "format": ck.format,
            "byteorder": ck.byteorder,
            "archive_name": ck.archive_name,
            "tensors": walked,
        }
        return value, enc.tensors, meta


def pthfmt_load_view(path: Path, **kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    obj = pthfmt.load(path, **kw)

    def tensor(o: Any, p: str) -> dict | None:
        if isinstance(o, _KINDS):
            return _kind_entry(o, p)
        if isinstance(o, StorageInfo):
            return _storage_entry(o, p, kw.get("mmap", False))
        if isinstance(o, pthfmt.QuantizedArray):
            return _quantized_entry(o, p)
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
            pytest.skip(f"optional feature {doc['requires']!r} refused as the spec allows: {exc}")
        raise


def _compare_tensors(got: list[dict], want: list[dict], fields: tuple[str, ...], name: str) -> None:
    assert [g["path"] for g in got] == [w["path"] for w in want], f"{name}: key paths"
    for g, w in zip(got, want):
        if w["kind"] not in _PLAIN:  # described by what it holds, in full
            assert g == w, f"{name}: tensor {w['path']!r}: {g!r}, expected {w!r}"
            continue
        for f in fields:
            assert g[f] == w[f], f"{name}: tensor {w['path']!r}: {f} is {g[f]!r}, expected {w[f]!r}"


_REF_FIELDS = (
    "kind",
    "dtype",
    "shape",
    "stride",
    "offset",
    "device",
    "storage",
    "storage_nbytes",
    "requires_grad",
    "parameter",
    "conj",
    "neg",
    "attrs",
    "sha256",
)


@pytest.mark.parametrize("doc", params(VALID))
def test_pthfmt_open(doc: dict[str, Any]) -> None:
    value, tensors, meta = _load_or_unsupported(doc, pthfmt_open_view, path_of(doc))
    assert meta["format"] == doc["format"]
    assert meta["byteorder"] == doc["byteorder"]
    if "archive_name" in doc:
        assert meta["archive_name"] == doc["archive_name"]
    assert value == doc["value"]
    _compare_tensors(tensors, doc["tensors"], _REF_FIELDS, doc["name"])
    # Checkpoint.tensors() walks the same paths, in the same order (tensors, not storages).
    assert [p for p, _ in meta["tensors"]] == [
        t["path"] for t in doc["tensors"] if t["kind"] == "tensor"
    ]


@pytest.mark.parametrize("doc", params(VALID))
@pytest.mark.parametrize("mmap", [False, True], ids=["copy", "mmap"])
def test_pthfmt_load(doc: dict[str, Any], mmap: bool) -> None:
    value, tensors = _load_or_unsupported(doc, pthfmt_load_view, path_of(doc), mmap=mmap)
    assert value == doc["value"]
    _compare_tensors(
        tensors, doc["tensors"], ("kind", "dtype", "shape", "stride", "sha256"), doc["name"]
    )
    # Offsets and sharing as numpy sees them: one buffer per storage (not for lazily
    # conjugated/negated tensors, which numpy materialises, nor for empty arrays).
    plain = [
        (g, w)
        for g, w in zip(tensors, doc["tensors"])
        if w["kind"] in _PLAIN
        and not (w["conj"] or w["neg"])
        and 0 not in w["shape"]
        and w["dtype"] not in ("quint4x2", "quint2x4")  # unpacked: a copy of the values
    ]
    for g, w in plain:
        assert g["offset"] == w["offset"], f"{w['path']}: offset"
        assert g["storage_nbytes"] == w["storage_nbytes"], f"{w['path']}: storage size"
    groups_got = {}
    groups_want = {}
    for g, w in plain:
        groups_got.setdefault(g["storage"], set()).add(w["path"])
        groups_want.setdefault(w["storage"], set()).add(w["path"])
    assert sorted(map(sorted, groups_got.values())) == sorted(map(sorted, groups_want.values()))


@pytest.mark.parametrize("doc", params(VALID))
def test_pthfmt_map_location(doc: dict[str, Any]) -> None:
    _, tensors, _ = _load_or_unsupported(doc, pthfmt_open_view, path_of(doc), map_location="cpu")
    assert {t.get("device", "cpu") for t in tensors} <= {"cpu"}
    tags = {t.get("device", "cpu") for t in doc["tensors"]} - {"cpu"}
    if tags:
        mapping = {tag: "cpu" for tag in tags}
        _, tensors, _ = pthfmt_open_view(path_of(doc), map_location=mapping)
        assert {t["device"] for t in tensors} <= {"cpu"}


@pytest.mark.parametrize("doc", params(INVALID))
def test_pthfmt_refuses(doc: dict[str, Any]) -> None:
    expected = getattr(pthfmt, doc["error"])
    with pytest.raises(pthfmt.PthError) as info:
        pthfmt.load(path_of(doc))
    assert isinstance(info.value, expected), _pthfmt_error(info.value)
    # Lazily: the error comes at open, or at the latest when the tensors are read.
    with pytest.raises(pthfmt.PthError) as info:
        with pthfmt.open(path_of(doc)) as ck:
            for _, ref in ck.tensors():
                ref.numpy()
    assert isinstance(info.value, expected), _pthfmt_error(info.value)


@pytest.mark.parametrize("doc", params(TORCHSCRIPT))
def test_pthfmt_torchscript_detected(doc: dict[str, Any]) -> None:
    try:
        with pthfmt.open(path_of(doc)) as ck:
            assert ck.format == "torchscript"
            assert ck.archive_name == doc["archive_name"]
    except pthfmt.UnsupportedError:
        pass  # the spec allows refusing TorchScript, as unsupported


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
        stale = [
            name
            for name in gen_tables.regions(text)
            if gen_tables.region(text, name) != gen_tables.region(fresh, name)
        ]
        pytest.fail(f"spec/pth-format.md is stale in {stale}: run python spec/gen_tables.py")


def test_torch_protocol2_output_uses_only_emitted_opcodes() -> None:
    """§6.2: the opcodes a writer emits are exactly those torch's own output uses."""
    import pickletools

    used = set()
    for _, pkl in torch_written_pickles():
        used |= {op.name for op, _, _ in pickletools.genops(pkl)}
    emit = {n for n, c in gen_tables.opcode_classes().items() if c == "emit"}
    assert used == emit, (sorted(used - emit), sorted(emit - used))
