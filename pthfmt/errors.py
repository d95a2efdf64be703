"""The one exception hierarchy of pthfmt.

Every problem with a file's content surfaces as a :class:`PthError` subclass (itself a
``ValueError``) whose message says *what* is wrong and *where*: the record (zip member or
legacy section), the byte offset inside that record or the pickle, and the key path of the
object being built (``model_state_dict.fc1.weight``).
"""

from __future__ import annotations

from .text import quoted

__all__ = [
    "PthError",
    "FormatError",
    "CorruptError",
    "UnsafePickleError",
    "UnsupportedError",
    "UnserializableError",
    "LimitError",
    "RemoteError",
    "NotAModuleError",
]


class PthError(ValueError):
    """Base class of every pthfmt error about a file's content or an object to save."""

    def __init__(
        self,
        message: str,
        *,
        record: str | None = None,
        offset: int | None = None,
        key_path: str | None = None,
        code: str | None = None,
    ) -> None:
        self.message = message
        self.record = record
        self.offset = offset
        self.key_path = key_path
        #: The validation check this error is a case of (a code of
        #: ``pthfmt.validation.CHECKS``), where the rule that raised it knows: the validator
        #: reports the reader's own errors under it instead of re-checking the rule.
        self.code = code
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {quoted(self.record)}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.key_path is not None:
            where.append(f"key {quoted(self.key_path)}")
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def locate(
        self,
        *,
        record: str | None = None,
        offset: int | None = None,
        key_path: str | None = None,
    ) -> PthError:
        """Fill in location fields that are still unknown; returns ``self`` for ``raise``."""
        if self.record is None and record is not None:
            self.record = record
        if self.offset is None and offset is not None:
            self.offset = offset
        if self.key_path is None and key_path is not None:
            self.key_path = key_path
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


class FormatError(PthError):
    """The container or the object structure is not what a torch checkpoint holds."""


class NotAModuleError(FormatError, TypeError):
    """A module method (:func:`pthfmt.state_dict`, a stub's ``named_parameters()``...) on an
    object that is not a stubbed ``nn.Module``, a TorchScript module (or, for
    ``state_dict``, a mapping): what the file holds is something else.  Also a ``TypeError``,
    the error torch's own methods give there."""


class CorruptError(PthError):
    """The file is damaged: truncated, a CRC mismatch, sizes or offsets that do not fit."""


class UnsafePickleError(PthError):
    """The pickle asks for a global or an opcode outside pthfmt's allowlist."""


class LimitError(PthError):
    """The file asks for more memory or work than its size justifies.

    Raised for amplification (one pickled blob copied again and again through memo
    references), hash flooding (many colliding integer dict keys) and similar resource
    abuse; a genuine checkpoint never comes near these bounds.
    """


class UnsupportedError(PthError):
    """Valid torch content that pthfmt does not handle (yet); the message names it."""


class UnserializableError(PthError):
    """:func:`pthfmt.save` was given an object the checkpoint format cannot hold."""


class RemoteError(PthError):
    """A remote file could not be read as it was: a failed request, a server that ignores
    ``Range`` or sends a short body, a file that changed while it was being read."""
