"""A builder of pre-0.4 tar checkpoints (torch 0.1 to 0.3), and the example the tar tests read.

torch 2.13 can still load these files but no longer writes them, so they are built here the
way torch 0.3's ``_save`` did: ``tarfile`` (PAX format) holding ``sys_info``, ``pickle``,
``tensors`` and ``storages``, with pickles made by a pure-Python pickler that writes the
``torch.FloatStorage``-style globals and the ``str(_cdata)`` persistent ids.  No torch here:
``tests/unit/test_tar.py`` reads these files with pthfmt alone, and
``tests/interop/test_tar.py`` proves the builder right with ``torch.load``.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pthfmt
from pthfmt import PthError

# -- the builder ---------------------------------------------------------------------------------


class Glob:
    """A global the pickle names (``torch FloatStorage``) without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Ref:
    """A tensor or storage of the checkpoint: pickled as persistent id ``pid``."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class Call:
    """``func(*args)`` (``REDUCE``, or ``NEWOBJ`` with ``new=True``), then ``BUILD state``."""

    def __init__(self, func: Any, args: tuple, state: Any = None, new: bool = False) -> None:
        self.func, self.args, self.state, self.new = func, args, state, new


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is open
    dispatch = pickle._Pickler.dispatch.copy()

    def save_glob(self, obj: Glob) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def save_call(self, obj: Call) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.NEWOBJ if obj.new else pickle.REDUCE)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[Glob] = save_glob
    dispatch[Call] = save_call

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Ref) else None


class _Py2Pickler(_Pickler):
    """Writes text as Python 2 ``str`` (``SHORT_BINSTRING``), as torch 0.3 on Python 2 did."""

    dispatch = _Pickler.dispatch.copy()

    def save_py2_str(self, obj: str) -> None:
        raw = obj.encode("ascii")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str


def dumps(obj: Any, protocol: int | str = 2) -> bytes:
    """``protocol`` 0 to 4, or ``"py2"``: protocol 2 with Python 2 strings."""
    f = io.BytesIO()
    if protocol == "py2":
        _Py2Pickler(f, 2).dump(obj)
    else:
        _Pickler(f, protocol).dump(obj)
    return f.getvalue()


def storages_member(
    storages: list, views: list, count: int | None = None, protocol: int | str = 2
) -> bytes:
    """``(key, location, storage class name, little-endian array)`` per storage."""
    out = [dumps(len(storages) if count is None else count, protocol)]
    for key, location, cls, data in storages:
        out += [
            dumps((key, location, Glob("torch", cls)), protocol),
            struct.pack("<q", data.size),
            data.tobytes(),
        ]
    out.append(dumps(views, protocol))
    return b"".join(out)


def tensors_member(tensors: list, count: int | None = None, protocol: int | str = 2) -> bytes:
    """``(key, storage key, tensor class, size, stride, storage_offset)`` per tensor."""
    out = [dumps(len(tensors) if count is None else count, protocol)]
    for key, storage_key, cls, size, stride, offset in tensors:
        module, _, name = cls.rpartition(".")
        n = len(size)
        out += [
            dumps((key, storage_key, Glob(module or "torch", name)), protocol),
            struct.pack("<q", n),  # torch 0.3 wrote ndim as 8 bytes; readers take <i + 4
            struct.pack(f"<{n}q", *size),
            struct.pack(f"<{n}q", *stride),
            struct.pack("<q", offset),
        ]
    return b"".join(out)


SYS_INFO = {
    "protocol_version": 1000,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 8},
}


def members(spec: dict, protocol: int | str = 2) -> dict[str, bytes]:
    """The four members of ``spec`` in torch's order (sys_info, pickle, tensors, storages)."""
    return {
        "sys_info": dumps(SYS_INFO, protocol),
        "pickle": dumps(spec["obj"], protocol),
        "tensors": tensors_member(spec["tensors"], protocol=protocol),
        "storages": storages_member(spec["storages"], spec["views"], protocol=protocol),
    }


def tar_bytes(
    parts: dict[str, bytes] | list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT, **tar_kw: Any
) -> bytes:
    f = io.BytesIO()
    items = parts.items() if isinstance(parts, dict) else parts
    with tarfile.open(fileobj=f, mode="w:", format=fmt, **tar_kw) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_500_000_000
            tar.addfile(info, io.BytesIO(data))
    return f.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "ckpt.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def member_offset(data: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmember(name).offset_data


# -- the example: ex_tar.py's 2x3 tensor, tensor on a storage view, bare storage, and more -------

F32 = np.array(
    [
        0x00000000,
        0x3FC00000,
        0x80000000,
        0x7F800000,
        0x7FC12345,
        0x00000001,
        0x40500000,
        0xC0E00000,
        0x7149F2CA,
        0x42280000,
    ],
    "<u4",
).view("<f4")


I64 = np.array([2**40, -5, 0, 9], "<i8")


I16 = np.array([7, -3, 32767], "<i2")


def example() -> dict:
    return {
        "storages": [
            (1001, "cpu", "FloatStorage", F32),
            (1002, "cpu", "LongStorage", I64),
            (1003, "cpu", "ShortStorage", I16),
        ],
        "views": [(2001, 1001, 4, 6)],
        "tensors": [
            (3001, 1001, "FloatTensor", (2, 3), (3, 1), 0),
            (3002, 2001, "FloatTensor", (2, 2), (1, 2), 1),
            (3003, 1002, "LongTensor", (2,), (2,), 1),
            (3004, 1002, "LongTensor", (3, 2), (0, 1), 0),
            (3005, 1003, "ShortTensor", (0,), (1,), 0),
        ],
        "obj": {
            "a": Ref("3001"),
            "b": Ref("3002"),
            "longs": [Ref("3003"), Ref(3004)],
            "empty": Ref("3005"),
            "storage": Ref("1003"),
            "view": Ref("2001"),
            "a_again": Ref("3001"),
            "nested": OrderedDict([("w", Ref("3002"))]),
            "epoch": 7,
            "name": "net",
        },
    }


#: key path -> (root storage key, element offset in the root, the root's data)
TENSORS = {
    "a": ("1001", 0, F32),
    "b": ("1001", 5, F32),  # view at 4, tensor offset 1 inside it
    "longs.0": ("1002", 1, I64),
    "longs.1": ("1002", 0, I64),
    "empty": ("1003", 0, I16),
}


def get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def expected_array(spec: dict, path: str) -> np.ndarray:
    """What the tensor at ``path`` holds, computed from the spec with numpy alone."""
    key = get(spec["obj"], path).pid
    (_, _, _, size, stride, _) = next(t for t in spec["tensors"] if t[0] == int(key))
    _root, elem, data = TENSORS[path]
    flat = data[elem:]
    return np.lib.stride_tricks.as_strided(flat, size, [s * data.itemsize for s in stride])


def ptr(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def from_mmap(arr: np.ndarray) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = (
            getattr(base, "base", None)
            if isinstance(base, np.ndarray)
            else getattr(base, "obj", None)
        )
    return False


def raises(data: bytes, kind: type[PthError], member: str | None, match: str = "") -> PthError:
    with pytest.raises(kind, match=match) as info:
        pthfmt.load(io.BytesIO(data))
    exc = info.value
    if member is not None:
        assert exc.record == member and repr(member) in str(exc), str(exc)
    with pytest.raises(kind):
        pthfmt.open(io.BytesIO(data))
    return exc


#: ``test_tensor_outside_its_storage``: a tensor that does not fit its storage, and whether
#: torch's ``set_()`` silently grows the storage to fit it (pthfmt refuses all three)
OUTSIDE = [
    ((3001, 1001, "FloatTensor", (4, 3), (3, 1), 0), True),  # 12 of a 10-element storage
    ((3001, 2001, "FloatTensor", (7,), (1,), 0), False),  # 7 of a 6-element view
    ((3001, 1001, "FloatTensor", (2,), (1,), 9), True),  # offset runs off the end
]
PARAMETER = Glob("torch.nn.parameter", "Parameter")
