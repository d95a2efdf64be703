"""Text a file controls, made safe to show: one escape function, one bounded repr.

Everything a checkpoint decides -- keys, record names, class names, strings and numbers in the
pickle -- may hold control characters, ANSI escape sequences, lone surrogates, megabyte
strings, ints of a million digits or containers nested a million deep.  Before any of it
reaches an error message, a terminal or JSON it goes through this module:

- :func:`escape` keeps printable characters and writes every other one (C0/C1 controls, ESC,
  BEL, CR, format characters such as bidi overrides, lone surrogates) as a Python escape
  (``\\x1b``, ``\\u202e``, ``\\udc80``); the result is printable, valid UTF-8 and at most
  ``limit`` characters long.
- :func:`short_repr` is a bounded ``repr`` of any value (depth, items and length capped; an
  int too long to print in decimal is described by its size), escaped.
- :func:`int_text` is the decimal form of an int, or its size when that would be long (Python
  refuses ``str()`` of ints over 4,300 digits, and converting one costs quadratic time).

All three cost time in proportion to ``limit``, never to the size of the value.
"""

from __future__ import annotations

import reprlib
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = ["escape", "short_repr", "quoted", "int_text", "is_unicode", "LIMIT", "NAME_LIMIT"]

#: The default cap on a rendered value, in characters.
LIMIT = 80
#: A name a file controls (a record, a member, a key) is quoted whole up to this many characters.
NAME_LIMIT = 1024
#: Ints up to this many bits print in full (2**256 has 78 digits).
_INT_BITS = 256


def escape(text: str, limit: int | None = LIMIT) -> str:
    """``text`` with every non-printable character escaped, cut to ``limit`` characters.

    A cut text ends in ``...``; ``limit=None`` keeps it whole (still escaped).
    """
    cut = limit is not None and len(text) > limit
    if cut:
        assert limit is not None
        text = text[: max(limit - 3, 0)]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
        if limit is not None and len(text) > limit:
            text, cut = text[: max(limit - 3, 0)], True
    return text + "..." if cut else text


def quoted(text: str, limit: int = NAME_LIMIT) -> str:
    """``repr(text)`` -- quoted, every non-printable character escaped -- of a name a file
    controls, cut to its first ``limit`` characters (then ``...`` after the quote): a zip or
    tar member's name may be 64 KiB or more, which no message should repeat."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + "..."


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: encodable as UTF-8, so no lone surrogate (which a
    pickle's strings and JSON's ``\\udc80`` escapes can hold)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def int_text(value: int) -> str:
    """An int in decimal, or ``<a N-bit int>`` when it is over 256 bits long."""
    bits = value.bit_length()
    return str(value) if bits <= _INT_BITS else f"<a {bits}-bit int>"


#: Sets of items that do not compare are sorted by their reprs up to this size.
_SET_SORT = 1000


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        return int_text(x)

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(x[: self.maxstring + 2], level)

    # Sets in a stable order: reprlib sorts items that compare and otherwise shows them in
    # iteration order, which for objects hashed by identity changes from run to run (the
    # same file would give different messages).  Items that do not compare are ordered by
    # type and repr, up to _SET_SORT items; a larger such set is only counted.
    def repr_set(self, x: set[Any], level: int) -> str:
        return self._set(x, level, "{", "}", "set()", self.maxset)

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        return self._set(x, level, "frozenset({", "})", "frozenset()", self.maxfrozenset)

    def _set(
        self, x: AbstractSet[Any], level: int, left: str, right: str, empty: str, most: int
    ) -> str:
        if not x:
            return empty
        try:
            items = sorted(x)
        except Exception:
            if len(x) > _SET_SORT:
                return f"{empty[:-1]}<{len(x)} items>)"
            items = sorted(x, key=lambda v: (type(v).__qualname__, self.repr1(v, level - 1)))
        if level <= 0:
            return f"{left}...{right}"
        shown = [self.repr1(v, level - 1) for v in items[:most]]
        if len(items) > most:
            shown.append("...")
        return left + ", ".join(shown) + right


_REPR = _Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = LIMIT
_REPR.maxlong = LIMIT


def short_repr(value: Any, limit: int = LIMIT) -> str:
    """A bounded, escaped ``repr`` of any value, at most ``limit`` characters."""
    if type(value) is int:
        text = int_text(value)
    else:
        try:
            text = _REPR.repr(value)
        except Exception:  # a value whose repr fails: say what it is
            text = f"<{type(value).__name__}>"
    return escape(text, limit)
