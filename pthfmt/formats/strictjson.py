"""Strict JSON, the one parser for the JSON that files carry (safetensors headers and
metadata values, shard indexes, pthfmt's npz sidecar).

Python's :mod:`json` accepts more than JSON and trusts its input: it keeps the last of two equal
keys, reads ``NaN``/``Infinity``, converts integers of any length (quadratic time, and a
``ValueError`` from 4,300 digits) and recurses without bound.  The hooks here refuse each of
these with :class:`Rule`; :func:`loads` turns every failure into a :class:`FormatError` that
names the broken rule and, where :mod:`json` knows it, the character position.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from ..errors import FormatError
from ..text import escape

__all__ = ["MAX_DIGITS", "Rule", "decoder_for", "loads", "parse_int", "parse_constant"]

#: Digits a JSON integer may have (2**64 has 20): longer ones are refused before Python
#: converts them.
MAX_DIGITS: Final = 40


class Rule(Exception):
    """A rule of strict JSON broken inside a value (hooks do not know their position)."""


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refusing a key given twice (:mod:`json` would keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Rule(f"key '{escape(key)}' appears twice in one object")
        out[key] = value
    return out


def parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_DIGITS:
        raise Rule(f"a number of {digits} digits (at most {MAX_DIGITS})")
    return int(text)


def parse_constant(name: str) -> Any:
    raise Rule(f"{name} is not JSON")


_CHECKED: Final = json.JSONDecoder(
    object_pairs_hook=unique_pairs, parse_int=parse_int, parse_constant=parse_constant
)
#: The same without the per-number hook, for texts with no run of more than MAX_DIGITS digits
#: anywhere (every real one): Python's own int() is then safe and quick.
_FAST: Final = json.JSONDecoder(object_pairs_hook=unique_pairs, parse_constant=parse_constant)
_LONG_DIGITS: Final = re.compile(rf"[0-9]{{{MAX_DIGITS + 1}}}")


def decoder_for(text: str) -> json.JSONDecoder:
    """The strict decoder for ``text`` (its hooks raise :class:`Rule`)."""
    return _CHECKED if _LONG_DIGITS.search(text) else _FAST


def loads(text: str) -> Any:
    """The strict JSON document ``text``; :class:`FormatError` naming the broken rule."""
    try:
        return decoder_for(text).decode(text)
    except Rule as exc:
        raise FormatError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise FormatError("nested too deeply") from None
