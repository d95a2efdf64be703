"""``state_dict()`` without torch: the weights of a stubbed ``nn.Module``, a TorchScript tree or
a plain mapping of tensors.

``torch.save(model)`` pickles every ``nn.Module`` with its ``__dict__``, whose
``_parameters``, ``_buffers`` and ``_modules`` OrderedDicts hold the weights, the buffers and
the child modules; ``_non_persistent_buffers_set`` names buffers that ``state_dict()`` skips.
``Module.state_dict()`` visits a module's own parameters, then its persistent buffers, then
each child depth-first with ``prefix + name + "."`` (``None`` entries are skipped).

A TorchScript module object keeps its attributes directly in its state, and its class's code
lists which are ``__parameters__`` and ``__buffers__``; the scripted module's ``state_dict()``
is parameters, then buffers, then child modules in attribute order.

**The file decides these attributes**, so each is checked before use: ``_parameters``,
``_buffers`` and ``_modules`` must be dicts with string keys (or ``None``), the skip set a
set of strings; anything else is a :class:`~pthfmt.errors.FormatError` naming the module's
path.  **The work is bounded by what the file holds**, not by what its sharing multiplies:
the *material* of a tree is the entries of its distinct dicts and name lists plus the
characters of its distinct names; visiting entries may take :data:`STEPS_PER_ITEM` steps per
item of material (plus :data:`STEP_BUDGET`), and the keys and prefixes built may take
:data:`CHARS_PER_ITEM` characters per item (plus :data:`CHAR_BUDGET`).  Beyond either, or
beyond :data:`MAX_MODULE_PATHS` module paths, it is a :class:`~pthfmt.errors.LimitError`.
A module shared by two parents is visited under both names, as torch does; a module that
contains itself is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final, NamedTuple

from ..errors import FormatError, LimitError, NotAModuleError
from ..text import escape, short_repr
from .stub import Stub

__all__ = [
    "state_dict",
    "is_module",
    "named_modules",
    "named_parameters",
    "named_buffers",
    "MAX_MODULE_PATHS",
]

MAX_MODULE_PATHS: Final = 1_000_000
STEP_BUDGET: Final = 1_000_000
STEPS_PER_ITEM: Final = 4
CHAR_BUDGET: Final = 32 << 20
CHARS_PER_ITEM: Final = 32


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a stubbed ``nn.Module`` or TorchScript module."""
    if not isinstance(obj, Stub):
        return False
    if obj.type.is_module:
        return True
    state = obj.state
    return (
        isinstance(state, dict)
        and isinstance(state.get("_modules"), dict)
        and isinstance(state.get("_parameters"), dict)
    )


class _Budget:
    """The work of one ``state_dict`` call against the material it has met (see above)."""

    __slots__ = ("chars", "seen", "steps")

    def __init__(self) -> None:
        self.steps = STEP_BUDGET
        self.chars = CHAR_BUDGET
        self.seen: set[int] = set()

    def material(self, obj: Any, size: int) -> None:
        """Count ``obj`` (a dict, a name list or a name of ``size`` items) once."""
        if id(obj) not in self.seen:
            self.seen.add(id(obj))
            self.steps += STEPS_PER_ITEM * size
            self.chars += CHARS_PER_ITEM * size

    def step(self, n: int) -> None:
        self.steps -= n
        if self.steps < 0:
            raise LimitError(
                "state_dict: the module tree takes more steps than the file's "
                "size justifies (modules or attribute dicts shared many times)"
            )

    def text(self, n: int) -> None:
        self.chars -= n
        if self.chars < 0:
            raise LimitError(
                "state_dict: the keys take more characters than the file's size "
                "justifies (long names repeated at many levels)"
            )


def _where(path: str, module: Stub) -> str:
    return f"module {short_repr(path.rstrip('.') or '<root>')} ({escape(module.qualname)})"


def _entries(
    module: Stub, path: str, attr: str, value: Any, budget: _Budget
) -> list[tuple[str, Any]]:
    """The ``(name, value)`` items of one of a module's attribute dicts, checked."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise FormatError(f"{_where(path, module)}: {attr} is a {_kind(value)}, not a dict")
    budget.material(value, len(value))
    budget.step(len(value))
    items = list(value.items())
    for name, _ in items:
        if type(name) is not str:
            raise FormatError(
                f"{_where(path, module)}: {attr} has the key {short_repr(name)}, not a string"
            )
        budget.material(name, len(name))
    return items


def _skip_set(module: Stub, path: str, value: Any) -> set[Any] | frozenset[Any]:
    if value is None:
        return frozenset()
    if not isinstance(value, (set, frozenset)):
        raise FormatError(
            f"{_where(path, module)}: _non_persistent_buffers_set is a {_kind(value)}, not a set"
        )
    return value


def _kind(value: Any) -> str:
    return escape(value.qualname) if isinstance(value, Stub) else type(value).__name__


class _Members(NamedTuple):
    """One module's members, checked: parameters, buffers (``None`` entries kept, as torch
    keeps them), the names of buffers ``state_dict()`` skips, and child modules."""

    params: list[tuple[str, Any]]
    buffers: list[tuple[str, Any]]
    skip: AbstractSet[Any]
    children: list[tuple[str, Stub]]

    def state(self) -> list[tuple[str, Any]]:
        """The entries ``state_dict()`` keeps, in its order."""
        out = [(n, v) for n, v in self.params if v is not None]
        out += [(n, v) for n, v in self.buffers if v is not None and n not in self.skip]
        return out


def _members(module: Stub, path: str, budget: _Budget) -> _Members:
    state = module.state if isinstance(module.state, dict) else {}
    if module.type.is_module:  # TorchScript object
        return _script_members(module, state, budget)
    params = _entries(module, path, "_parameters", state.get("_parameters"), budget)
    buffers = _entries(module, path, "_buffers", state.get("_buffers"), budget)
    skip = _skip_set(module, path, state.get("_non_persistent_buffers_set"))
    children = []
    for name, child in _entries(module, path, "_modules", state.get("_modules"), budget):
        if child is None:
            continue
        if not is_module(child):
            raise FormatError(
                f"{_where(path, module)}: child {short_repr(name)} is a "
                f"{_kind(child)}, not a module"
            )
        children.append((name, child))
    return _Members(params, buffers, skip, children)


def _script_members(module: Stub, state: dict[Any, Any], budget: _Budget) -> _Members:
    names = (module.type.parameters, module.type.buffers)
    for group in names:
        budget.material(group, len(group))
        budget.step(len(group))
    budget.material(state, len(state))
    budget.step(len(state))
    params, buffers = ([(n, state.get(n)) for n in group if n in state] for group in names)
    children = [
        (n, v) for n, v in state.items() if type(n) is str and isinstance(v, Stub) and is_module(v)
    ]
    for name, _ in children:
        budget.material(name, len(name))
    return _Members(params, buffers, frozenset(), children)


_EXIT: Final = object()


def _module_tree(
    obj: Stub, prefix: str, budget: _Budget, *, dedupe: bool
) -> Iterator[tuple[str, Stub, _Members]]:
    """``(key prefix, module, its members)`` depth-first in ``state_dict()`` order; the key
    prefix ends with ``.`` (or is ``""`` at an empty root).  ``dedupe``: a module reached
    again is skipped (``named_modules()``); otherwise it is visited under each name, as
    ``state_dict()`` does.  A module that contains itself is refused either way."""
    on_path: set[int] = set()  # the modules from the root to the current one
    seen: set[int] = set()
    # (key prefix, module) to enter, or (_EXIT, module) once its subtree is done
    stack: list[tuple[Any, Stub]] = [(prefix, obj)]
    visits = 0
    while stack:
        path, module = stack.pop()
        if path is _EXIT:
            on_path.discard(id(module))
            continue
        if id(module) in on_path:
            raise FormatError(f"{_where(path, module)} contains itself")
        if dedupe:
            if id(module) in seen:
                continue
            seen.add(id(module))
        visits += 1
        if visits > MAX_MODULE_PATHS:
            raise LimitError(f"module tree has more than {MAX_MODULE_PATHS} module paths")
        members = _members(module, path, budget)
        yield path, module, members
        on_path.add(id(module))
        stack.append((_EXIT, module))
        for name, child in reversed(members.children):
            budget.text(len(path) + len(name) + 1)
            stack.append((f"{path}{name}.", child))


def _module_state_dict(obj: Stub, prefix: str) -> OrderedDict[str, Any]:
    out: OrderedDict[str, Any] = OrderedDict()
    budget = _Budget()
    budget.text(len(prefix))
    for path, _, members in _module_tree(obj, prefix, budget, dedupe=False):
        for name, value in members.state():
            budget.text(len(path) + len(name))
            out[path + name] = value
    return out


def _check_module(obj: Any) -> Stub:
    if not is_module(obj):
        raise NotAModuleError(
            f"expected a stubbed nn.Module or TorchScript module, not {short_repr(obj)}"
        )
    return obj  # type: ignore[no-any-return]


def named_modules(
    obj: Any, prefix: str = "", remove_duplicate: bool = True
) -> Iterator[tuple[str, Stub]]:
    """``(name, module)`` of a module stub and every module below it, as torch's
    ``Module.named_modules()`` (the root is named ``prefix``)."""
    root = _check_module(obj)
    budget = _Budget()
    budget.text(len(prefix))
    start = prefix + "." if prefix else ""
    for path, module, _ in _module_tree(root, start, budget, dedupe=remove_duplicate):
        yield path[:-1], module


def _named_members(
    obj: Any, which: str, prefix: str, recurse: bool, remove_duplicate: bool
) -> Iterator[tuple[str, Any]]:
    root = _check_module(obj)
    budget = _Budget()
    budget.text(len(prefix))
    start = prefix + "." if prefix else ""
    if recurse:
        modules: Iterable[tuple[str, Stub, _Members]] = _module_tree(
            root, start, budget, dedupe=remove_duplicate
        )
    else:
        modules = [(start, root, _members(root, start, budget))]
    memo: set[int] = set()
    for path, _, members in modules:
        for name, value in getattr(members, which):
            if value is None or id(value) in memo:
                continue
            if remove_duplicate:
                memo.add(id(value))
            budget.text(len(path) + len(name))
            yield path + name, value


def named_parameters(
    obj: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` of every parameter, as torch's ``Module.named_parameters()``."""
    return _named_members(obj, "params", prefix, recurse, remove_duplicate)


def named_buffers(
    obj: Any, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` of every buffer (persistent or not), as torch's
    ``Module.named_buffers()``."""
    return _named_members(obj, "buffers", prefix, recurse, remove_duplicate)


def _mapping_state_dict(obj: Mapping[Any, Any], prefix: str) -> OrderedDict[str, Any]:
    """A plain state dict: string keys (prefixed), values as they are, ``_metadata`` kept."""
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in obj.items():
        if type(key) is not str:
            raise FormatError(
                f"state dict key {short_repr(key)} is a {type(key).__name__}, not a string"
            )
        out[prefix + key] = value
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _strip(sd: OrderedDict[str, Any], strip: str) -> OrderedDict[str, Any]:
    """``strip`` removed from the keys that start with it (torch's
    ``consume_prefix_in_state_dict_if_present``, ``_metadata`` keys included); two keys that
    become one are refused, naming both."""
    out: OrderedDict[str, Any] = OrderedDict()
    origin: dict[str, str] = {}
    for key, value in sd.items():
        new = key[len(strip) :] if key.startswith(strip) else key
        if new in origin:
            raise FormatError(
                f"strip_prefix {short_repr(strip)} makes the keys "
                f"{short_repr(origin[new])} and {short_repr(key)} both "
                f"{short_repr(new)}"
            )
        origin[new] = key
        out[new] = value
    metadata = getattr(sd, "_metadata", None)
    if isinstance(metadata, dict):
        meta: OrderedDict[Any, Any] = OrderedDict()
        for key, value in metadata.items():
            if type(key) is str:
                if key == strip.replace(".", ""):
                    key = ""
                elif key.startswith(strip):
                    key = key[len(strip) :]
            meta[key] = value
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def state_dict(
    obj: Any, *, prefix: str = "", strip_prefix: str | None = None
) -> OrderedDict[str, Any]:
    """The keys and tensors ``module.state_dict()`` would give.

    ``obj`` is what ``pthfmt.load(f, unknown="stub")`` (or ``open``) returned for a
    ``torch.save(model)`` file, the root of a TorchScript archive, or a plain mapping of
    tensors (a loaded state dict; an ``OrderedDict`` keeps its ``_metadata``).  ``prefix`` is
    put before every key; ``strip_prefix`` then removes a leading key prefix where present,
    such as the ``module.`` of ``nn.DataParallel`` wrappers (two keys that would become one
    are a :class:`~pthfmt.errors.FormatError` naming both).
    """
    if not isinstance(prefix, str) or not (strip_prefix is None or isinstance(strip_prefix, str)):
        raise TypeError("prefix and strip_prefix must be strings")
    if is_module(obj):
        out = _module_state_dict(obj, prefix)
    elif isinstance(obj, Mapping) and not isinstance(obj, Stub):
        out = _mapping_state_dict(obj, prefix)
    else:
        raise NotAModuleError(
            f"expected a stubbed nn.Module, a TorchScript module or a mapping of "
            f"tensors, not {short_repr(obj)}"
        )
    return _strip(out, strip_prefix) if strip_prefix else out
