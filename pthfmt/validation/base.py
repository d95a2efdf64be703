"""The validator's state and the plumbing every check uses: recording problems, reading
records in bounded chunks."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import PthError
from ..formats.zip.reader import DEFLATED, STORED, ZipEntry, inflate
from ..source import Source
from .codes import CODES, MAX_PER_CODE, Problem

if TYPE_CHECKING:
    from .audit import Audit

CHUNK: Final = 1 << 20


def short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - our own types always repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count_text(recs: list[Rec], what: str) -> str:
    """``"1 storage record is"`` / ``"3 storage records are (first shown)"``."""
    if len(recs) == 1:
        return f"{what} is"
    return f"{len(recs)} {what}s (the first shown) are"


def text_of(value: Any) -> Any:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


@dataclass
class Rec:
    """A zip member as the scan saw it."""

    entry: ZipEntry
    rel: str | None = None  # name inside the archive folder
    data: int = -1  # absolute data offset (-1: not readable)
    end: int = -1  # end of the member's bytes (data + descriptor)


class ValidatorBase:
    """What every check shares: the file, the problems found so far, and bounded reads."""

    def __init__(self, src: Source, strict: bool, data: bool = True) -> None:
        self.src = src
        self.data = data  # False: tensor data is not read (validate(data=False))
        self.data_skipped: list[str] = []  # the storage records whose CRC-32 was not checked
        self.buf = src.buf
        self.size = src.size
        self.strict = strict
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self.format: str | None = None
        self.load_error: str | None = None
        self.static_global_seen = False
        self.zero_crc: list[str] = []
        self.inflate_refused = False  # the archive's inflation bound is spent
        self.audited: list[tuple[Audit, Any]] = []
        self.script = False

    def add(
        self,
        code: str,
        message: str,
        *,
        record: str | None = None,
        offset: int | None = None,
        key_path: str | None = None,
    ) -> None:
        check = CODES[code]
        if check.strict and not self.strict:
            return
        self.counts[code] += 1
        if self.counts[code] > MAX_PER_CODE:
            return
        self.problems.append(Problem(code, check.severity, message, record, offset, key_path))

    def chunks(self, start: int, n: int) -> Iterator[bytes]:
        stop = start + n
        for a in range(start, stop, CHUNK):
            yield self.buf[a : min(a + CHUNK, stop)]

    def inflate(
        self,
        start: int,
        csize: int,
        usize: int,
        sink: Callable[[bytes], None] | None = None,
        name: str = "record",
    ) -> tuple[int, int, PthError | None]:
        """Inflate a raw deflate stream with the reader's bounds (never past ``usize`` bytes,
        never past its bomb ratio): ``(crc32, size, error)``."""
        crc = total = 0
        try:
            for out in inflate(self.buf, start, csize, usize, name):
                total += len(out)
                crc = zlib.crc32(out, crc)
                if sink is not None:
                    sink(out)
        except PthError as exc:
            return crc, total, exc
        return crc, total, None

    def record_bytes(self, rec: Rec, limit: int | None = None) -> bytes | None:
        """A record's content (``limit``: at most that many bytes), or ``None`` if unreadable."""
        e = rec.entry
        if rec.data < 0:
            return None
        n = e.usize if limit is None else min(limit, e.usize)
        if e.method == STORED:
            return bytes(self.buf[rec.data : rec.data + n])
        if e.method != DEFLATED:
            return None
        if limit is not None:
            try:
                return zlib.decompressobj(-15).decompress(
                    bytes(self.buf[rec.data : rec.data + min(e.csize, 1 << 16)]), n
                )
            except zlib.error:
                return None
        parts: list[bytes] = []

        def sink(b: bytes) -> None:
            parts.append(b)

        _, _, err = self.inflate(rec.data, e.csize, e.usize, sink, e.name)
        return None if err else b"".join(parts)
