"""What an allowlisted global resolves to when the pickle calls it.

A pickle builds objects by calling globals (``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``).  The
pickle machine calls only :class:`Global` objects: pthfmt's own handlers (made by the torch
layer) and :class:`~pthfmt.model.stub.StubType` (a class the file names, recorded and never
imported).  Anything else on the stack is data and is never called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from ..text import escape

__all__ = ["Global", "FastPath", "Unmade"]


#: ``fast(data, pos, end, memo, sparse, stack, glob)``: a global's own way through the
#: opcodes that follow a memo get of it (``glob``, the global itself): it pushes what they
#: build onto ``stack`` and returns the position after them, or returns ``None`` with nothing
#: changed to let the loop run them.
FastPath = Callable[[Any, int, int, list[Any], dict[int, Any], list[Any], "Global"], "int | None"]


class Global:
    """An allowlisted callable: one of pthfmt's handlers standing in for a file's global.

    ``fast``, when set, is a fast path the pickle machine may take when the pickle gets the
    global from its memo (torch's per-tensor sequence: :mod:`pthfmt.torch.tensor_template`).
    """

    __slots__ = ("call", "fast", "qualname")

    def __init__(
        self, qualname: str, call: Callable[..., Any], fast: FastPath | None = None
    ) -> None:
        self.qualname = qualname
        self.call = call
        self.fast = fast

    def apply(self, args: tuple[Any, ...]) -> Any:
        """Call with arguments the file chose (a handler calling another, as
        ``_rebuild_from_type_v2`` does): arguments that do not bind are the file's
        :class:`~pthfmt.errors.FormatError`; whatever the handler itself raises propagates."""
        try:
            return self.call(*args)
        except TypeError as exc:
            tb = exc.__traceback__
            if tb is None or tb.tb_next is not None:
                raise  # raised inside the handler: a bug in pthfmt
            raise FormatError(
                f"arguments of {escape(self.qualname)} do not fit: {escape(str(exc), 200)}"
            ) from None

    def __repr__(self) -> str:
        return f"<allowed global {escape(self.qualname)}>"


class Unmade:
    """A memo entry a fast path left unmade: values the loop would memoize that a pickle
    hardly ever reads back (torch's per-tensor persistent id, hooks and argument tuple).
    The pickle machine makes one on its first memo get, ``make(index)``, and stores it
    over this stand-in; nothing else ever sees one (a memo get is the only way out of the
    memo)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[int], Any]) -> None:
        self.make = make

    def __repr__(self) -> str:
        return "<unmade memo entry>"
