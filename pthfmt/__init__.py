"""pthfmt: read, write and validate PyTorch checkpoint files with numpy, without torch."""

from __future__ import annotations

from .conversion import convert
from .device import Device
from .dtypes import DTYPES, DType
from .errors import (
    CorruptError,
    FormatError,
    LimitError,
    PthError,
    UnsafePickleError,
    UnserializableError,
    UnsupportedError,
)
from .modules import state_dict
from .reader import Checkpoint, load, open
from .sharded import ShardedCheckpoint, load_sharded
from .stub import Stub, StubType
from .tensor import StorageInfo, Tensor, TensorRef
from .validation import Problem, Report, validate
from .writer import save

__version__ = "0.1.0"

__all__ = [
    "load",
    "open",
    "save",
    "convert",
    "validate",
    "Report",
    "Problem",
    "Checkpoint",
    "state_dict",
    "load_sharded",
    "ShardedCheckpoint",
    "Stub",
    "StubType",
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
    "LimitError",
]
