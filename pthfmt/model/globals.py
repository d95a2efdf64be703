"""What an allowlisted global resolves to when the pickle calls it.

A pickle builds objects by calling globals (``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``).  The
pickle machine calls only :class:`Global` objects: pthfmt's own handlers (made by the torch
layer) and :class:`~pthfmt.model.stub.StubType` (a class the file names, recorded and never
imported).  Anything else on the stack is data and is never called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Global"]


class Global:
    """An allowlisted callable: one of pthfmt's handlers standing in for a file's global."""

    __slots__ = ("call", "qualname")

    def __init__(self, qualname: str, call: Callable[..., Any]) -> None:
        self.qualname = qualname
        self.call = call

    def __repr__(self) -> str:
        return f"<allowed global {self.qualname}>"
