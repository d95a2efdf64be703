"""The leaves of an opened checkpoint, for ``inspect`` and ``diff``.

- :func:`leaves`: ``(key_path, value)`` of every tensor and plain value, in file order (a
  pickled module stands for its ``state_dict()``); :func:`children` and :func:`is_flat` are
  the steps it shares with :func:`pthfmt.engines.convert.flatten`.
- :func:`subtree`: the entry under a dotted key; :func:`plain`: a JSON-safe rendering.
- :func:`open_stubbed`: open a checkpoint with unknown classes as stubs.
- :class:`Failure`: a failure already worded for the user (``usage``: the input cannot be
  read or named, rather than a problem found in it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import PthError
from ..model.tensor import TensorRef

__all__ = [
    "Failure",
    "leaves",
    "children",
    "is_flat",
    "subtree",
    "plain",
    "is_scalar",
    "open_stubbed",
]

_SCALARS = (bool, int, float, str, bytes, type(None))


class Failure(Exception):
    """A failure already worded for the user; ``usage`` marks a file that cannot be read
    or named (exit status 2 on the command line) rather than a problem in it (1)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS) or isinstance(value, np.generic)


def open_stubbed(path: str) -> Any:
    """``pthfmt.open(path, unknown="stub")``: classes outside the allowlist become stubs."""
    from ..reader import open as open_checkpoint

    return open_checkpoint(path, unknown="stub")


def _module_weights(value: Any) -> Any:
    """A stubbed ``nn.Module`` / TorchScript module's ``state_dict()``, else ``None``."""
    from ..model.modules import is_module, state_dict

    if not is_module(value):
        return None
    try:
        return state_dict(value)
    except (PthError, TypeError):
        return None


def is_flat(value: Any, scalar: Any) -> bool:
    """Whether a container is one leaf: empty, or a list or tuple of scalars."""
    return not value or (isinstance(value, (list, tuple)) and all(scalar(v) for v in value))


def children(path: str, value: Any) -> list[tuple[str, Any]]:
    """A dict's, list's or tuple's items as ``(key path, item)``, in order."""
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    prefix = f"{path}." if path else ""
    return [(f"{prefix}{k}", v) for k, v in items]


def leaves(root: Any) -> Iterator[tuple[str, Any]]:
    """``(key_path, value)`` of every tensor and plain value, in file order.

    Lists and tuples of scalars are one value (``params = [0, 1, 2]``); empty containers
    are values too; a pickled ``nn.Module`` or TorchScript module stands for its
    ``state_dict()``.  Each container is visited once (shared and cyclic references).
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, TensorRef) or is_scalar(value):
            yield path, value
            continue
        weights = _module_weights(value)
        if weights is not None:
            value = weights
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if is_flat(value, is_scalar):
                yield path, value
                continue
            stack.extend(reversed(children(path, value)))
            continue
        yield path, value


def subtree(root: Any, key: str | None) -> Any:
    """The value at dotted ``key`` (``model_state_dict``), for ``diff --key-a``."""
    if not key:
        return root
    node = root
    weights = _module_weights(node)
    if weights is not None:
        node = weights
    for part in key.split("."):
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            hits = [k for k in node if str(k) == part]
            if hits:
                node = node[hits[0]]
                continue
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        raise Failure(f"no key {key!r} in the file")
    return node


def plain(value: Any) -> Any:
    """A JSON-safe rendering of a non-tensor value."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(is_scalar(v) for v in value):
        return [plain(v) for v in value]
    if isinstance(value, dict) and not value:
        return {}
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    qualname = getattr(value, "qualname", None)
    if isinstance(qualname, str):
        return f"<{qualname}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
