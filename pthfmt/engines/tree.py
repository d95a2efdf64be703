"""The leaves of an opened checkpoint, for ``inspect``, ``diff`` and ``convert``, over the one
walker :func:`pthfmt.model.tree.walk` (so that they name every tensor as
:meth:`pthfmt.Checkpoint.tensors` does, in time linear in the file however deep it nests).

- :func:`leaves`: ``(key_path, value)`` of every tensor and plain value, in file order (a
  pickled module stands for its tensors under their ``state_dict`` names; a stub's or an
  ``argparse.Namespace``'s fields are entries under its key; a code-execution gadget is one
  value, never entered).
- :func:`survey`: the classes a file pickles outside the allowlist, and its code-execution
  gadgets (:class:`Gadget`: where, what, and the call's arguments, bounded and escaped).
- :func:`subtree`: the entry under a dotted key; :func:`plain`: a JSON-safe rendering.
- :func:`open_stubbed`: open a checkpoint with unknown classes as stubs.
- :class:`Failure`: a failure already worded for the user (``usage``: the input cannot be
  read or named, rather than a problem found in it).
"""

from __future__ import annotations

import math
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.modules import is_module
from ..model.stub import Stub, StubType
from ..model.tensor import TensorRef
from ..model.tree import key_text, walk
from ..text import escape, int_text, short_repr
from ..torch.allowlist import gadget
from .kinds import describe

__all__ = [
    "Failure",
    "Gadget",
    "leaves",
    "survey",
    "Survey",
    "is_gadget",
    "is_flat",
    "subtree",
    "plain",
    "is_scalar",
    "open_stubbed",
]

_SCALARS = (bool, int, float, complex, str, bytes, type(None))
#: Characters of a gadget call's rendered arguments.
ARGS_LIMIT = 200


class Failure(Exception):
    """A failure already worded for the user; ``usage`` marks a file that cannot be read
    or named (exit status 2 on the command line) rather than a problem in it (1)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def is_scalar(value: Any) -> bool:
    return isinstance(value, _SCALARS) or isinstance(value, np.generic)


def is_flat(value: Any, scalar: Any = is_scalar) -> bool:
    """Whether a container is one leaf: empty, or a list or tuple of scalars."""
    return not value or (isinstance(value, (list, tuple)) and all(scalar(v) for v in value))


def is_gadget(value: Any) -> bool:
    """Whether ``value`` is a stub of a known code-execution gadget (``os.system``, ``eval``
    ...), called (a :class:`~pthfmt.Stub`) or only named (a :class:`~pthfmt.StubType`)."""
    kind = value.type if type(value) is Stub else value
    return type(kind) is StubType and gadget(kind.module)


def open_stubbed(path: str) -> Any:
    """``pthfmt.open(path, unknown="stub")``: classes outside the allowlist become stubs."""
    from ..reader import open as open_checkpoint

    return open_checkpoint(path, unknown="stub")


def _inside(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + ".")


class Survey:
    """What :func:`leaves` noticed on its way: the qualified names of the classes outside the
    allowlist (stubs), in file order, and the code-execution gadgets (at most
    :data:`MAX_GADGETS` listed; ``more`` counts the rest)."""

    def __init__(self) -> None:
        self.classes: dict[str, None] = {}
        self.gadgets: list[Gadget] = []
        self.more = 0

    def note(self, value: Any) -> None:
        if type(value) is Stub:
            self.classes.setdefault(value.type.qualname)
        elif type(value) is StubType:
            self.classes.setdefault(value.qualname)

    def add(self, path: str, value: Any) -> None:
        called = type(value) is Stub
        kind = value.type if called else value
        if len(self.gadgets) >= MAX_GADGETS:
            self.more += 1
            return
        self.gadgets.append(Gadget(path, kind.qualname, _arguments(value) if called else None))


#: Gadgets listed per file.
MAX_GADGETS = 100


def leaves(root: Any, survey: Survey | None = None) -> Iterator[tuple[str, Any]]:
    """``(key_path, value)`` of every tensor and plain value, in file order.

    Key paths are :func:`pthfmt.model.tree.walk`'s.  Lists and tuples of scalars are one
    value (``params = [0, 1, 2]``); empty containers are values too; a stubbed ``nn.Module``
    or TorchScript module contributes only its tensors (under their ``state_dict`` names);
    other stubs and ``argparse.Namespace`` objects contribute their fields (an empty one is
    a value); a code-execution gadget is a value whose contents are not entered.  Each
    container is visited once (shared and cyclic references); a tensor that two containers
    hold is yielded at both key paths, as torch's state_dict keys name it twice.  ``survey``
    collects the stubbed classes and every gadget (also those inside modules) on the way.
    """
    found = survey if survey is not None else Survey()

    def want(value: Any) -> bool:
        found.note(value)
        return _wanted(value)

    regions: list[tuple[str, bool]] = []  # (key path, module: tensors only / gadget: nothing)
    skip = 0  # the items of a flat list just yielded, which the walk yields next
    for path, value in walk(root, want=want):  # a tensor held twice: at both key paths
        if skip:
            skip -= 1
            continue
        while regions and not _inside(path, regions[-1][0]):
            regions.pop()
        if isinstance(value, TensorRef):
            if not regions or regions[-1][1]:
                yield path, value
            continue
        gadget_ = is_gadget(value)
        if gadget_:
            found.add(path, value)
        if regions:
            continue  # the rest of a module, or anything in a gadget
        if gadget_:
            yield path, value
            regions.append((path, False))
        elif is_module(value):
            regions.append((path, True))
        elif isinstance(value, (dict, list, tuple)):
            yield path, value
            skip = len(value) if not isinstance(value, dict) else 0
        elif type(value) is Stub or type(value) is Namespace:
            yield path, value  # an empty one (only those are wanted)
        else:
            yield path, value


def _wanted(value: Any) -> bool:
    """What :func:`leaves` needs the path of: everything but containers it enters (so that
    deep nesting builds no key path per level)."""
    if isinstance(value, (dict, list, tuple)):
        return is_flat(value)
    if type(value) is Stub:
        return is_gadget(value) or is_module(value) or not value.items()
    if type(value) is Namespace:
        return not vars(value)
    return True


@dataclass(frozen=True)
class Gadget:
    """A code-execution gadget in a file: its key path, the callable's qualified name, and
    the call's arguments as bounded, escaped text (``None``: named but not called)."""

    key: str
    qualname: str
    args: str | None

    def call(self) -> str:
        """``posix.system('touch x')`` (escaped, bounded)."""
        name = escape(self.qualname, 120)
        return name if self.args is None else f"{name}({self.args})"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "qualname": self.qualname, "args": self.args}


def _arguments(stub: Stub) -> str:
    """A call's arguments, each a bounded escaped repr, all within :data:`ARGS_LIMIT`."""
    parts: list[str] = []
    size = 0
    for arg in stub.args[:8]:
        text = short_repr(arg)
        size += len(text) + 2
        if size > ARGS_LIMIT:
            parts.append("...")
            break
        parts.append(text)
    if len(stub.args) > 8 and parts[-1:] != ["..."]:
        parts.append("...")
    return ", ".join(parts)


def survey(root: Any) -> tuple[list[str], list[Gadget]]:
    """The qualified names of the classes outside the allowlist (stubs), in file order, and
    the code-execution gadgets the tree holds (see :class:`Survey`)."""
    found = Survey()
    for _ in leaves(root, found):
        pass
    return list(found.classes), found.gadgets


def _items(node: Any) -> Any:
    if isinstance(node, dict):
        return node.items()
    if isinstance(node, (list, tuple)):
        return enumerate(node)
    if type(node) is Stub:
        return node.items()
    if type(node) is Namespace:
        return vars(node).items()
    return None


def subtree(root: Any, key: str | None) -> Any:
    """The value at dotted ``key`` (``model_state_dict``), for ``diff --key-a``: each part
    matches a key as key paths render it (dict keys, indices, stub and Namespace fields)."""
    if not key:
        return root
    node = root
    for part in key.split("."):
        items = _items(node)
        if items is None:
            raise Failure(f"no key {short_repr(key)} in the file")
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        for k, v in items:
            if key_text(k) == part:
                node = v
                break
        else:
            raise Failure(f"no key {short_repr(key)} in the file")
    return node


def _kind_text(described: dict[str, Any]) -> str:
    """``jagged nested tensor float32 2x*x3, ragged_idx 1, lengths``."""
    words = [described["kind"], described["dtype"]]
    rest = []
    for name, value in described.items():
        if isinstance(value, list):
            value = "x".join(map(str, value)) if value else "scalar"
        if name == "shape":
            words.append(value)
        elif name not in ("kind", "dtype") and value is not False and value is not None:
            rest.append(name if value is True else f"{name} {value}")
    return ", ".join([" ".join(map(str, words)), *rest])


def plain(value: Any) -> Any:
    """A JSON-safe rendering of a non-tensor value (strings are the file's, unescaped:
    callers escape for the terminal; :func:`pthfmt.cli.output.json_safe` for JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(is_scalar(v) for v in value):
        return [plain(v) for v in value]
    if isinstance(value, dict) and not value:
        return {}
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    described = describe(value)
    if described is not None:  # a quantized, sparse, nested, jagged or meta tensor
        return "<" + _kind_text(described) + ">"
    if is_gadget(value):
        called = type(value) is Stub
        kind = value.type if called else value
        found = Gadget("", kind.qualname, _arguments(value) if called else None)
        return f"<code-execution gadget {found.call()}>"
    qualname = getattr(value, "qualname", None)
    if isinstance(qualname, str):
        return f"<{escape(qualname, 120)}>"
    return short_repr(value, 200)
