"""Inert stand-ins for classes and calls outside the allowlist (``unknown="stub"``).

``torch.save(model)`` pickles the whole ``nn.Module``: its class (``__main__.Net``,
``torch.nn.modules.linear.Linear``...) and its ``__dict__``.  With ``unknown="stub"`` such a
global becomes a :class:`StubType` and every object made from it a :class:`Stub` that only
*records* what the pickle said: the constructor arguments, the ``BUILD`` state, and items
appended or set on it.  Nothing is imported, nothing from the file is called, and a stub has
no attribute magic (no ``__getattr__``, ``__setstate__``, ``__reduce__`` hooks that act).
"""

from __future__ import annotations

from typing import Any

from .globals import Global

__all__ = ["Stub", "StubType"]


class StubType(Global):
    """A class or function named by the file and never resolved: ``module.name``."""

    __slots__ = ("buffers", "is_module", "module", "name", "parameters")

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}", self._instantiate)
        self.module = module
        self.name = name
        #: TorchScript classes: attribute names listed in ``__parameters__``/``__buffers__``
        #: of the archive's code record, and whether the class derives from ``Module``.
        self.parameters: tuple[str, ...] = ()
        self.buffers: tuple[str, ...] = ()
        self.is_module = False

    def _instantiate(self, *args: Any) -> Stub:
        return Stub(self, args)

    def __repr__(self) -> str:
        return f"StubType({self.qualname})"

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

    def __repr__(self) -> str:
        return f"Stub({self.type.qualname})"
