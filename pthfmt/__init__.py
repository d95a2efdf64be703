"""pthfmt: read, write and validate PyTorch checkpoint files with numpy, without torch."""

from __future__ import annotations

from .device import Device
from .dtypes import DTYPES, DType
from .errors import (
    CorruptError,
    FormatError,
    PthError,
    UnsafePickleError,
    UnserializableError,
    UnsupportedError,
)
from .reader import Checkpoint, load, open
from .tensor import StorageInfo, Tensor, TensorRef

__version__ = "0.1.0"

__all__ = [
    "load",
    "open",
    "Checkpoint",
    "TensorRef",
    "Tensor",
    "StorageInfo",
    "Device",
    "DType",
    "DTYPES",
    "PthError",
    "FormatError",
    "CorruptError",
    "UnsafePickleError",
    "UnsupportedError",
    "UnserializableError",
]
