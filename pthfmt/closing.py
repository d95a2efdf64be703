"""The context-manager protocol of everything pthfmt opens (a checkpoint, a sharded
checkpoint, a conversion): ``with x:`` calls ``x.close()`` on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["Closing"]

_T = TypeVar("_T", bound="Closing")


class Closing:
    """A base for classes with a ``close()``: ``with obj:`` gives ``obj`` and closes it."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
