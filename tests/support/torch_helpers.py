"""Helpers for the reader's interop tests: build checkpoints with torch, compare with torch.

The comparisons are deliberately independent of pthfmt's own tables: bytes come from torch
(``t.contiguous().view(torch.uint8)``), dtype names from ``str(t.dtype)``, strides and offsets
from ``t.stride()`` / ``t.storage_offset()``.  Files that torch cannot write directly (device
tags without the device, big-endian archives, DEFLATE-compressed records, hand-made pickles)
are built here with ``zipfile`` and ``pickle`` only.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.serialization as ts

import pthfmt

__all__ = [
    "ALL_DTYPES",
    "V3_DTYPES",
    "FakeStorage",
    "FakeTensor",
    "assert_array_matches",
    "assert_ref_matches",
    "assert_same_tree",
    "craft_checkpoint",
    "craft_pickle",
    "dtype_name",
    "make_tensor",
    "rezip",
    "save_tagged",
    "storage_dtypes",
    "to_big_endian",
    "torch_bytes",
    "training_checkpoint",
    "true_value_bytes",
    "write_shards",
]

#: Every dtype torch 2.13 can save as a plain (strided, non-quantized) tensor.
ALL_DTYPES: tuple[torch.dtype, ...] = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu,
    torch.complex64,
    torch.complex128,
    torch.complex32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.float4_e2m1fn_x2,
    torch.bits8,
    torch.bits16,
    torch.bits1x8,
    torch.bits2x4,
    torch.bits4x2,
)

#: The dtypes torch writes through ``UntypedStorage`` + ``_rebuild_tensor_v3``.
V3_DTYPES: frozenset[torch.dtype] = frozenset(torch.storage._new_dtypes())


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def numpy_dtype_name(dtype: np.dtype) -> str:
    """The torch name a reader's numpy dtype stands for: the ``torch`` metadata tag of raw
    packed/bits dtypes, else numpy's (and ml_dtypes') own name, which is torch's."""
    meta = dtype.metadata or {}
    return meta.get("torch", dtype.name)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def swap_unit(dtype: torch.dtype) -> int:
    """Bytes swapped together in a big-endian file: complex numbers swap each half."""
    size = itemsize(dtype)
    return size // 2 if dtype.is_complex else size


def make_tensor(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """A tensor of ``dtype`` with random bit patterns (NaNs and all), contiguous."""
    n = math.prod(shape) * itemsize(dtype)
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def torch_bytes(t: torch.Tensor) -> bytes:
    """The bytes of ``t``'s *values* in C order (conj and neg views resolved)."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def true_value_bytes(t: torch.Tensor) -> bytes:
    """Alias of :func:`torch_bytes` for readability where torch's own load is wrong."""
    return torch_bytes(t)


def _root(arr: np.ndarray) -> np.ndarray:
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


def assert_array_matches(
    arr: Any, t: torch.Tensor, *, check_layout: bool = True, where: str = ""
) -> None:
    """``arr`` equals ``t`` bit for bit: dtype name, shape, bytes, and (``check_layout``) the
    strides and the byte offset inside the storage buffer."""
    assert isinstance(arr, np.ndarray), f"{where}: {type(arr).__name__}, not an ndarray"
    name = numpy_dtype_name(arr.dtype)
    assert name == dtype_name(t.dtype), f"{where}: dtype {name} != {t.dtype}"
    assert arr.shape == tuple(t.shape), f"{where}: shape {arr.shape} != {tuple(t.shape)}"
    assert arr.dtype.itemsize == t.element_size(), where
    expected = torch_bytes(t)
    if (
        arr.tobytes() != expected
        and (t.is_neg() or t.is_conj())
        and (t.is_floating_point() or t.is_complex())
    ):
        # negating a NaN is free to change its payload (torch's bfloat16 neg kernel returns
        # the canonical 0x7fc0 for small tensors): equal as values, NaN where NaN, same signs
        wide = np.complex128 if t.is_complex() else np.float64
        ours = arr.astype(wide)
        theirs = np.frombuffer(expected, arr.dtype).reshape(arr.shape).astype(wide)
        assert np.array_equal(ours, theirs, equal_nan=True), f"{where}: values differ"
        for part in (np.real, np.imag):
            keep = ~np.isnan(part(theirs))
            assert np.array_equal(np.signbit(part(ours))[keep], np.signbit(part(theirs))[keep])
    else:
        assert arr.tobytes() == expected, f"{where}: values differ"
    if check_layout and not (t.is_conj() or t.is_neg()):
        size = t.element_size()
        assert arr.strides == tuple(s * size for s in t.stride()), (
            f"{where}: strides {arr.strides} != {t.stride()} x {size}"
        )
        if t.numel():
            root = _root(arr)
            offset = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
            assert offset == t.storage_offset() * size, f"{where}: byte offset {offset}"
            assert root.nbytes == t.untyped_storage().nbytes(), (
                f"{where}: storage of {root.nbytes} bytes, torch has {t.untyped_storage().nbytes()}"
            )


def assert_ref_matches(ref: Any, t: torch.Tensor, *, where: str = "", device: str = "cpu") -> None:
    """A :class:`pthfmt.TensorRef` describes ``t`` exactly, and reads ``t``'s values."""
    assert isinstance(ref, pthfmt.TensorRef), f"{where}: {type(ref).__name__}"
    assert ref.dtype == dtype_name(t.dtype), f"{where}: dtype {ref.dtype} != {t.dtype}"
    assert ref.shape == tuple(t.shape), where
    assert ref.stride == tuple(t.stride()), f"{where}: stride {ref.stride} != {t.stride()}"
    assert ref.storage_offset == t.storage_offset(), where
    assert ref.requires_grad == t.requires_grad, where
    assert ref.is_parameter == isinstance(t, torch.nn.Parameter), where
    assert ref.nbytes == t.numel() * t.element_size(), where
    assert ref.numel == t.numel(), where
    assert str(ref.device) == device, f"{where}: device {ref.device} != {device}"
    assert ref.conj == t.is_conj() and ref.neg == t.is_neg(), where
    assert ref.storage.nbytes == t.untyped_storage().nbytes(), where
    assert_array_matches(ref.numpy(), t, where=where)


def assert_same_tree(
    ours: Any,
    theirs: Any,
    *,
    refs: bool = False,
    path: str = "",
    check_layout: bool = True,
    device: str = "cpu",
) -> None:
    """Walk torch's result and ours together; every leaf equal, every container the same kind.

    ``refs``: ours holds :class:`TensorRef` leaves (from :func:`pthfmt.open`), each on
    ``device``.
    """
    seen: set[int] = set()
    stack = [(path, ours, theirs)]
    while stack:
        where, a, b = stack.pop()
        if isinstance(b, torch.Tensor):
            if isinstance(a, torch.Tensor):  # torch against torch (or the original)
                assert (a.dtype, a.shape, a.stride(), a.storage_offset()) == (
                    b.dtype,
                    b.shape,
                    b.stride(),
                    b.storage_offset(),
                ), where
                assert torch_bytes(a) == torch_bytes(b), f"{where}: values differ"
            elif refs:
                assert_ref_matches(a, b, where=where, device=device)
            else:
                assert_array_matches(a, b, where=where, check_layout=check_layout)
            continue
        if id(b) in seen:
            continue
        seen.add(id(b))
        if isinstance(b, dict):
            assert isinstance(a, dict), f"{where}: {type(a).__name__} is not a dict"
            assert type(a) is type(b) or type(b).__module__ == "collections", where
            assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
            if isinstance(b, collections.OrderedDict):
                assert type(a) is collections.OrderedDict, where
                assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where
            stack.extend((f"{where}.{k}" if where else str(k), a[k], b[k]) for k in b)
        elif isinstance(b, torch.Size):
            assert type(a) in (tuple, torch.Size) and a == b, f"{where}: {a!r} != {b!r}"
        elif isinstance(b, (list, tuple)):
            assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
            assert len(a) == len(b), where
            stack.extend(
                (f"{where}.{i}" if where else str(i), x, y) for i, (x, y) in enumerate(zip(a, b))
            )
        elif isinstance(b, torch.dtype):
            assert isinstance(a, (pthfmt.DType, torch.dtype)), f"{where}: {a!r}"
            assert str(a) == str(b), f"{where}: {a!r}"
        elif isinstance(b, torch.device):
            assert isinstance(a, (pthfmt.Device, torch.device)), where
            assert (str(a), repr(a), a.type, a.index) == (str(b), repr(b), b.type, b.index)
        elif isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.shape == b.shape, where
            assert a.dtype.newbyteorder("=") == b.dtype.newbyteorder("="), where
            assert np.array_equal(a, b, equal_nan=b.dtype.kind in "fc"), where
        elif isinstance(b, float) and math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), where
        else:
            assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
            assert a == b, f"{where}: {a!r} != {b!r}"


# -- building files ----------------------------------------------------------------------------


@contextlib.contextmanager
def tagged(tag: str | Callable[[Any], str]) -> Iterator[None]:
    """Make ``torch.save`` tag every storage with ``tag`` (format notes §4 (a))."""
    orig = ts.location_tag
    ts.location_tag = tag if callable(tag) else (lambda storage: tag)
    try:
        yield
    finally:
        ts.location_tag = orig


def save_tagged(obj: Any, path: Path | str, tag: str, **kwargs: Any) -> None:
    """``torch.save`` on CPU, with every storage tagged ``tag`` (``"cuda:0"``, ``"mps"``...)."""
    with tagged(tag):
        torch.save(obj, path, **kwargs)


def rezip(
    src: Path | str,
    dst: Path | str,
    *,
    compression: int = zipfile.ZIP_STORED,
    transform: Callable[[str, bytes], bytes | None] | None = None,
    extra: dict[str, bytes] | None = None,
) -> None:
    """Copy a zip archive with Python's ``zipfile``; ``transform(name, data)`` may rewrite
    a record's bytes or drop it (``None``); ``extra`` appends records."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if transform is not None:
                data = transform(info.filename, data)
                if data is None:
                    continue
            zout.writestr(info.filename, data, compress_type=compression)
        for name, data in (extra or {}).items():
            zout.writestr(name, data, compress_type=compression)


class _Recorder:
    def __init__(self, name: str, found: dict[str, torch.dtype]) -> None:
        self.name, self.found = name, found

    def __call__(self, *args: Any) -> None:
        if self.name == "_rebuild_tensor_v2":
            pid = args[0]
            self.found[pid[2]] = _STORAGE_DTYPES[pid[1]]
        elif self.name == "_rebuild_tensor_v3":
            self.found[args[0][2]] = args[6]


_STORAGE_DTYPES = {
    cls.__name__: dtype
    for dtype, cls in (
        (d, getattr(torch, n)) for d, n in torch.storage._dtype_to_storage_type_map().items()
    )
}


def storage_dtypes(data_pkl: bytes) -> dict[str, torch.dtype]:
    """Storage key -> element dtype, read from a ``data.pkl`` with the stdlib unpickler."""
    found: dict[str, torch.dtype] = {}

    class U(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name.startswith("_rebuild"):
                return _Recorder(name, found)
            if name.endswith("Storage"):
                return name
            return super().find_class(module, name)

        def persistent_load(self, pid: Any) -> Any:
            return pid

    U(io.BytesIO(data_pkl)).load()
    return found


def to_big_endian(src: Path | str, dst: Path | str) -> None:
    """Rewrite a torch zip file as a big-endian host would have written it: ``byteorder`` is
    ``b"big"`` and each ``data/<key>`` record is byte-swapped per element (complex per half)."""
    with zipfile.ZipFile(src) as z:
        prefix = z.namelist()[0].split("/", 1)[0]
        dtypes = storage_dtypes(z.read(f"{prefix}/data.pkl"))

    def swap(name: str, data: bytes) -> bytes:
        if name == f"{prefix}/byteorder":
            return b"big"
        key = name.removeprefix(f"{prefix}/data/")
        if key != name and key in dtypes:
            unit = swap_unit(dtypes[key])
            if unit > 1:
                return np.frombuffer(data, f"u{unit}").byteswap().tobytes()
        return data

    rezip(src, dst, transform=swap)


class FakeStorage:
    """A persistent storage reference for :func:`craft_pickle`."""

    def __init__(self, key: str, cls: Any, numel: int, location: str = "cpu") -> None:
        self.key, self.cls, self.numel, self.location = key, cls, numel, location


class FakeTensor:
    """Pickles as ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""

    def __init__(
        self, storage: FakeStorage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return torch._utils._rebuild_tensor_v2, self.args


def craft_pickle(obj: Any, protocol: int = 2) -> bytes:
    """Pickle ``obj`` the way ``torch.save`` does, with :class:`FakeStorage` persistent ids."""

    class P(pickle.Pickler):
        def persistent_id(self, value: Any) -> Any:
            if isinstance(value, FakeStorage):
                return ("storage", value.cls, value.key, value.location, value.numel)
            return None

    buf = io.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def craft_checkpoint(
    path: Path | str, data_pkl: bytes, storages: dict[str, bytes], folder: str = "archive"
) -> None:
    """A zip checkpoint of hand-made records (STORED, like torch's, minus the alignment)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", data_pkl)
        z.writestr(f"{folder}/byteorder", b"little")
        for key, data in storages.items():
            z.writestr(f"{folder}/data/{key}", data)
        z.writestr(f"{folder}/version", b"3\n")


def training_checkpoint() -> tuple[torch.nn.Module, dict[str, Any]]:
    """A small model after one Adam step, and the checkpoint a training loop would save of it
    (with values the safetensors format cannot hold: a device and bytes)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(2, 3)).sum().backward()
    opt.step()
    return net, {
        "epoch": 5,
        "model_state_dict": net.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": 0.25,
        "device": torch.device("cpu"),
        "blob": b"\x00raw",
        "note": None,
    }


def write_shards(folder: Path, state: dict[str, Any], groups: list[list[str]]) -> Path:
    """``state`` saved by torch as a Hugging Face sharded checkpoint (one shard per group of
    keys) with its ``pytorch_model.bin.index.json``; returns the index."""
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        torch.save({k: state[k] for k in keys}, folder / name)
        weight_map.update({k: name for k in keys})
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}), encoding="utf-8"
    )
    return index
