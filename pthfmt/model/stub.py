"""Inert stand-ins for classes and calls outside the allowlist (``unknown="stub"``).

``torch.save(model)`` pickles the whole ``nn.Module``: its class (``__main__.Net``,
``torch.nn.modules.linear.Linear``...) and its ``__dict__``.  With ``unknown="stub"`` such a
global becomes a :class:`StubType` and every object made from it a :class:`Stub` that only
*records* what the pickle said: the constructor arguments, the ``BUILD`` state, and items
appended or set on it.  Nothing is imported and nothing from the file is called: a stub's
only behaviour is reading what it recorded.

Reading a stub:

- ``stub.fields()`` is its pickled attributes (the ``BUILD`` state's ``__dict__`` part);
- ``stub.name`` reads an attribute as the class would: for an ``nn.Module`` stub (its fields
  hold the ``_parameters``/``_buffers``/``_modules`` dicts) the fields first, then its
  parameters, buffers and child modules, so that ``m.model[0].conv.weight`` works; ``stub[i]``
  indexes an ``nn.Sequential``/``ModuleList``'s children (or the recorded items of another
  stub).  Names spelt ``__dunder__`` are never looked up (Python's protocols stay inert);
- ``stub.items()`` is every value it holds with its key, in the order the walker visits them
  (:func:`pthfmt.model.tree.walk`): constructor arguments (``__args__``), a non-dict state
  (``__state__``), a module's parameters, buffers, other attributes and children under their
  ``state_dict`` names, other stubs' attributes under their names, then set items and appended
  items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..text import escape, int_text
from .globals import Global

__all__ = ["Stub", "StubType", "MODULE_DICTS"]

#: The attributes of an ``nn.Module``'s ``__dict__`` that hold its members, in the order
#: ``state_dict()`` visits them.
MODULE_DICTS = ("_parameters", "_buffers", "_modules")


class StubType(Global):
    """A class or function named by the file and never resolved: ``module.name``."""

    __slots__ = ("buffers", "is_module", "module", "name", "parameters")

    def __init__(self, module: str, name: str) -> None:
        # (Global.__init__ is not used: ``call`` is a method here, not a stored bound method,
        # which would be a reference cycle keeping every stub type alive until a collection.)
        self.qualname = f"{module}.{name}"
        self.module = module
        self.name = name
        #: TorchScript classes: attribute names listed in ``__parameters__``/``__buffers__``
        #: of the archive's code record, and whether the class derives from ``Module``.
        self.parameters: tuple[str, ...] = ()
        self.buffers: tuple[str, ...] = ()
        self.is_module = False

    def call(self, *args: Any) -> Stub:
        """Calling a stub type records the call: a :class:`Stub` with the arguments."""
        return Stub(self, args)

    def __repr__(self) -> str:
        return f"StubType({escape(self.qualname)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StubType) and other.qualname == self.qualname

    def __hash__(self) -> int:
        return hash(self.qualname)


class Stub:
    """An object of a class outside the allowlist, as the pickle described it."""

    __slots__ = ("args", "dictitems", "listitems", "state", "type")

    def __init__(self, type_: StubType, args: tuple[Any, ...] = ()) -> None:
        self.type = type_
        self.args = args
        #: What ``BUILD`` gave: for ordinary Python objects their ``__dict__``.
        self.state: Any = None
        self.listitems: list[Any] = []
        self.dictitems: dict[Any, Any] = {}

    @property
    def qualname(self) -> str:
        return self.type.qualname

    def fields(self) -> dict[Any, Any]:
        """The pickled attributes: the ``BUILD`` state if it is a dict, the merged dicts of a
        ``(dict, slots)`` state, else none."""
        fields = _as_fields(self.state)
        return {} if fields is None else fields

    def module_dicts(self) -> tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any]] | None:
        """``(_parameters, _buffers, _modules)`` of an ``nn.Module`` stub (a missing one is
        empty), or ``None`` when the fields are not a module's."""
        fields = self.fields()
        found = [fields.get(name) for name in MODULE_DICTS]
        if found[0] is None and found[2] is None:
            return None
        if not all(d is None or isinstance(d, dict) for d in found):
            return None
        params, buffers, modules = (d if d is not None else {} for d in found)
        return params, buffers, modules

    def items(self) -> list[tuple[Any, Any]]:
        """Every value the stub holds, with its key (see the module docstring)."""
        out: list[tuple[Any, Any]] = []
        if self.args:
            out.append(("__args__", self.args))
        fields = _as_fields(self.state)
        if fields is None:
            if self.state is not None:
                out.append(("__state__", self.state))
            fields = {}
        dicts = self.module_dicts()
        if dicts is not None:
            params, buffers, modules = dicts
            out.extend(params.items())
            out.extend(buffers.items())
            out.extend((k, v) for k, v in fields.items() if k not in MODULE_DICTS)
            out.extend(modules.items())
        else:
            out.extend(fields.items())
        out.extend(self.dictitems.items())
        out.extend(enumerate(self.listitems))
        return out

    # -- nn.Module views (see pthfmt.model.modules) ---------------------------------------------
    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Any]]:
        """As torch's ``Module.named_parameters()``, for an ``nn.Module`` stub."""
        from .modules import named_parameters

        return named_parameters(self, prefix, recurse, remove_duplicate)

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Any]]:
        """As torch's ``Module.named_buffers()``, for an ``nn.Module`` stub."""
        from .modules import named_buffers

        return named_buffers(self, prefix, recurse, remove_duplicate)

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Stub]]:
        """As torch's ``Module.named_modules()``, for an ``nn.Module`` stub."""
        from .modules import named_modules

        return named_modules(self, prefix, remove_duplicate)

    def state_dict(self, prefix: str = "") -> dict[str, Any]:
        """As torch's ``Module.state_dict()`` (see :func:`pthfmt.state_dict`)."""
        from .modules import state_dict

        return state_dict(self, prefix=prefix)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        fields = self.fields()
        if name in fields:
            return fields[name]
        dicts = self.module_dicts()
        if dicts is not None:
            for members in dicts:
                if name in members:
                    return members[name]
        raise AttributeError(f"stub of {self.type.qualname} has no attribute {name!r}")

    def __getitem__(self, key: Any) -> Any:
        dicts = self.module_dicts()
        if dicts is not None and dicts[2]:
            children = dicts[2]
            if type(key) is int:
                values = list(children.values())
                if not -len(values) <= key < len(values):
                    raise IndexError(
                        f"index {key} is out of range for the "
                        f"{len(values)} children of {self.type.qualname}"
                    )
                return values[key]
            return children[key]
        if self.dictitems:
            return self.dictitems[key]
        return self.listitems[key]

    def __repr__(self) -> str:
        shown = []
        for key, value in list(self.fields().items())[:4]:
            if isinstance(key, str) and not key.startswith("_"):
                shown.append(f"{escape(key, 40)}={_brief(value)}")
        more = ", ..." if len(self.fields()) > len(shown) else ""
        inner = f": {', '.join(shown)}{more}" if shown else ""
        return f"Stub({escape(self.type.qualname)}{inner})"


def _as_fields(state: Any) -> dict[Any, Any] | None:
    """A ``BUILD`` state as attributes: a dict, or the merged dicts of ``(dict, slots)``."""
    if isinstance(state, dict):
        return state
    if (
        isinstance(state, tuple)
        and len(state) == 2
        and all(part is None or isinstance(part, dict) for part in state)
    ):
        merged: dict[Any, Any] = {}
        for part in state:
            if part:
                merged.update(part)
        return merged
    return None


def _brief(value: Any) -> str:
    """A value in a stub's repr: scalars and short strings as they are, else their type."""
    if value is None or type(value) in (bool, int, float):
        text = int_text(value) if type(value) is int else repr(value)
        return text if len(text) <= 24 else f"<{type(value).__name__}>"
    if type(value) is str:
        return repr(value) if len(value) <= 24 else repr(value[:21] + "...")
    if isinstance(value, Stub):
        return f"<{escape(value.type.qualname, 40)}>"
    return f"<{type(value).__name__}>"
