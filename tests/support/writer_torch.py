"""What the writer tests share, torch side: torch's view of what it loaded (bytes through its
storage, layout through ``stride()``/``storage_offset()``, sharing through ``data_ptr()``),
compared with the pthfmt input that was saved, and the conversion of torch objects to pthfmt
input.  Comparisons never go through pthfmt's own tables.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
from typing import Any

import numpy as np
import torch

import pthfmt
from tests.support.writer import (
    NUMPY_TO_TORCH,
    TAGGED,
    array_bytes,
    leaves,
    owner,
    representable,
    tagged_dtype,
    torch_name,
)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def storage_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's whole storage as uint8, read by torch (no dtype-specific torch op)."""
    u8 = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
    return u8.numpy()


def element_bytes(t: torch.Tensor) -> np.ndarray:
    """Shape + (itemsize,) raw little-endian element bytes, through t's own strides."""
    size = t.element_size()
    buf = storage_bytes(t)
    if t.numel() == 0:
        return np.zeros((*t.shape, size), np.uint8)
    return np.lib.stride_tricks.as_strided(
        buf[t.storage_offset() * size :],
        shape=(*t.shape, size),
        strides=(*(s * size for s in t.stride()), 1),
    ).copy()


def assert_tensor_equal(a: np.ndarray, t: torch.Tensor, where: str = "") -> None:
    assert isinstance(t, torch.Tensor), where
    assert dtype_name(t) == torch_name(a.dtype), where
    assert tuple(t.shape) == a.shape, where
    np.testing.assert_array_equal(element_bytes(t), array_bytes(a), err_msg=where)
    if representable(a):
        assert t.stride() == tuple(s // a.dtype.itemsize for s in a.strides), where


def assert_loaded(ours: Any, theirs: Any, where: str = "") -> None:
    """``theirs`` (torch.load) is what saving ``ours`` (pthfmt input) should give."""
    if isinstance(ours, pthfmt.Tensor):
        assert isinstance(theirs, torch.nn.Parameter) == ours.parameter, where
        assert theirs.requires_grad == ours.requires_grad, where
        assert_tensor_equal(np.asarray(ours.array), theirs.detach(), where)
    elif isinstance(ours, np.ndarray):
        assert type(theirs) is torch.Tensor and not theirs.requires_grad, where
        assert_tensor_equal(ours, theirs, where)
    elif isinstance(ours, np.generic):
        assert type(theirs) in (bool, int, float, complex), where
        assert theirs == ours.item() or (math.isnan(theirs) and math.isnan(ours)), where
    elif isinstance(ours, pthfmt.Device):
        assert isinstance(theirs, torch.device) and str(theirs) == str(ours), where
    elif isinstance(ours, pthfmt.DType):
        assert theirs == getattr(torch, ours.name), where
    elif isinstance(ours, dict):
        assert type(theirs) is type(ours), where
        assert list(theirs) == list(ours), where
        for key in ours:
            assert_loaded(ours[key], theirs[key], f"{where}.{key}")
        if isinstance(ours, collections.OrderedDict):
            assert_loaded(dict(vars(ours)), dict(vars(theirs)), f"{where}.__dict__")
    elif isinstance(ours, (list, tuple)):
        assert type(theirs) is type(ours) and len(theirs) == len(ours), where
        for i, (x, y) in enumerate(zip(ours, theirs)):
            assert_loaded(x, y, f"{where}.{i}")
    elif isinstance(ours, float) and math.isnan(ours):
        assert type(theirs) is float and math.isnan(theirs), where
    else:
        assert type(theirs) is type(ours) and theirs == ours, where


def loaded_leaves(obj: Any) -> list[torch.Tensor]:
    return leaves(obj, torch.Tensor)


def assert_sharing(ours: Any, theirs: Any) -> None:
    """Same input object -> same loaded object; views of one base (same dtype, both
    expressible as views) -> one torch storage; different bases -> different storages."""
    ins, outs = leaves(ours), loaded_leaves(theirs)
    assert len(ins) == len(outs)
    for (a, ta), (b, tb) in itertools.combinations(zip(ins, outs), 2):
        if a is b:
            assert ta is tb
            continue
        xa = a.array if isinstance(a, pthfmt.Tensor) else a
        xb = b.array if isinstance(b, pthfmt.Tensor) else b
        same_ptr = ta.untyped_storage().data_ptr() == tb.untyped_storage().data_ptr()
        if owner(xa) is not owner(xb):
            assert not same_ptr or ta.untyped_storage().nbytes() == 0
        elif (
            xa.dtype == xb.dtype
            and xa.dtype.byteorder == xb.dtype.byteorder
            and representable(xa)
            and representable(xb)
            and (xa.__array_interface__["data"][0] - xb.__array_interface__["data"][0])
            % xa.dtype.itemsize
            == 0
        ):
            assert same_ptr


def torch_load(src: Any, **kwargs: Any) -> Any:
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    return torch.load(src, weights_only=True, **kwargs)


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy array viewing ``t``'s memory, with the dtype pthfmt expects for it."""
    name = dtype_name(t)
    numpy_dtype = next((d for d, n in NUMPY_TO_TORCH.items() if n == name), None)
    if name in TAGGED:
        numpy_dtype = tagged_dtype(name)
    if numpy_dtype is None:
        raise TypeError(name)
    raw = (
        t.detach().view(torch.uint8)
        if t.element_size() == 1
        else t.detach().view(
            {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}[t.element_size()]
        )
    )
    return raw.numpy().view(numpy_dtype)


def from_torch(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """The pthfmt input that stands for a torch object tree: tensors become numpy arrays
    (Parameters and grad-requiring tensors become pthfmt.Tensor), containers are rebuilt with
    the same sharing, and everything else (keys, strings, numbers) is kept as the same object,
    so that the pickle memo sees what torch's pickler sees."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    out: Any
    if isinstance(obj, torch.Tensor):
        data = tensor_to_numpy(obj)
        is_param = isinstance(obj, torch.nn.Parameter)
        out = (
            pthfmt.Tensor(
                data, device=str(obj.device), requires_grad=obj.requires_grad, parameter=is_param
            )
            if is_param or obj.requires_grad
            else data
        )
    elif isinstance(obj, torch.device):
        out = pthfmt.Device(obj.type, obj.index)
    elif isinstance(obj, torch.dtype):
        out = pthfmt.DType(str(obj).removeprefix("torch."))
    elif type(obj) in (dict, collections.OrderedDict):
        out = type(obj)((k, from_torch(v, memo)) for k, v in obj.items())
        if vars(obj) if isinstance(obj, collections.OrderedDict) else False:
            out.__dict__.update({k: from_torch(v, memo) for k, v in vars(obj).items()})
    elif type(obj) is list:
        out = [from_torch(v, memo) for v in obj]
    elif type(obj) is tuple:
        out = tuple(from_torch(v, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out
