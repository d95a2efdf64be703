"""pthfmt: read, write and validate PyTorch checkpoint files with numpy, without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CorruptError,
    FormatError,
    LimitError,
    NotAModuleError,
    PthError,
    RemoteError,
    UnsafePickleError,
    UnserializableError,
    UnsupportedError,
)
from .model.device import Device
from .model.dtypes import DTYPES, DType
from .model.kinds import JaggedArray, MetaArray, NestedArray, QuantizedArray, SparseArray
from .model.modules import state_dict
from .model.stub import Stub, StubType
from .model.tensor import StorageInfo, Tensor, TensorRef
from .reader import Checkpoint, load, open
from .sharded import ShardedCheckpoint, load_sharded

if TYPE_CHECKING:
    from .conversion import convert
    from .engines.diff import DiffResult, diff
    from .formats.detect import UnknownFormatError
    from .formats.sharding import save_sharded
    from .validation import Problem, Report, validate
    from .writer import save

__version__ = "0.1.0"

# Imported on first use: a plain ``load`` needs none of them (command-line start-up time).
_LAZY = {
    "save": "writer",
    "convert": "conversion",
    "validate": "validation",
    "Report": "validation",
    "Problem": "validation",
}
_LAZY["save_sharded"] = "formats.sharding"
_LAZY.update(diff="engines.diff", DiffResult="engines.diff", UnknownFormatError="formats.detect")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pthfmt' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "load",
    "open",
    "save",
    "convert",
    "diff",
    "DiffResult",
    "validate",
    "Report",
    "Problem",
    "Checkpoint",
    "state_dict",
    "load_sharded",
    "save_sharded",
    "ShardedCheckpoint",
    "Stub",
    "StubType",
    "TensorRef",
    "Tensor",
    "QuantizedArray",
    "SparseArray",
    "NestedArray",
    "JaggedArray",
    "MetaArray",
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
    "RemoteError",
    "NotAModuleError",
    "UnknownFormatError",
]
