#!/usr/bin/env python3
"""Regenerate the conformance vectors in ``spec/vectors/`` from torch.

Usage::

    python spec/make_vectors.py            # rewrite spec/vectors/ (needs torch)
    python spec/make_vectors.py --check    # regenerate in memory, fail if anything differs

Every vector is a checkpoint file ``<name>.pt`` and its expected decoding ``<name>.json``.
The expected decoding is **torch's** reading of the file (``torch.load``), never pthfmt's:
that is what makes the vectors a conformance suite and not a snapshot of our own reader.

* Files torch can write on this machine are written by ``torch.save`` itself (``origin:
  "torch"``); a few use torch's public hooks (``register_package`` to tag storages with
  devices this machine does not have, ``config.save`` for alignment and CRC options).
* Files torch cannot write here (big-endian archives, DEFLATE-compressed records, old and
  foreign zip layouts, the pre-0.4 tar format, invalid files) are assembled with ``zipfile``,
  ``tarfile``, ``struct`` and a pure-Python pickler (``origin: "hand"``).  Valid hand-made
  files are still loaded by torch, and their expected decoding is torch's.
* Two valid vectors hold content torch 2.13 itself misreads (see ``torch.agrees`` in their
  JSON): their expected decoding is torch's reading of the same objects in a file torch
  reads correctly (the little-endian zip twin).

The JSON schema is described in ``spec/pth-format.md`` (section "Conformance vectors") and
implemented by :class:`Encoder` below, which ``tests/test_spec_vectors.py`` reuses to encode
pthfmt's reading of each file the same way.  This module imports torch only inside the
functions that need it, so the encoder can be used without torch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import pickle
import pickletools
import platform
import struct
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

SPEC_DIR = Path(__file__).resolve().parent
VECTORS_DIR = SPEC_DIR / "vectors"
MANIFEST = "MANIFEST.json"
SCHEMA_VERSION = 1

# ------------------------------------------------------------------------------------------------
# The JSON encoding of a decoded checkpoint (shared with tests/test_spec_vectors.py)
# ------------------------------------------------------------------------------------------------

#: JSON cannot hold these ints exactly in every language (IEEE doubles): they become strings.
_SAFE_INT = 2**53


class Encoder:
    """Encode a decoded object tree as JSON-able data, collecting its tensors.

    The traversal defines the **key path** of a tensor: dict keys (``str(key)``) and
    list/tuple indices joined with ``.``, depth first, in order; a tensor object reached
    twice keeps the path where it was first reached and is listed once.  ``tensor(obj,
    path)`` returns a tensor entry (a dict) or ``None`` if ``obj`` is not a tensor;
    ``special(obj)`` returns the JSON form of a value the generic rules do not know (a
    device, a dtype) or ``None``.
    """

    def __init__(self, tensor: Callable[[Any, str], dict | None],
                 special: Callable[[Any], Any] | None = None) -> None:
        self._tensor = tensor
        self._special = special or (lambda obj: None)
        self.tensors: list[dict[str, Any]] = []
        self._index: dict[int, int] = {}
        self._keep: list[Any] = []           # keep ids valid while encoding

    def encode(self, obj: Any, path: str = "") -> Any:
        index = self._index.get(id(obj))
        if index is not None:
            return {"$tensor": index}
        entry = self._tensor(obj, path)
        if entry is not None:
            index = len(self.tensors)
            self._index[id(obj)] = index
            self._keep.append(obj)
            self.tensors.append(entry)
            return {"$tensor": index}
        special = self._special(obj)
        if special is not None:
            return special
        prefix = f"{path}." if path else ""
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return obj if -_SAFE_INT < obj < _SAFE_INT else {"$int": str(obj)}
        if isinstance(obj, float):
            if math.isnan(obj) or math.isinf(obj) or (obj == 0 and math.copysign(1, obj) < 0):
                return {"$float": repr(obj)}
            return obj
        if isinstance(obj, complex):
            return {"$complex": [self.encode(obj.real), self.encode(obj.imag)]}
        if isinstance(obj, bytes):
            return {"$bytes": obj.hex()}
        if isinstance(obj, bytearray):
            return {"$bytearray": bytes(obj).hex()}
        if isinstance(obj, (set, frozenset)):
            items = sorted((self.encode(v) for v in obj), key=_sort_key)
            return {"$frozenset" if isinstance(obj, frozenset) else "$set": items}
        if isinstance(obj, list):
            return [self.encode(v, f"{prefix}{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{prefix}{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            pairs = [(k, self.encode(v, f"{prefix}{k}")) for k, v in obj.items()]
            if isinstance(obj, Counter):
                return {"$counter": [[self.encode(k), v] for k, v in pairs]}
            if isinstance(obj, OrderedDict):
                out: dict[str, Any] = {"$odict": [[self.encode(k), v] for k, v in pairs]}
                attrs = {k: v for k, v in vars(obj).items()} if hasattr(obj, "__dict__") else {}
                if attrs:
                    out["$attrs"] = {k: self.encode(v) for k, v in attrs.items()}
                return out
            if all(isinstance(k, str) and not k.startswith("$") for k, _ in pairs):
                return dict(pairs)
            return {"$dict": [[self.encode(k), v] for k, v in pairs]}
        raise TypeError(f"cannot encode a {type(obj).__module__}.{type(obj).__qualname__} "
                        f"at {path or '<root>'}")


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def dump_json(obj: Any, indent: int = 0, width: int = 100) -> str:
    """JSON with short containers on one line (diff-friendly, still small)."""
    flat = json.dumps(obj, ensure_ascii=False)
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1, width)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dump_json(v, indent + 1, width) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def relabel_storages(tensors: list[dict[str, Any]], key: str = "storage") -> None:
    """Number storages 0, 1, ... in the order tensors first use them (in place)."""
    seen: dict[Any, int] = {}
    for entry in (e for e in tensors if key in e):  # kinds entries (below) have no storage
        entry[key] = seen.setdefault(entry[key], len(seen))


# ------------------------------------------------------------------------------------------------
# torch's view of a file
# ------------------------------------------------------------------------------------------------


def torch_special(obj: Any) -> Any:
    import torch
    if isinstance(obj, torch.device):
        return {"$device": str(obj)}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.Size):
        return {"$tuple": list(obj)}
    return None


def torch_values_bytes(t: Any) -> bytes:
    """The little-endian bytes of a tensor's values, C order (conj/neg views resolved)."""
    import torch
    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    assert sys.byteorder == "little", "vectors are generated on a little-endian host"
    return data


def torch_tensor_entry(t: Any, path: str, tags: dict[int, str]) -> dict[str, Any]:
    import torch
    storage = t.untyped_storage()
    entry: dict[str, Any] = {
        "path": path,
        "kind": "tensor",
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "offset": t.storage_offset(),
        "device": tags.get(storage._cdata, str(t.device)),
        "storage": storage._cdata,
        "storage_nbytes": storage.nbytes(),
        "_ptr": storage.data_ptr(),
        "_itemsize": t.element_size(),
        "requires_grad": t.requires_grad,
        "parameter": isinstance(t, torch.nn.Parameter),
        "conj": t.is_conj(),
        "neg": t.is_neg(),
        "attrs": None,
        "sha256": sha256(torch_values_bytes(t)),
    }
    if t.__dict__:
        entry["attrs"] = Encoder(lambda o, p: None, torch_special).encode(dict(t.__dict__))
    if t.is_quantized:
        q: dict[str, Any] = {"qscheme": str(t.qscheme()).removeprefix("torch.")}
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            q.update(scale=t.q_scale(), zero_point=t.q_zero_point())
        else:
            q.update(scales=t.q_per_channel_scales().tolist(),
                     zero_points=t.q_per_channel_zero_points().tolist(),
                     axis=t.q_per_channel_axis())
        entry["quantized"] = q
        entry["sha256_of"] = "int_repr"
    return entry


def torch_storage_entry(s: Any, path: str, tags: dict[int, str]) -> dict[str, Any]:
    """A bare storage, described as a 1-d view of all of it (``kind: "storage"``)."""
    import torch
    if isinstance(s, torch.storage.TypedStorage):
        untyped, dtype, numel = s._untyped_storage, s.dtype, s.size()
    else:
        untyped, dtype, numel = s, torch.uint8, s.nbytes()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return {
        "path": path,
        "kind": "storage",
        "dtype": str(dtype).removeprefix("torch."),
        "shape": [numel],
        "stride": [1],
        "offset": 0,
        "device": tags.get(untyped._cdata, str(untyped.device)),
        "storage": untyped._cdata,
        "storage_nbytes": untyped.nbytes(),
        "_ptr": untyped.data_ptr(),
        "_itemsize": itemsize,
        "requires_grad": False,
        "parameter": False,
        "conj": False,
        "neg": False,
        "attrs": None,
        "sha256": sha256(bytes(untyped)),
    }


def torch_view(path: Path, load: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """``torch.load`` the file and encode what torch made of it: ``(value, tensors)``."""
    import torch._dynamo  # torch loads NJTs only once these two are imported
    import torch.nested
    tags: dict[int, str] = {}

    def record(storage: Any, location: str) -> Any:
        tags[storage._cdata] = location
        return storage

    kwargs = dict(load)
    kwargs.setdefault("weights_only", True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet())
        obj = torch.load(path, map_location=record, **kwargs)
        return _encode_torch(obj, tags)


def torch_view_of_object(obj: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The same, for objects torch reads correctly only from another file (the LE twin)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    with _quiet():
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    return _encode_torch(loaded, {})


def _encode_torch(obj: Any, tags: dict[int, str]) -> tuple[Any, list[dict[str, Any]]]:
    import torch

    def tensor(o: Any, p: str) -> dict | None:
        if isinstance(o, torch.Tensor):
            return torch_kind_entry(o, p) or torch_tensor_entry(o, p, tags)
        if isinstance(o, (torch.storage.TypedStorage, torch.UntypedStorage)):
            return torch_storage_entry(o, p, tags)
        return None

    enc = Encoder(tensor, torch_special)
    value = enc.encode(obj)
    fold_storage_views(enc.tensors)
    relabel_storages(enc.tensors)
    return value, enc.tensors


def fold_storage_views(entries: list[dict[str, Any]]) -> None:
    """Describe tensors on a *storage view* by the storage it is a slice of (in place).

    The legacy and tar formats can declare a storage as a slice of another; torch then
    makes a separate storage object over part of the root's memory.  The vectors describe
    memory, not torch's objects: a tensor on such a slice is given the root storage, and
    its offset is counted from the root's first element.
    """
    span, entries = {}, [e for e in entries if "storage" in e]
    for e in entries:
        span[e["storage"]] = (e.pop("_ptr"), e["storage_nbytes"])
    for e in entries:
        ptr, nbytes = span[e["storage"]]
        itemsize = e.pop("_itemsize")
        if not ptr or not nbytes:
            continue
        roots = [(n2, p2, key) for key, (p2, n2) in span.items()
                 if p2 and p2 <= ptr and ptr + nbytes <= p2 + n2 and n2 > nbytes]
        if roots:
            n2, p2, key = max(roots, key=lambda r: r[0])
            e["offset"] += (ptr - p2) // itemsize
            e["storage"], e["storage_nbytes"] = key, n2


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def torch_outcome(path: Path, load: dict[str, Any]) -> dict[str, Any]:
    """What torch does with an (invalid) file: loads it, or the error's first line."""
    import torch
    kwargs = dict(load)
    kwargs.setdefault("weights_only", True)
    try:
        with _quiet():
            torch.load(path, map_location="cpu", **kwargs)
    except Exception as exc:
        text = str(exc).strip()
        if "WeightsUnpickler error:" in text:    # torch's wrapper text: keep the cause
            text = text.split("WeightsUnpickler error:", 1)[1].strip()
        elif text.startswith("Weights only load failed"):
            text = [line for line in text.splitlines() if line.strip()][-1]
        first = (text.splitlines() or [""])[0]
        return {"outcome": "error", "error": f"{type(exc).__name__}: {first[:200]}"}
    return {"outcome": "loads"}


# ------------------------------------------------------------------------------------------------
# Hand-made files: a pickler for torch globals, zip and tar writers
# ------------------------------------------------------------------------------------------------


class Glob:
    """A global named by a hand-made pickle (``torch FloatStorage``); never imported."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle's save_reduce wants a callable
        raise TypeError("a hand-made global is never called")


class Call:
    """``REDUCE``: ``func(*args)`` in the pickle."""

    def __init__(self, func: Glob, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


class Pid:
    """A persistent id (``BINPERSID`` of ``pid``)."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class _Pickler(pickle._Pickler):  # type: ignore[name-defined]  # pure Python: open dispatch
    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_glob(self, obj: Glob) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Glob] = save_glob

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Pid) else None


def dumps(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol).dump(obj)
    return buf.getvalue()


ODICT = Glob("collections", "OrderedDict")
REBUILD_V1 = Glob("torch._utils", "_rebuild_tensor")
REBUILD_V2 = Glob("torch._utils", "_rebuild_tensor_v2")


def storage(cls: str, key: str, numel: int, location: str = "cpu",
            module: str = "torch") -> Pid:
    return Pid(("storage", Glob(module, cls), key, location, numel))


def rebuild_v2(st: Pid, offset: int, size: tuple, stride: tuple) -> Call:
    return Call(REBUILD_V2, st, offset, size, stride, False, Call(ODICT))


def zip_bytes(folder: str, records: list[tuple[str, bytes]], *, align: int = 64,
              deflate: frozenset[str] = frozenset()) -> bytes:
    """A zip of ``folder/<name>`` records with stdlib ``zipfile``.

    With ``align`` every STORED record's data starts on a multiple of ``align``, padded
    the way torch's writer does it (an ``FB`` extra field filled with ``Z``); Python writes
    the same extra field into the central directory, which readers ignore.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in records:
            full = name if folder is None else f"{folder}/{name}"
            info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            if align and name not in deflate:
                start = out.tell() + 30 + len(full.encode("utf-8")) + 4
                pad = -start % align
                info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)
    return out.getvalue()


def read_zip_records(data: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """``(folder, [(name, bytes), ...])`` of a torch zip, in file order (CRCs not checked)."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    folder = zf.infolist()[0].filename.split("/", 1)[0]
    records = []
    for info in zf.infolist():
        info.CRC = None  # type: ignore[assignment]  # torch may write CRC 0; don't check it
        with zf.open(info) as fh:
            raw = fh.read()
        records.append((info.filename.split("/", 1)[1], raw))
    return folder, records


def force_zip64(data: bytes) -> bytes:
    """Rewrite a small zip's directory the way a zip64 writer does for huge files: every
    central entry's sizes and local-header offset move into a zip64 extra field (id 1,
    fields usize, csize, offset) and read 0xFFFFFFFF in the 32-bit fields, and the end of
    central directory is saturated and points at a zip64 end record through its locator."""
    eocd = data.rindex(b"PK\x05\x06")
    _, _, _, _, count, _, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", data, eocd)
    central = struct.Struct("<4sHHHHHHIIIHHHHHII")
    pos, entries = cd_offset, []
    for _ in range(count):
        fields = list(central.unpack_from(data, pos))
        nlen, xlen, clen = fields[10], fields[11], fields[12]
        name = data[pos + 46:pos + 46 + nlen]
        extra = data[pos + 46 + nlen:pos + 46 + nlen + xlen]
        comment = data[pos + 46 + nlen + xlen:pos + 46 + nlen + xlen + clen]
        z64 = struct.pack("<HHQQQ", 1, 24, fields[9], fields[8], fields[16])
        fields[1], fields[2] = 45, 45
        fields[8] = fields[9] = fields[16] = 0xFFFFFFFF
        fields[11] = len(z64) + len(extra)
        entries.append(central.pack(*fields) + name + z64 + extra + comment)
        pos += 46 + nlen + xlen + clen
    cd = b"".join(entries)
    z64_at = cd_offset + len(cd)
    tail = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(cd),
                       cd_offset)
    tail += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_at, 1)
    tail += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                        0xFFFFFFFF, 0)
    return data[:cd_offset] + cd + tail


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed PAX-format tar, deterministic (mtime 0, root-owned)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


class _Inert:
    """Anything a scanned pickle names: callable, subscriptable, buildable, inert."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert(self.name)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _PidScanner(pickle.Unpickler):
    """Lists ``(key, storage class name)`` of a legacy object pickle in reference order,
    without importing anything it names."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.pids: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _Inert(name)

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "storage":
            self.pids.setdefault(pid[2], pid[1].name)
        return _Inert()


def rename_legacy_keys(data: bytes) -> bytes:
    """Make a torch-written legacy file reproducible.

    torch's legacy writer names storages ``str(storage._cdata)`` (a memory address) and
    writes them sorted by that name, so both the names and the order of the storages change
    from run to run.  Here the storages are renamed ``"0"``, ``"1"``, ... (zero-padded from 11
    storages on) in the order the object pickle first references them, and the key list and
    the storage blobs are put in that order, which is again sorted by name.  The object
    pickle is re-emitted opcode by opcode with only the key strings (``BINUNICODE``)
    replaced.  The result is exactly what torch writes when the addresses happen to be those
    names.
    """
    import torch
    pos, pickles = 0, []
    for _ in range(5):
        ops = list(pickletools.genops(data[pos:]))
        end = pos + ops[-1][2] + 1
        pickles.append((pos, end, ops))
        pos = end
    main_start, main_end, main_ops = pickles[3]
    scanner = _PidScanner(data[main_start:main_end])
    scanner.load()
    old_keys = pickle.loads(data[pickles[4][0]:pickles[4][1]])
    assert set(old_keys) == set(scanner.pids), "every listed key is referenced"
    width = len(str(len(old_keys) - 1))
    mapping = {k: str(i).zfill(width) for i, k in enumerate(scanner.pids)}
    blobs: dict[str, bytes] = {}
    at = pos
    for key in old_keys:
        cls = scanner.pids[key]
        size = 1 if cls == "UntypedStorage" else \
            torch._utils._element_size(getattr(torch, cls).dtype)
        (count,) = struct.unpack_from("<q", data, at)
        blobs[mapping[key]] = data[at:at + 8 + count * size]
        at += 8 + count * size
    assert at == len(data)
    out = bytearray(data[:main_start])
    for i, (op, arg, offset) in enumerate(main_ops):
        nxt = main_ops[i + 1][2] if i + 1 < len(main_ops) else main_end - main_start
        raw = data[main_start + offset:main_start + nxt]
        if op.name == "BINUNICODE" and arg in mapping:
            new = mapping[arg].encode()
            raw = b"X" + struct.pack("<I", len(new)) + new
        out += raw
    new_keys = sorted(blobs)
    out += pickle.dumps(new_keys, protocol=2)
    for key in new_keys:
        out += blobs[key]
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# The vectors
# ------------------------------------------------------------------------------------------------


@dataclass
class Vector:
    name: str
    description: str
    build: Callable[[Path], Any]       # writes the file; may return the expected objects
    valid: bool = True
    origin: str = "torch"              # "torch" or "hand"
    format: str = "zip"
    byteorder: str = "little"
    load: dict[str, Any] = field(default_factory=dict)   # extra torch.load arguments
    error: str | None = None           # invalid files: the PthError subclass to raise
    requires: str | None = None        # an optional feature ("quantized")
    torch_bug: str | None = None       # torch misreads this valid file; expected from the twin
    tags: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


VECTORS: list[Vector] = []


def vector(name: str, description: str, **kw: Any) -> Callable[[Callable], Callable]:
    def register(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        VECTORS.append(Vector(name, description, fn, **kw))
        return fn
    return register


def _gen(seed: int) -> Any:
    import torch
    return torch.Generator().manual_seed(seed)


def random_tensor(dtype: Any, shape: tuple[int, ...], gen: Any) -> Any:
    """Random bit patterns of ``dtype`` (NaNs and all; bool as 0/1), contiguous."""
    import torch
    size = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (math.prod(shape) * size,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def typed_dtypes() -> list[Any]:
    import torch
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
            torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
            torch.complex128]


def v3_dtypes() -> list[Any]:
    import torch
    return [torch.uint16, torch.uint32, torch.uint64, torch.complex32, torch.float8_e4m3fn,
            torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
            torch.float8_e8m0fnu, torch.float4_e2m1fn_x2, torch.bits8, torch.bits16,
            torch.bits1x8, torch.bits2x4, torch.bits4x2]


def dtype_dict(dtypes: list[Any], seed: int, shape: tuple[int, ...] = (2, 2)) -> dict[str, Any]:
    gen = _gen(seed)
    return {str(d).removeprefix("torch."): random_tensor(d, shape, gen) for d in dtypes}


def swap_unit(t: Any) -> int:
    size = t.element_size()
    return size // 2 if t.dtype.is_complex else size


def big_endian_twin(obj: dict[str, Any]) -> bytes:
    """torch's little-endian file of ``obj`` (one storage per value, in order) rewritten as
    a big-endian file: ``byteorder`` says ``big`` and each storage is byte-swapped."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    folder, records = read_zip_records(buf.getvalue())
    units = {str(i): swap_unit(t) for i, t in enumerate(obj.values())}
    out = []
    for name, data in records:
        if name == "byteorder":
            data = b"big"
        elif name.startswith("data/"):
            unit = units[name[5:]]
            if unit > 1:
                data = b"".join(data[i:i + unit][::-1] for i in range(0, len(data), unit))
        out.append((name, data))
    return zip_bytes(folder, [r for r in out if not r[0].startswith(".data/serialization")])


# -- torch-written, zip ---------------------------------------------------------------------------

@vector("zip_minimal", "torch.save(torch.arange(6.).reshape(2, 3)): the spec's worked example",
        tags=("example",))
def _(path: Path) -> None:
    import torch
    torch.save(torch.arange(6.0).reshape(2, 3), path)


@vector("zip_dtypes", "one 2x2 tensor of every dtype torch 2.13 can save as a plain tensor "
        "(12 typed storages through _rebuild_tensor_v2, 15 through UntypedStorage and "
        "_rebuild_tensor_v3), random bit patterns")
def _(path: Path) -> None:
    import torch
    torch.save(dtype_dict(typed_dtypes() + v3_dtypes(), seed=1), path)


@vector("zip_views", "views: slices, transposes, a column, stride 0 (expand), channels_last, "
        "0-dim, empty with an offset past the end, a storage larger than its only view, "
        "a v3-dtype view with an element offset")
def _(path: Path) -> None:
    import torch
    base = torch.arange(12.0)
    u16 = torch.tensor([0, 1, 2, 3, 258], dtype=torch.uint16)
    obj = {
        "base": base,
        "slice": base[2:5],
        "transposed": base.view(3, 4).t(),
        "column": base.view(3, 4)[:, 1],
        "expanded": torch.tensor([1.0, 2.0, 3.0]).view(3, 1).expand(3, 4),
        "channels_last": torch.arange(8, dtype=torch.int16).reshape(1, 2, 2, 2)
        .contiguous(memory_format=torch.channels_last),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty_2d": torch.empty(0, 3),
        "empty_past_end": torch.arange(5.0)[5:],
        "window": torch.arange(10, dtype=torch.int32)[4:6],
        "u16_tail": u16[1:],
        "u16_step": u16[::2],
    }
    torch.save(obj, path)


@vector("zip_shared", "storage sharing: one storage behind a Parameter and a plain view, "
        "the same tensor object twice, two lists holding the same tensor")
def _(path: Path) -> None:
    import torch
    p = torch.nn.Parameter(torch.arange(4.0))
    t = torch.arange(6, dtype=torch.int64)
    obj = {"param": p, "param_view": p.data[1:3], "twice": [t, t], "again": (t[2:],),
           "other": torch.arange(3, dtype=torch.int8)}
    torch.save(obj, path)


@vector("zip_parameters", "nn.Parameter with and without requires_grad, a Parameter with "
        "Python attributes (_rebuild_parameter_with_state), a tensor with requires_grad=True, "
        "a tensor with Python attributes (_rebuild_from_type_v2)")
def _(path: Path) -> None:
    import torch
    gen = _gen(3)
    p_state = torch.nn.Parameter(torch.randn(2, generator=gen))
    p_state.note = "bar"
    t_attr = torch.randn(2, generator=gen)
    t_attr.note = 5
    obj = {
        "weight": torch.nn.Parameter(torch.randn(2, 3, generator=gen)),
        "frozen": torch.nn.Parameter(torch.randn(3, generator=gen), requires_grad=False),
        "with_state": p_state,
        "grad": torch.randn(2, generator=gen).requires_grad_(),
        "with_attrs": t_attr,
    }
    torch.save(obj, path)


@vector("zip_state_dict", "nn.Sequential(Linear, BatchNorm1d).state_dict(): an OrderedDict "
        "with its _metadata attribute (BUILD), a 0-dim int64 buffer")
def _(path: Path) -> None:
    import torch
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    torch.save(model.state_dict(), path)


@vector("zip_values", "non-tensor values: ints of every encoding size, floats (nan, inf, -0.0), "
        "str, bytes, bytearray, None, bools, tuples, lists, dicts with non-str keys, set, "
        "complex, Counter, torch.Size, torch.device, torch.dtype")
def _(path: Path) -> None:
    import torch
    obj = {
        "ints": [0, 255, 256, 65535, 65536, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, -(2**70)],
        "floats": [0.5, -0.0, float("inf"), float("-inf"), float("nan"), 1e-310],
        "str": "ünïcödé ✓",
        "empty_str": "",
        "bytes": b"\x00\xff\x80abc",
        "bytearray": bytearray(b"\x01\x02"),
        "none": None,
        "bools": (True, False),
        "nested": {"a": [1, (2, 3), {"b": []}], "t": (), "one": [None]},
        "int_keys": {1: "one", (2, 3): "pair", None: "none"},
        "set": {3, 1, 2},
        "complex": 1.5 - 2j,
        "counter": Counter({"x": 2, "y": 1}),
        "size": torch.Size([2, 3]),
        "device": torch.device("cuda", 1),
        "cpu": torch.device("cpu"),
        "dtype": torch.bfloat16,
        "tensor": torch.tensor([1, 2], dtype=torch.int16),
    }
    torch.save(obj, path)


@vector("zip_conj_neg", "lazily conjugated and negated views: stored values are not "
        "conjugated/negated, the _rebuild_tensor_v2 metadata dict says so")
def _(path: Path) -> None:
    import torch
    c = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    obj = {"conj": c.conj(), "neg": torch._neg_view(torch.tensor([1.0, -2.0]))}
    torch.save(obj, path)


@vector("zip_nocrc", "torch.serialization.set_crc32_options(False): every CRC-32 is 0")
def _(path: Path) -> None:
    import torch
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"x": torch.arange(4, dtype=torch.int32)}, path)
    finally:
        torch.serialization.set_crc32_options(True)


@vector("zip_align1", "config.save.storage_alignment = 1: no alignment padding "
        "(.storage_alignment is \"1\", every FB field is empty)")
def _(path: Path) -> None:
    import torch
    import torch.utils.serialization.config as config
    old = config.save.storage_alignment
    config.save.storage_alignment = 1
    try:
        torch.save({"x": torch.arange(3, dtype=torch.int16), "y": torch.ones(2)}, path)
    finally:
        config.save.storage_alignment = old


@vector("zip_protocol4", "torch.save(..., pickle_protocol=4): FRAME, SHORT_BINUNICODE, "
        "MEMOIZE; torch reads it only with weights_only=False", load={"weights_only": False})
def _(path: Path) -> None:
    import torch
    torch.save({"x": torch.arange(3.0), "b": b"\x01"}, path, pickle_protocol=4)


@vector("zip_buffer", "saved to an io.BytesIO: the archive folder is \"archive\"")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save({"x": torch.tensor([7], dtype=torch.uint8)}, buf)
    path.write_bytes(buf.getvalue())


@vector("zip_storages", "bare storages as values: a TypedStorage shared with a tensor, a "
        "TypedStorage alone, an UntypedStorage (persistent ids outside any rebuild call)")
def _(path: Path) -> None:
    import torch
    t = torch.arange(4.0)
    with _quiet():
        obj = {"t": t, "typed": t.storage(),
               "alone": torch.tensor([1, -2], dtype=torch.int16).storage(),
               "untyped": torch.tensor([7, 8, 9], dtype=torch.uint8).untyped_storage()}
        torch.save(obj, path)


class _Tagger:
    """Tag chosen storages with device names this machine lacks, through torch's public
    ``register_package`` hook (asked before ``cpu``; ``None`` falls through to it)."""

    tags: ClassVar[dict[int, str]] = {}
    registered: ClassVar[bool] = False

    @classmethod
    @contextlib.contextmanager
    def tagging(cls, tags: dict[Any, str]) -> Iterator[None]:
        import torch
        if not cls.registered:
            torch.serialization.register_package(
                0, lambda s: cls.tags.get(s.data_ptr()), lambda s, loc: None)
            cls.registered = True
        cls.tags = {t.untyped_storage().data_ptr(): tag for t, tag in tags.items()}
        try:
            yield
        finally:
            cls.tags = {}


@vector("zip_devices", "storages tagged cuda:0, cuda:1 and mps (written by torch with a "
        "register_package tagger); torch loads it with map_location='cpu'")
def _(path: Path) -> None:
    import torch
    a, b, c = torch.arange(3.0), torch.arange(2, dtype=torch.int64), torch.ones(2)
    with _Tagger.tagging({a: "cuda:0", b: "cuda:1", c: "mps"}):
        torch.save({"a": a, "a_view": a[1:], "b": b, "c": c, "cpu": torch.zeros(1),
                    "device": torch.device("cuda", 0)}, path)


@vector("zip_quantized", "quantized tensors (_rebuild_qtensor): qint8, quint8, qint32 per "
        "tensor and per channel, quint4x2 and quint2x4 per tensor; sha256 is of int_repr()",
        requires="quantized")
def _(path: Path) -> None:
    import torch
    x = torch.tensor([0.1, 0.5, -0.3, 1.0, 0.7])
    obj: dict[str, Any] = {}
    with _quiet():
        for dt in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4):
            name = str(dt).removeprefix("torch.")
            obj[name] = torch.quantize_per_tensor(x, 0.1, 2 if dt == torch.quint8 else 0, dt)
        for dt in (torch.qint8, torch.quint8, torch.qint32):
            name = str(dt).removeprefix("torch.")
            obj[f"{name}_per_channel"] = torch.quantize_per_channel(
                x[:4].reshape(2, 2), torch.tensor([0.1, 0.2], dtype=torch.float64),
                torch.tensor([0, 1]), 0, dt)
        torch.save(obj, path)


@vector("zip_torchscript", "torch.jit.save of a scripted module: a zip archive with "
        "constants.pkl and code/ (a TorchScript archive, not a checkpoint)",
        format="torchscript")
def _(path: Path) -> None:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([2.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    with _relative_source(Tiny):
        torch.jit.save(torch.jit.script(Tiny()), str(path))


@contextlib.contextmanager
def _relative_source(cls: type) -> Iterator[None]:
    """TorchScript quotes the path of each scripted method's source file in the archive's
    debug records: make it ``spec/make_vectors.py`` (read from the repository root) while
    ``cls`` is scripted, so that the vector does not depend on where the repository is.
    (The records also quote line numbers: edits above ``zip_torchscript``'s class change it.)"""
    import os
    root = Path(__file__).resolve().parent.parent
    relative = str(Path(__file__).resolve().relative_to(root))
    old_cwd = os.getcwd()
    for fn in vars(cls).values():
        if hasattr(fn, "__code__"):
            fn.__code__ = fn.__code__.replace(co_filename=relative)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(old_cwd)


# (vectors added below this line keep zip_torchscript's source lines, which its debug
# records quote, where they are)


# -- sparse, nested, jagged and meta tensors --------------------------------------------------

def part_entry(dtype: str, shape: list[Any], data: bytes) -> dict[str, Any]:
    """One tensor inside a sparse/nested/jagged tensor: dtype, shape and values' sha256."""
    return {"dtype": dtype, "shape": shape, "sha256": sha256(data)}


def torch_part(t: Any) -> dict[str, Any]:
    return part_entry(str(t.dtype).removeprefix("torch."), list(t.shape), torch_values_bytes(t))


#: A compressed sparse layout -> its (compressed, plain) index accessors.
_COMPRESSED = {"sparse_csr": ("crow_indices", "col_indices"),
               "sparse_bsr": ("crow_indices", "col_indices"),
               "sparse_csc": ("ccol_indices", "row_indices"),
               "sparse_bsc": ("ccol_indices", "row_indices")}


def torch_kind_entry(t: Any, path: str) -> dict[str, Any] | None:
    """A sparse, nested (strided or jagged) or meta tensor (``kind`` says which): what it
    holds, logically; ``None`` for a strided tensor (quantized ones included)."""
    layout = str(t.layout).removeprefix("torch.")
    entry: dict[str, Any] = {"path": path, "kind": None,
                             "dtype": str(t.dtype).removeprefix("torch.")}
    if t.is_meta:
        entry.update(kind="meta", shape=list(t.shape), stride=list(t.stride()))
    elif layout == "sparse_coo":
        entry.update(kind="sparse", layout=layout, shape=list(t.shape),
                     coalesced=t.is_coalesced(),
                     parts={"indices": torch_part(t._indices()), "values": torch_part(t._values())})
    elif layout in _COMPRESSED:
        compressed, plain = (getattr(t, name)() for name in _COMPRESSED[layout])
        entry.update(kind="sparse", layout=layout, shape=list(t.shape),
                     parts={"compressed_indices": torch_part(compressed),
                            "plain_indices": torch_part(plain), "values": torch_part(t.values())})
    elif layout == "jagged":
        shape: list[Any] = [t._offsets.shape[0] - 1, *t._values.shape]
        shape[t._ragged_idx] = None
        lengths = None if t._lengths is None else torch_part(t._lengths)
        entry.update(kind="jagged", shape=shape, ragged_idx=t._ragged_idx,
                     parts={"values": torch_part(t._values), "offsets": torch_part(t._offsets),
                            "lengths": lengths},
                     components=[torch_part(c) for c in t.unbind()])
    elif t.is_nested:
        entry.update(kind="nested", components=[torch_part(c) for c in t.unbind()])
    else:
        return None
    entry["requires_grad"] = t.requires_grad
    return entry



@vector("zip_sparse", "sparse tensors (_rebuild_sparse_tensor): COO coalesced and not, with a "
        "dense dimension, CSR with int32 indices, CSC, BSR and BSC; parts are the index and "
        "value tensors", requires="sparse")
def _(path: Path) -> None:
    import torch
    gen = _gen(17)
    dense = torch.randn(4, 6, generator=gen) * (torch.rand(4, 6, generator=gen) > 0.5)
    coo = torch.sparse_coo_tensor(torch.tensor([[2, 0, 2], [1, 3, 1]]),
                                  torch.tensor([1.0, 2.0, 3.0]), (3, 4))
    with _quiet():
        obj = {
            "coo": dense.to_sparse(),
            "coo_uncoalesced": coo,
            "coo_hybrid": torch.randn(3, 2, generator=gen).to_sparse(1),
            "csr": torch.sparse_csr_tensor(torch.tensor([0, 1, 3], dtype=torch.int32),
                                           torch.tensor([2, 0, 1], dtype=torch.int32),
                                           torch.tensor([1.0, 2.0, 3.0]), (2, 3)),
            "csc": dense.to_sparse_csc(),
            "bsr": dense.to_sparse_bsr((2, 2)),
            "bsc": dense.to_sparse_bsc((2, 3)),
        }
        torch.save(obj, path)


@vector("zip_nested", "a strided nested tensor (_rebuild_nested_tensor) of three float32 "
        "components, one empty; components are unbind()", requires="nested")
def _(path: Path) -> None:
    import torch
    gen = _gen(18)
    parts = [torch.randn(2, 3, generator=gen), torch.randn(4, 3, generator=gen),
             torch.randn(0, 3, generator=gen)]
    with _quiet():
        torch.save({"nested": torch.nested.nested_tensor(parts)}, path)


@vector("zip_jagged", "jagged nested tensors (NJTs: _rebuild_from_type_v2(_rebuild_njt, "
        "NestedTensor, ...) with cached seqlens carrying torch._dynamo marks): ragged_idx 1 and 2, "
        "bfloat16, and lengths with holes between components", requires="nested")
def _(path: Path) -> None:
    import torch
    gen = _gen(19)
    parts = [torch.randn(n, 3, generator=gen) for n in (2, 4, 1)]
    with _quiet():
        njt = torch.nested.nested_tensor(parts, layout=torch.jagged)
        holes = torch.nested.nested_tensor_from_jagged(
            torch.arange(20.0).reshape(10, 2), torch.tensor([0, 3, 6, 10]), torch.tensor([2, 1, 4]))
        obj = {"njt": njt, "transposed": njt.transpose(1, 2),
               "bf16": torch.nested.nested_tensor([p.bfloat16() for p in parts],
                                                  layout=torch.jagged),
               "lengths": holes}
        torch.save(obj, path)


@vector("zip_meta", "meta tensors (_rebuild_meta_tensor_no_storage): no storage, no records; "
        "a transposed stride and requires_grad", requires="meta")
def _(path: Path) -> None:
    import torch
    obj = {"w": torch.empty(3, 4, device="meta"),
           "t": torch.empty(3, 4, dtype=torch.float16, device="meta").t(),
           "g": torch.empty(2, dtype=torch.int64, device="meta"),
           "grad": torch.empty(5, device="meta").requires_grad_()}
    torch.save(obj, path)


# -- torch-written, legacy ------------------------------------------------------------------------

def _legacy_save(obj: Any, path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    path.write_bytes(rename_legacy_keys(buf.getvalue()))


@vector("legacy_minimal", "torch.save(torch.arange(6.).reshape(2, 3), "
        "_use_new_zipfile_serialization=False): the spec's worked example", format="legacy",
        tags=("example",))
def _(path: Path) -> None:
    import torch
    _legacy_save(torch.arange(6.0).reshape(2, 3), path)


@vector("legacy_dtypes", "legacy format: one tensor of each of the 12 typed-storage dtypes",
        format="legacy")
def _(path: Path) -> None:
    _legacy_save(dtype_dict(typed_dtypes(), seed=5, shape=(3,)), path)


@vector("legacy_state", "legacy format: a state_dict with _metadata, a Parameter sharing its "
        "storage with a view, a cuda:0-tagged storage, non-tensor values", format="legacy")
def _(path: Path) -> None:
    import torch
    torch.manual_seed(6)
    model = torch.nn.Linear(2, 2)
    p = torch.nn.Parameter(torch.arange(4.0))
    g = torch.arange(3, dtype=torch.int32)
    obj = {"model": model.state_dict(), "p": p, "p_view": p.data[2:], "gpu": g,
           "epoch": 3, "lr": 0.01, "name": "run"}
    with _Tagger.tagging({g: "cuda:0"}):
        _legacy_save(obj, path)


# -- hand-made, valid -----------------------------------------------------------------------------

@vector("zip_big_endian", "byteorder \"big\": the 12 typed-storage dtypes, each storage "
        "byte-swapped per element (per half for complex)", origin="hand", byteorder="big")
def _(path: Path) -> None:
    path.write_bytes(big_endian_twin(dtype_dict(typed_dtypes(), seed=7)))


@vector("zip_big_endian_v3", "byteorder \"big\" with the 15 _rebuild_tensor_v3 dtypes, "
        "byte-swapped per element of the v3 dtype (complex32: per float16 half)",
        origin="hand", byteorder="big",
        torch_bug="torch 2.13 byte-swaps an UntypedStorage as uint8, i.e. not at all, so it "
        "misreads every multi-byte _rebuild_tensor_v3 dtype of a big-endian file; the "
        "expected decoding is torch's reading of the little-endian twin")
def _(path: Path) -> Any:
    obj = dtype_dict(v3_dtypes(), seed=8)
    path.write_bytes(big_endian_twin(obj))
    return obj


@vector("zip_deflate", "a torch file re-zipped by Python's zipfile with every record DEFLATE "
        "compressed (no alignment, no data descriptors)", origin="hand")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save({"x": torch.arange(64.0), "y": torch.zeros(3, 3, dtype=torch.int64)}, buf)
    folder, records = read_zip_records(buf.getvalue())
    path.write_bytes(zip_bytes(folder, records, align=0,
                               deflate=frozenset(n for n, _ in records)))


@vector("zip_pre27_layout", "the record layout of torch < 2.7 (approximately): version first, "
        "storages in lexicographic key order (0, 1, 10, 11, 2, ...), no .format_version, "
        ".storage_alignment or serialization_id", origin="hand")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save([torch.full((1,), float(i)) for i in range(12)], buf)
    folder, records = read_zip_records(buf.getvalue())
    rec = dict(records)
    keys = sorted(n for n in rec if n.startswith("data/"))
    order = ["version", "data.pkl", *keys, "byteorder"]
    path.write_bytes(zip_bytes(folder, [(n, rec[n]) for n in order]))


@vector("zip_foreign", "a foreign writer: non-ASCII archive folder, no alignment, "
        ".data/version instead of version, no byteorder record, data.pkl last, a "
        "non-numeric storage key, the old _rebuild_tensor (v1), a torch.cuda.FloatStorage "
        "class with a cpu tag", origin="hand")
def _(path: Path) -> None:
    w = storage("FloatStorage", "weights.bin", 6)
    b = storage("LongStorage", "b", 2)
    g = storage("FloatStorage", "g", 2, module="torch.cuda")
    obj = {
        "w": rebuild_v2(w, 0, (2, 3), (3, 1)),
        "w_t": rebuild_v2(w, 0, (3, 2), (1, 3)),
        "b": Call(REBUILD_V1, b, 0, (2,), (1,)),
        "g": rebuild_v2(g, 1, (1,), (1,)),
    }
    records = [
        (".data/version", b"3"),
        ("data/weights.bin", struct.pack("<6f", *range(6))),
        ("data/b", struct.pack("<2q", -1, 2**40)),
        ("data/g", struct.pack("<2f", 0.25, 0.5)),
        ("data.pkl", dumps(obj)),
    ]
    path.write_bytes(zip_bytes("mödel", records, align=0))


@vector("zip_zip64_fields", "zip_minimal's records with every central-directory size and "
        "offset in a zip64 extra field (32-bit fields 0xFFFFFFFF), a saturated end of "
        "central directory and a zip64 end record", origin="hand")
def _(path: Path) -> None:
    _, records = _minimal_records()
    path.write_bytes(force_zip64(zip_bytes("zip_zip64_fields", records)))


@vector("zip_memo_batches", "pickle bookkeeping at scale: a list of 1001 ints (two APPENDS "
        "batches), 300 distinct strings so that memo slots pass 255 (LONG_BINPUT), and "
        "back-references to them (LONG_BINGET)")
def _(path: Path) -> None:
    import torch
    names = [f"k{i}" for i in range(300)]
    torch.save({"ints": list(range(1001)), "names": names, "again": names[::-1],
                "x": torch.arange(2, dtype=torch.int64)}, path)


@vector("legacy_v3_dtypes", "legacy format with the 15 _rebuild_tensor_v3 dtypes (written by "
        "torch.save(_use_new_zipfile_serialization=False))", format="legacy",
        torch_bug="torch 2.13 writes these files but cannot read them (AttributeError: "
        "UntypedStorage has no attribute dtype); the expected decoding is torch's reading "
        "of the zip twin")
def _(path: Path) -> Any:
    obj = dtype_dict(v3_dtypes(), seed=9, shape=(3,))
    _legacy_save(obj, path)
    return obj


class Py2Str:
    """A Python 2 ``str``: pickled as ``SHORT_BINSTRING`` (torch decodes it as UTF-8)."""

    def __init__(self, text: str) -> None:
        self.raw = text.encode()


def _save_py2str(self: _Pickler, obj: Py2Str) -> None:
    self.write(b"U" + bytes([len(obj.raw)]) + obj.raw)
    self.memoize(obj)


_Pickler.dispatch[Py2Str] = _save_py2str


@vector("legacy_py2", "a legacy file as Python 2 torch wrote it: every str a SHORT_BINSTRING, "
        "and a storage *view* in the persistent id (view_metadata = (view_key, offset, size))",
        origin="hand", format="legacy")
def _(path: Path) -> None:
    s = Py2Str
    float_storage = Glob("torch", "FloatStorage")
    root = Pid(("storage", float_storage, s("140"), s("cpu"), 6, None))
    view = Pid(("storage", float_storage, s("140"), s("cpu"), 6, (s("141"), 2, 3)))
    obj = {s("w"): rebuild_v2(root, 0, (2, 3), (3, 1)),
           s("v"): rebuild_v2(view, 0, (3,), (1,)),
           s("name"): s("py2"), s("step"): 12}
    sys_info = {s("protocol_version"): 1001, s("little_endian"): True,
                s("type_sizes"): {s("short"): 2, s("int"): 4, s("long"): 8}}
    data = (dumps(0x1950A86A20F9469CFC6C) + dumps(1001) + dumps(sys_info) + dumps(obj)
            + dumps([s("140")]) + struct.pack("<q6f", 6, *range(6)))
    path.write_bytes(data)


def _tar_pickle(obj: Any) -> bytes:
    return dumps(obj, protocol=2)


@vector("tar_basic", "the pre-0.4 tar format (hand-made as torch 0.3 wrote it): two tensors "
        "on one storage, a storage view, a tensor on the view, an int64 tensor",
        origin="hand", format="tar", load={"weights_only": False})
def _(path: Path) -> None:
    # storages: key 1 (6 floats), key 2 (2 int64), view key 3 = storage 1 [2:5]
    storages = _tar_pickle(2)
    for key, cls, fmt, values in ((1, "FloatStorage", "<6f", range(6)),
                                  (2, "LongStorage", "<2q", (-5, 7))):
        storages += _tar_pickle((key, "cpu", Glob("torch", cls)))
        storages += struct.pack("<q", len(values)) + struct.pack(fmt, *values)
    storages += _tar_pickle([(3, 1, 2, 3)])
    # tensors: key 10 = storage 1 as 2x3, key 11 = storage 1 transposed, key 12 = view 3,
    # key 13 = storage 2
    tensors = _tar_pickle(4)

    def tensor(key: int, skey: int, cls: str, size: tuple, stride: tuple, off: int) -> bytes:
        head = _tar_pickle((key, skey, Glob("torch", cls)))
        return head + struct.pack(f"<i4x{len(size)}q{len(stride)}qq", len(size), *size,
                                  *stride, off)

    tensors += tensor(10, 1, "FloatTensor", (2, 3), (3, 1), 0)
    tensors += tensor(11, 1, "FloatTensor", (3, 2), (1, 3), 0)
    tensors += tensor(12, 3, "FloatTensor", (3,), (1,), 0)
    tensors += tensor(13, 2, "LongTensor", (2,), (1,), 0)
    main = _tar_pickle({"a": Pid("10"), "a_t": Pid("11"), "view": Pid("12"),
                        "b": Pid("13"), "epoch": 7})
    sys_info = _tar_pickle({"protocol_version": 1000, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 8}})
    path.write_bytes(tar_bytes([("sys_info", sys_info), ("pickle", main),
                                ("tensors", tensors), ("storages", storages)]))


# -- hand-made, invalid ---------------------------------------------------------------------------

def _minimal_records() -> tuple[str, list[tuple[str, bytes]]]:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf)
    return read_zip_records(buf.getvalue())


def _with_records(edit: Callable[[dict[str, bytes]], None], *, folder: str = "archive",
                  pickled: Any = None) -> bytes:
    _, records = _minimal_records()
    rec = dict(records)
    if pickled is not None:
        rec["data.pkl"] = dumps(pickled)
    edit(rec)
    return zip_bytes(folder, list(rec.items()))


def _nothing(rec: dict[str, bytes]) -> None:
    pass


def invalid(name: str, error: str, description: str, **kw: Any) -> Callable:
    kw.setdefault("origin", "hand")
    return vector(name, description, valid=False, error=error, **kw)


@invalid("inv_empty", "FormatError", "an empty file", format="unknown")
def _(path: Path) -> None:
    path.write_bytes(b"")


@invalid("inv_not_checkpoint", "FormatError", "a text file", format="unknown")
def _(path: Path) -> None:
    path.write_bytes(b"hello, world\n")


@invalid("inv_zip_truncated", "CorruptError", "zip_minimal cut in half (no end of central "
         "directory)")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf)
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])


@invalid("inv_zip_no_data_pkl", "FormatError", "no data.pkl record")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.pop("data.pkl")))


@invalid("inv_zip_no_version", "FormatError", "neither version nor .data/version")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.pop("version")))


@invalid("inv_zip_bad_version", "FormatError", "version record \"0\" (outside 1..10)")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update(version=b"0\n")))


@invalid("inv_zip_bad_byteorder", "FormatError", "byteorder record \"LITTLE\"")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update(byteorder=b"LITTLE")))


@invalid("inv_zip_missing_storage", "FormatError", "data/0 is referenced but absent")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.pop("data/0")))


@invalid("inv_zip_record_size", "CorruptError", "data/0 holds 20 bytes, the persistent id "
         "declares 6 floats (24 bytes)")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update({"data/0": r["data/0"][:20]})))


@invalid("inv_storage_size_not_multiple", "CorruptError", "written by torch: a float32 tensor "
         "on a 10-byte storage; the record (10 bytes) is not numel x 4", origin="torch")
def _(path: Path) -> None:
    import torch
    ten_bytes = torch.arange(10, dtype=torch.uint8).untyped_storage()
    torch.save(torch.empty(0).set_(ten_bytes, 0, (2,), (1,)), path)


@invalid("inv_zip_view_out_of_bounds", "CorruptError", "a (3, 3) view of a 6-element storage")
def _(path: Path) -> None:
    obj = rebuild_v2(storage("FloatStorage", "0", 6), 0, (3, 3), (3, 1))
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_zip_negative_offset", "FormatError", "storage offset -1")
def _(path: Path) -> None:
    obj = rebuild_v2(storage("FloatStorage", "0", 6), -1, (2,), (1,))
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_zip_size_stride_mismatch", "FormatError", "size (2, 3) with stride (1,)")
def _(path: Path) -> None:
    obj = rebuild_v2(storage("FloatStorage", "0", 6), 0, (2, 3), (1,))
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_zip_pid_6_tuple", "FormatError", "a zip archive whose persistent id has the "
         "legacy format's 6 elements, with view metadata ('0', 2, 3); torch refuses it "
         "(a zip pid has exactly 5)")
def _(path: Path) -> None:
    pid = Pid(("storage", Glob("torch", "FloatStorage"), "0", "cpu", 6, ("0", 2, 3)))
    path.write_bytes(_with_records(_nothing, pickled=rebuild_v2(pid, 0, (3,), (1,))))


@invalid("inv_zip_conflicting_storage", "FormatError", "storage \"0\" declared as "
         "FloatStorage[6] and as LongStorage[3] (torch silently uses the first)")
def _(path: Path) -> None:
    obj = [rebuild_v2(storage("FloatStorage", "0", 6), 0, (6,), (1,)),
           rebuild_v2(storage("LongStorage", "0", 3), 0, (3,), (1,))]
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_zip_mixed_folders", "FormatError", "a record outside the archive folder "
         "(other/data/1)")
def _(path: Path) -> None:
    _, records = _minimal_records()
    data = zip_bytes("archive", records)
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as zf:
        info = zipfile.ZipInfo("other/data/1", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, b"junk")
    path.write_bytes(out.getvalue())


@invalid("inv_zip_duplicate_record", "FormatError", "two records named archive/data/0 with "
         "different bytes (torch and Python's zipfile pick different ones)")
def _(path: Path) -> None:
    _, records = _minimal_records()
    rec = dict(records)
    order = [("data.pkl", rec["data.pkl"]), ("data/0", rec["data/0"]),
             ("data/0", bytes(24)), ("version", rec["version"])]
    with _quiet():  # zipfile warns about the duplicate name
        path.write_bytes(zip_bytes("archive", order))


@invalid("inv_zip_bzip2", "UnsupportedError", "data/0 compressed with BZIP2 (method 12): "
         "torch refuses it too (\"unsupported method\")")
def _(path: Path) -> None:
    _, records = _minimal_records()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in records:
            info = zipfile.ZipInfo(f"archive/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_BZIP2 if name == "data/0" else zipfile.ZIP_STORED
            zf.writestr(info, data)
    path.write_bytes(out.getvalue())


@invalid("inv_unsafe_global", "UnsafePickleError", "data.pkl calls builtins.eval (harmless "
         "argument \"0\") through GLOBAL + REDUCE")
def _(path: Path) -> None:
    obj = {"x": Call(Glob("__builtin__", "eval"), "0")}
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_blocked_module", "UnsafePickleError", "data.pkl names os.getcwd (a module torch "
         "blocks even when allowlisted)")
def _(path: Path) -> None:
    obj = Call(Glob("os", "getcwd"))
    path.write_bytes(_with_records(_nothing, pickled=obj))


@invalid("inv_ext_opcode", "UnsafePickleError", "data.pkl uses EXT1 (the copyreg extension "
         "registry)")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update({"data.pkl": b"\x80\x02\x82\x01."})))


@invalid("inv_setitem_on_list", "FormatError", "SETITEM applied to a list")
def _(path: Path) -> None:
    pkl = b"\x80\x02]K\x00K\x01s."          # [] ; 0 ; 1 ; SETITEM ; STOP
    path.write_bytes(_with_records(lambda r: r.update({"data.pkl": pkl})))


@invalid("inv_pickle_truncated", "CorruptError", "data.pkl ends before its STOP opcode")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update({"data.pkl": r["data.pkl"][:-1]})))


@invalid("inv_memo_missing", "CorruptError", "data.pkl reads memo slot 7, never stored")
def _(path: Path) -> None:
    path.write_bytes(_with_records(lambda r: r.update({"data.pkl": b"\x80\x02h\x07."})))


@invalid("inv_protocol0", "FormatError", "written by torch.save(pickle_protocol=0): the "
         "persistent id is the text PERSID form (a str, not a tuple); torch cannot read it",
         origin="torch")
def _(path: Path) -> None:
    import torch
    torch.save(torch.arange(3.0), path, pickle_protocol=0)


@invalid("inv_legacy_bad_magic", "FormatError", "legacy_minimal with a different magic number",
         format="legacy")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf, _use_new_zipfile_serialization=False)
    data = bytearray(rename_legacy_keys(buf.getvalue()))
    data[5] ^= 0x01                          # inside the LONG1 magic number
    path.write_bytes(bytes(data))


@invalid("inv_legacy_bad_protocol", "FormatError", "legacy file whose protocol version "
         "pickle says 1002", format="legacy")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf, _use_new_zipfile_serialization=False)
    data = bytearray(rename_legacy_keys(buf.getvalue()))
    assert data[15:21] == b"\x80\x02M\xe9\x03."
    data[18] = 0xEA
    path.write_bytes(bytes(data))


@invalid("inv_legacy_truncated", "CorruptError", "legacy_minimal without its last 8 bytes "
         "(storage data cut short)", format="legacy")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf, _use_new_zipfile_serialization=False)
    path.write_bytes(rename_legacy_keys(buf.getvalue())[:-8])


@invalid("inv_legacy_count", "CorruptError", "legacy file whose storage count says 5 elements "
         "where the persistent id declares 6", format="legacy")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf, _use_new_zipfile_serialization=False)
    data = rename_legacy_keys(buf.getvalue())
    at = len(data) - 24 - 8
    assert struct.unpack_from("<q", data, at)[0] == 6
    path.write_bytes(data[:at] + struct.pack("<q", 5) + data[at + 8:])


@invalid("inv_legacy_module_pid", "UnsafePickleError", "legacy file whose object pickle holds a "
         "('module', class, file, source) persistent id (a pickled nn.Module class)",
         format="legacy")
def _(path: Path) -> None:
    import torch
    buf = io.BytesIO()
    torch.save(torch.arange(6.0).reshape(2, 3), buf, _use_new_zipfile_serialization=False)
    data = rename_legacy_keys(buf.getvalue())
    heads = []
    pos = 0
    for _ in range(3):
        ops = list(pickletools.genops(data[pos:]))
        pos += ops[-1][2] + 1
        heads.append(pos)
    main = dumps(Pid(("module", ODICT, None, None)))
    path.write_bytes(data[:heads[2]] + main + dumps([]))


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def describe(v: Vector, path: Path, twin: Any) -> dict[str, Any]:
    """The expected decoding of one vector, from torch."""
    import torch
    load = dict(v.load)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "name": v.name,
        "file": v.filename,
        "description": v.description,
        "origin": v.origin,
        "valid": v.valid,
        "format": v.format,
    }
    if v.valid and v.format in ("zip", "torchscript"):
        doc["archive_name"] = zipfile.ZipFile(path).infolist()[0].filename.split("/")[0]
    if v.valid:
        doc["byteorder"] = v.byteorder
    if v.requires:
        doc["requires"] = v.requires
    if not v.valid:
        doc["error"] = v.error
        doc["torch"] = {"load": load or {"weights_only": True}, **torch_outcome(path, load)}
        return doc
    if v.format == "torchscript":
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")
        doc["torch"] = {"load": "torch.jit.load", "agrees": True,
                        "weights_only_load": torch_outcome(path, {})}
        sd = module.state_dict()
        doc["state_dict"] = {k: {"dtype": str(t.dtype).removeprefix("torch."),
                                 "shape": list(t.shape),
                                 "sha256": sha256(torch_values_bytes(t))}
                             for k, t in sd.items()}
        return doc
    if v.torch_bug:
        value, tensors = torch_view_of_object(twin)
        doc["torch"] = {"load": load or {"weights_only": True}, "agrees": False,
                        "reason": v.torch_bug, **torch_outcome(path, load)}
    else:
        value, tensors = torch_view(path, load)
        doc["torch"] = {"load": load or {"weights_only": True}, "agrees": True}
    doc["value"] = value
    doc["tensors"] = tensors
    return doc


def build_all(out: Path) -> dict[str, Any]:
    import ml_dtypes
    import numpy as np
    import torch
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for v in VECTORS:
        path = out / v.filename
        torch.manual_seed(0)
        twin = v.build(path)
        doc = describe(v, path, twin)
        (out / f"{v.name}.json").write_text(dump_json(doc) + "\n", encoding="utf-8")
        entries.append({"name": v.name, "file": v.filename, "valid": v.valid,
                        "origin": v.origin, "format": v.format,
                        "error": v.error, "size": path.stat().st_size,
                        "sha256": sha256(path.read_bytes())})
    manifest = {
        "schema": SCHEMA_VERSION,
        "generator": "spec/make_vectors.py",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "vectors": entries,
    }
    (out / MANIFEST).write_text(dump_json(manifest) + "\n", encoding="utf-8")
    return manifest


#: The manifest's record of the generating environment: what --check does not compare (the
#: vectors themselves are compared byte for byte, whatever versions regenerate them).
_ENVIRONMENT = ("torch", "python", "numpy", "ml_dtypes")


def _manifest_body(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in doc.items() if k not in _ENVIRONMENT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and compare with spec/vectors")
    parser.add_argument("--out", type=Path, default=VECTORS_DIR)
    args = parser.parse_args(argv)
    if not args.check:
        for old in args.out.glob("*"):
            if old.suffix in (".pt", ".json"):
                old.unlink()
        manifest = build_all(args.out)
        total = sum(e["size"] for e in manifest["vectors"])
        print(f"wrote {len(manifest['vectors'])} vectors ({total} bytes of checkpoints) "
              f"to {args.out} with torch {manifest['torch']}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build_all(Path(tmp))
        differ = []
        names = {p.name for p in Path(tmp).iterdir()} | {p.name for p in args.out.iterdir()
                                                         if p.suffix in (".pt", ".json")}
        for name in sorted(names):
            a, b = Path(tmp) / name, args.out / name
            if not a.exists() or not b.exists():
                differ.append(name)
            elif name == MANIFEST:
                if _manifest_body(a) != _manifest_body(b):
                    differ.append(name)
            elif a.read_bytes() != b.read_bytes():
                differ.append(name)
        if differ:
            print("differ from spec/vectors:", ", ".join(differ))
            return 1
        print("spec/vectors is up to date")
        return 0


if __name__ == "__main__":
    sys.exit(main())
