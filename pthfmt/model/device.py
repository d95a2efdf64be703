"""Device tags (``cpu``, ``cuda:0``, ``mps``, ``meta``...) and ``map_location``.

Storages are tagged with the device they were saved from.  pthfmt always puts data in host
memory; the tag is what :attr:`TensorRef.device` reports and what a later save writes back.
``map_location`` rewrites tags the way ``torch.load`` does: ``None`` keeps them, a string or
:class:`Device` retags every storage, a dict maps tag to tag (``{"cuda:1": "cuda:0"}``) and a
callable receives the tag and returns the new one (or ``None`` to keep it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Union

from ..errors import FormatError

__all__ = ["Device", "MapLocation", "location_mapper"]

_TAG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::(\d+))?$")


class Device:
    """A torch device as a value: ``Device("cuda", 0)`` prints like ``torch.device``."""

    __slots__ = ("index", "type")

    def __init__(self, type: str, index: int | None = None) -> None:
        if index is None and ":" in type:
            parsed = Device.parse(type)
            type, index = parsed.type, parsed.index
        if not _TAG.match(type) or ":" in type:
            raise ValueError(f"invalid device type {type!r}")
        if index is not None and (not isinstance(index, int) or index < 0):
            raise ValueError(f"invalid device index {index!r}")
        self.type: str = type
        self.index: int | None = index

    @classmethod
    def parse(cls, tag: str) -> Device:
        """``"cuda:1"`` -> ``Device("cuda", 1)``; raises ``ValueError`` on a malformed tag."""
        m = _TAG.match(tag)
        if m is None:
            raise ValueError(f"invalid device tag {tag!r}")
        return cls(m.group(1), None if m.group(2) is None else int(m.group(2)))

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        if self.index is None:
            return f"device(type={self.type!r})"
        return f"device(type={self.type!r}, index={self.index})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Device):
            return (self.type, self.index) == (other.type, other.index)
        if isinstance(other, str):
            return str(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return Device, (self.type, self.index)


class MapLocationError(Exception):
    """A user's ``map_location`` callable raised: the original exception is re-raised."""

    def __init__(self, original: Exception) -> None:
        super().__init__(original)
        self.original = original


class _HostStorage:
    """What a torch-style ``map_location(storage, location)`` callable receives as
    ``storage``: returning it unchanged means "keep it in host memory" (device ``cpu``)."""

    def __repr__(self) -> str:
        return "<pthfmt host storage>"


HOST_STORAGE = _HostStorage()


def _takes_two(func: Callable[..., object]) -> bool:
    try:
        import inspect  # (only for a callable map_location: 4 ms of import otherwise)

        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


MapLocation = Union[  # noqa: UP007 - a runtime alias, kept valid on Python 3.10
    None, str, Device, Mapping[str, str | Device], Callable[..., object]
]


def _to_device(value: object, what: str) -> Device:
    if isinstance(value, Device):
        return value
    if isinstance(value, str):
        try:
            return Device.parse(value)
        except ValueError:
            raise FormatError(f"{what}: invalid device tag {value!r}") from None
    raise TypeError(f"{what} must be a str or pthfmt.Device, not {type(value).__name__}")


def location_mapper(map_location: MapLocation) -> Callable[[str], Device]:
    """Turn a ``map_location`` argument into ``tag -> Device`` (memoized per tag)."""
    cache: dict[str, Device] = {}

    if map_location is None:

        def choose(tag: str) -> Device:
            return _to_device(tag, "storage location")
    elif isinstance(map_location, (str, Device)):
        fixed = _to_device(map_location, "map_location")

        def choose(tag: str) -> Device:
            return fixed
    elif isinstance(map_location, Mapping):
        table = {str(k): _to_device(v, "map_location value") for k, v in map_location.items()}

        def choose(tag: str) -> Device:
            return table[tag] if tag in table else _to_device(tag, "storage location")
    elif callable(map_location):
        func = map_location
        torch_style = _takes_two(func)

        def choose(tag: str) -> Device:
            try:
                out = func(HOST_STORAGE, tag) if torch_style else func(tag)
            except Exception as exc:
                raise MapLocationError(exc) from exc
            if out is HOST_STORAGE:  # torch's `lambda storage, loc: storage`
                return Device("cpu")
            return _to_device(tag if out is None else out, "storage location")
    else:
        raise TypeError(f"unsupported map_location {map_location!r}")

    def mapped(tag: str) -> Device:
        dev = cache.get(tag)
        if dev is None:
            dev = cache[tag] = choose(tag)
        return dev

    return mapped
