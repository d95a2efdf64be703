"""Checkpoints that are not local files: URLs read through fsspec, and seekable file objects.

A :class:`RemoteSource` is a :class:`~pthfmt.source.Source` whose ``buf`` is a memory map of
a sparse, unlinked temporary file of the remote file's size.  Nothing is in it at first:
byte ranges are fetched on demand (:meth:`RemoteSource.ensure`) and written into it, so every
format reader works on it unchanged, and a range is never fetched twice.  Only a range that
has been fetched may be read: :meth:`array`, :meth:`copy` and :meth:`bytes` fetch before
they read, and :func:`plan` fetches, format by format, exactly what the format's reader looks
at while it opens a file (a zip's end records and central directory, its local headers and
its small records; a legacy file's pickles and storage counts; a safetensors header).  Where
no plan exists (tar archives, the validator's own ``Source``), the whole file is fetched.

Every request asks for a bounded range and must return exactly its length; the file's size
and identity (ETag, modification time) are checked again after each batch of requests, so a
server that ignores ``Range``, returns a short body or serves a file that changed raises a
:class:`RemoteError` instead of returning a wrong value.
"""

from __future__ import annotations

import bisect
import errno
import io
import mmap as _mmap
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from .errors import FormatError, PthError, RemoteError
from .source import Source
from .text import escape

__all__ = [
    "RemoteError",
    "RemoteSource",
    "is_url",
    "is_remote_object",
    "plan",
    "all_but_data",
    "download",
    "GAP",
    "MAX_REQUEST",
]

#: Missing ranges closer than this are fetched in one request (the bytes between included).
GAP = 1024
#: The longest single request; longer ranges are fetched in several.
MAX_REQUEST = 64 << 20
#: Requests in flight at once when a batch holds many ranges (a zip's local headers).
CONCURRENCY = 16
#: What the first look at a file fetches: its start (format detection) and its end (zip).
HEAD = 4096
TAIL = 8192
_EOCD_SEARCH = 22 + 0xFFFF + 20  # end record + the longest comment + the zip64 locator
_LOCAL_EXTRA_GUESS = 72  # torch's alignment padding (<= 67 bytes) fits: one round of requests
_INSTALL = "pip install 'pthfmt[remote]'"


def is_url(f: Any) -> bool:
    """Whether ``f`` is a URL string (``scheme://...``, a scheme of two letters or more)."""
    if not isinstance(f, str):
        return False
    scheme, sep, _ = f.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


def is_remote_object(f: Any) -> bool:
    """A seekable binary file object that is not a local file (nor an in-memory ``BytesIO``)."""
    if isinstance(f, (str, bytes, os.PathLike, io.BytesIO)) or not hasattr(f, "read"):
        return False
    try:
        if not f.seekable():
            return False
    except (AttributeError, OSError, ValueError):
        return False
    try:
        fileno = f.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return True
    import stat

    try:
        return not stat.S_ISREG(os.fstat(fileno).st_mode)
    except OSError:
        return True


def local_path(url: str) -> str | None:
    """The path of a ``file://`` URL (read through the memory map), else ``None``."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return None


# -- fetchers: where the bytes come from ---------------------------------------------------------
class Fetcher(Protocol):
    name: str
    size: int

    def read(self, start: int, nbytes: int) -> bytes: ...

    def read_many(self, ranges: list[tuple[int, int]]) -> Iterable[bytes]: ...

    def identity(self) -> tuple[Any, ...]: ...


def _need_fsspec() -> Any:
    try:
        import fsspec  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise RemoteError(f"reading remote files needs fsspec: {_INSTALL}") from None
    return fsspec


def _not_found(exc: FileNotFoundError) -> str:
    """What fsspec's bare ``FileNotFoundError(url)`` was caused by (a 404, a refused
    connection ...), for the message."""
    cause = exc.__cause__
    while isinstance(cause, FileNotFoundError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is None or isinstance(cause, FileNotFoundError):
        return "No such file or directory"
    return f"not found or unreachable ({escape(f'{type(cause).__name__}: {cause}', 200)})"


def _failed(what: str, name: str, exc: BaseException) -> RemoteError:
    detail = escape(f"{type(exc).__name__}: {exc}", 300)
    return RemoteError(f"{what} {escape(name, 300)} failed ({detail})")


class FsspecFetcher:
    """Ranged reads of one fsspec URL, through an fsspec file opened without a cache (each
    read is one request for exactly its range)."""

    def __init__(self, url: str) -> None:
        fsspec = _need_fsspec()
        self.name = url
        try:
            self.fs, self.fspath = fsspec.core.url_to_fs(url)
            info = self.fs.info(self.fspath)
        except FileNotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, _not_found(exc), url) from None
        except ImportError as exc:  # a protocol whose own package is missing (s3fs, gcsfs)
            raise RemoteError(f"{escape(url, 300)}: {escape(str(exc), 300)}") from None
        except Exception as exc:
            raise _failed("opening", url, exc) from None
        size = info.get("size")
        if not isinstance(size, int) or size < 0:
            raise RemoteError(f"{escape(url, 300)}: the server does not tell the file's size")
        self.size = size
        self._identity = _identity(info)
        #: the server does not take Range requests: the file can only be read whole
        self.streaming = info.get("partial") is False  # (fsspec's HTTP: Accept-Ranges: none)
        self.file: Any = None
        if self.streaming:
            return
        try:
            self.file = self.fs.open(self.fspath, "rb", block_size=1 << 20, cache_type="none")
            if not _can_seek(self.file, size):
                self.streaming = True
                self.file.close()
        except Exception as exc:
            raise _failed("opening", url, exc) from None

    def read(self, start: int, nbytes: int) -> bytes:
        if self.streaming:
            raise RemoteError(
                f"{escape(self.name, 300)}: the server does not accept Range requests, so "
                "the file can only be read whole (pthfmt.load and validate do that; or "
                "download it first)"
            )
        try:
            self.file.seek(start)
            data = self.file.read(nbytes)
        except Exception as exc:
            raise _failed(f"reading {nbytes} bytes at offset {start} of", self.name, exc) from None
        return bytes(data)

    def read_many(self, ranges: list[tuple[int, int]]) -> Iterable[bytes]:
        """Each ``(start, nbytes)`` range's bytes, in order: :data:`CONCURRENCY` requests in
        flight where the fsspec file can fetch a range by itself (``_fetch_range``, each
        call one bounded, checked request), else one after another."""
        fetch = getattr(self.file, "_fetch_range", None)
        if fetch is None or len(ranges) < 2 or self.streaming:
            yield from (self.read(a, n) for a, n in ranges)
            return
        from concurrent.futures import ThreadPoolExecutor

        def one(r: tuple[int, int]) -> bytes:
            try:
                return bytes(fetch(r[0], r[0] + r[1]))
            except Exception as exc:
                what = f"reading {r[1]} bytes at offset {r[0]} of"
                raise _failed(what, self.name, exc) from None

        with ThreadPoolExecutor(min(CONCURRENCY, len(ranges))) as pool:
            yield from pool.map(one, ranges)

    def download(self, sink: _Sink) -> None:
        """The whole file from its start into ``sink``, in one request (fsspec's ``get_file``:
        for http(s), one GET whose body is read in large chunks inside the event loop)."""
        try:
            self.fs.get_file(self.fspath, sink)
        except PthError:
            raise
        except Exception as exc:
            raise _failed("downloading", self.name, exc) from None

    def identity(self) -> tuple[Any, ...]:
        try:
            self.fs.invalidate_cache(self.fspath)
            info = self.fs.info(self.fspath)
        except Exception as exc:
            raise _failed("checking", self.name, exc) from None
        return (info.get("size"), *_identity(info)[1:])

    def initial_identity(self) -> tuple[Any, ...]:
        return self._identity


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _can_seek(f: Any, size: int) -> bool:
    """Whether the fsspec file can seek (fsspec opens a streaming file, which cannot, when
    an HTTP server does not say it accepts byte ranges)."""
    try:
        f.seek(min(1, size))
        f.seek(0)
    except (ValueError, OSError):
        return False
    return True


def _tags(identity: tuple[Any, ...]) -> str:
    tags = [escape(str(t), 80) for t in identity[1:] if t != "None"]
    return f"tag {' / '.join(tags)}" if tags else "no tag"


def _identity(info: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("ETag", "etag", "Last-Modified", "mtime", "LastModified", "md5", "crc32c")
    return (info.get("size"), *(str(info.get(k)) for k in keys))


class FileObjectFetcher:
    """Ranged reads of a seekable file object, from where it stood when handed over."""

    def __init__(self, f: Any) -> None:
        self.file = f
        self.name = str(getattr(f, "name", None) or getattr(f, "path", None) or "<stream>")
        try:
            self.base = f.tell()
            self.size = f.seek(0, io.SEEK_END) - self.base
        except Exception as exc:
            raise _failed("seeking in", self.name, exc) from None
        if self.size < 0:
            raise RemoteError(f"{escape(self.name, 300)}: stands past its end")

    def read(self, start: int, nbytes: int) -> bytes:
        try:
            self.file.seek(self.base + start)
            data = self.file.read(nbytes)
        except Exception as exc:
            raise _failed(f"reading {nbytes} bytes at offset {start} of", self.name, exc) from None
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("file object must be opened in binary mode")
        return bytes(data)

    def read_many(self, ranges: list[tuple[int, int]]) -> Iterable[bytes]:
        return (self.read(a, n) for a, n in ranges)

    def identity(self) -> tuple[Any, ...]:
        try:
            return (self.file.seek(0, io.SEEK_END) - self.base,)
        except Exception as exc:
            raise _failed("seeking in", self.name, exc) from None

    def initial_identity(self) -> tuple[Any, ...]:
        return (self.size,)


# -- the source ----------------------------------------------------------------------------------
class RemoteSource(Source):
    """A :class:`Source` whose bytes are fetched on demand into a sparse temporary file.

    ``lazy=False`` (what ``Source(url)`` gives) fetches the whole file in one request; ``lazy=True``
    fetches nothing but what :meth:`ensure` is asked for (see :func:`plan`).
    """

    def __init__(self, f: Any, lazy: bool = False, progress: bool | None = None) -> None:
        fetcher: FsspecFetcher | FileObjectFetcher
        if isinstance(f, str):
            fetcher = FsspecFetcher(f)
            self.path: str | None = f
        else:
            fetcher = FileObjectFetcher(f)
            self.path = None
        self.fetcher = fetcher
        self.mapped = False
        self._whole: np.ndarray | None = None
        self._view: memoryview | None = None
        self.size = fetcher.size
        self._expect = fetcher.initial_identity()
        # what is fetched: sorted, disjoint [start, end) ranges, as two lists for bisect
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._lock = threading.RLock()
        self.fetched = 0  # bytes received
        self.requests = 0
        self.progress = sys.stderr.isatty() if progress is None else progress
        if self.size == 0:
            raise FormatError("empty file: not a torch checkpoint")
        self._open_cache()
        #: fetched on demand: a zip's storage records are located when first read
        self.lazy = lazy
        if not lazy:
            if isinstance(fetcher, FsspecFetcher):
                self._download(fetcher)  # one request for the whole body, Range or not
            else:
                self.ensure([(0, self.size)])

    def _download(self, fetcher: FsspecFetcher) -> None:
        """The whole file in one request (also the documented fallback for a server without
        Range)."""
        assert self._fd is not None
        self.requests += 1
        self.fetched += _stream_into(fetcher, self._fd, self.progress)
        self._add(0, self.size)
        self._same_file()

    def _open_cache(self) -> None:
        from .source import _Descriptor

        fd, _ = _tempfile()
        self._descriptor = _Descriptor(fd)
        self._fd: int | None = fd
        try:
            os.ftruncate(fd, self.size)
            self.buf = _mmap.mmap(fd, self.size, access=_mmap.ACCESS_READ)
        except (OSError, OverflowError, ValueError) as exc:
            raise RemoteError(
                f"no room for a {self.size}-byte sparse cache of {escape(self.fetcher.name, 300)}"
                f" ({escape(str(exc), 200)})"
            ) from None

    # -- what is there ------------------------------------------------------------------------
    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not fetched yet."""
        out: list[tuple[int, int]] = []
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(ends, start)  # the first fetched range ending after start
        pos = start
        while pos < end and i < len(starts) and starts[i] < end:
            if starts[i] > pos:
                out.append((pos, starts[i]))
            pos = max(pos, ends[i])
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def has(self, offset: int, nbytes: int) -> bool:
        return not self.missing(offset, offset + nbytes) if nbytes > 0 else True

    def _add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` fetched, merged with the ranges it touches."""
        starts, ends = self._starts, self._ends
        lo = bisect.bisect_left(ends, start)  # first range that ends at or after start
        hi = bisect.bisect_right(starts, end)  # ranges from lo to hi touch [start, end]
        if lo < hi:
            start, end = min(start, starts[lo]), max(end, ends[hi - 1])
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    # -- fetching -----------------------------------------------------------------------------
    def ensure(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch what is missing of these ``(offset, nbytes)`` ranges (clipped to the file):
        neighbours closer than :data:`GAP` in one request, then check the file is the same.
        Threads may call it at once (they take turns)."""
        with self._lock:
            self._ensure(ranges)

    def _ensure(self, ranges: Iterable[tuple[int, int]]) -> None:
        wanted = sorted(
            (max(0, o), min(self.size, o + n)) for o, n in ranges if n > 0 and o < self.size
        )
        spans: list[tuple[int, int]] = []
        for a, b in wanted:
            if a >= b:
                continue
            if spans and a <= spans[-1][1] + GAP:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
        todo = [piece for a, b in spans for piece in self.missing(a, b)]
        todo = _join(todo)
        if not todo:
            return
        total = sum(b - a for a, b in todo)
        meter = _Progress(self.fetcher.name, total, self.progress)
        requests = [
            (at, min(MAX_REQUEST, b - at)) for a, b in todo for at in range(a, b, MAX_REQUEST)
        ]
        if len(requests) > 1 and all(n <= 1 << 20 for _, n in requests):
            bodies = self.fetcher.read_many(requests)  # many small ranges: concurrently
        else:
            bodies = (self.fetcher.read(a, n) for a, n in requests)  # (one body in memory)
        for (at, n), data in zip(requests, bodies):
            self._store(at, n, data)
            meter.add(n)
        meter.done()
        self._same_file()

    def _store(self, start: int, nbytes: int, data: bytes) -> None:
        self.requests += 1
        self.fetched += len(data)
        if len(data) != nbytes:
            raise RemoteError(
                f"{escape(self.fetcher.name, 300)}: asked for {nbytes} bytes at offset {start} "
                f"of the {self.size}-byte file, got {len(data)} (a short body, or a server "
                "that ignores Range requests)",
                offset=start,
            )
        assert self._fd is not None
        view = memoryview(data)
        done = 0
        while done < nbytes:
            done += os.pwrite(self._fd, view[done:], start + done)
        self._add(start, start + nbytes)

    def _same_file(self) -> None:
        now = self.fetcher.identity()
        if now != self._expect:
            raise RemoteError(
                f"{escape(self.fetcher.name, 300)} changed while it was being read (size "
                f"{self._expect[0]} and {_tags(self._expect)} when opened, size {now[0]} and "
                f"{_tags(now)} now)"
            )

    # -- reads that fetch first ---------------------------------------------------------------
    def array(self, offset: int, nbytes: int) -> np.ndarray:
        self.check(offset, nbytes, "data")
        self.ensure([(offset, nbytes)])
        return super().array(offset, nbytes)

    def copy(self, offset: int, nbytes: int) -> np.ndarray:
        self.check(offset, nbytes, "data")
        self.ensure([(offset, nbytes)])
        return super().copy(offset, nbytes)

    def bytes(self, offset: int, nbytes: int) -> bytes:
        self.check(offset, nbytes, "data")
        self.ensure([(offset, nbytes)])
        return super().bytes(offset, nbytes)

    def __repr__(self) -> str:
        return (
            f"<RemoteSource {escape(self.fetcher.name, 200)}: {self.size} bytes, "
            f"{self.fetched} fetched in {self.requests} requests>"
        )


class _Sink:
    """Where a whole-file download is written: ``fd`` from offset 0, refused at the first
    byte past the size the server declared (what fsspec's ``get_file`` writes to)."""

    def __init__(self, fd: int, size: int, name: str, meter: _Progress) -> None:
        self.fd, self.size, self.name, self.meter = fd, size, name, meter
        self.pos = 0

    def write(self, data: bytes) -> int:
        if self.pos + len(data) > self.size:
            raise RemoteError(
                f"{escape(self.name, 300)}: the body runs past the {self.size} bytes "
                "the server declared (the file changed?)"
            )
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.pos + done)
        self.pos += done
        self.meter.add(done)
        return done

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:  # (fsspec tells a file object by read/tell/close)
        raise io.UnsupportedOperation("write-only")

    def close(self) -> None:
        pass


def _stream_into(fetcher: FsspecFetcher, fd: int, progress: bool) -> int:
    """Write the whole remote file into ``fd`` from offset 0 in one request; refused past
    the size the server declared, or at a short body."""
    meter = _Progress(fetcher.name, fetcher.size, progress)
    sink = _Sink(fd, fetcher.size, fetcher.name, meter)
    fetcher.download(sink)
    meter.done()
    if sink.pos != fetcher.size:
        raise RemoteError(
            f"{escape(fetcher.name, 300)}: the body ended after {sink.pos} of the "
            f"{fetcher.size} bytes the server declared (a short body)"
        )
    return sink.pos


def download(url: str, fd: int, progress: bool | None = None) -> int:
    """Fetch the whole file at ``url`` into the open file ``fd`` (from offset 0), checked as
    every remote read is (declared size, identity after the body); returns its size."""
    fetcher = FsspecFetcher(url)
    if fetcher.size == 0:
        raise FormatError(f"{escape(url, 300)}: empty file: not a torch checkpoint")
    size = _stream_into(fetcher, fd, sys.stderr.isatty() if progress is None else progress)
    now = fetcher.identity()
    if now != fetcher.initial_identity():
        raise RemoteError(f"{escape(url, 300)} changed while it was being downloaded")
    return size


def _tempfile() -> tuple[int, str]:
    fd, name = tempfile.mkstemp(prefix="pthfmt-remote-", dir=os.environ.get("PTHFMT_CACHE_DIR"))
    os.unlink(name)  # gone with the last descriptor
    return fd, name


def _join(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(pieces):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class _Progress:
    """A one-line progress meter on stderr, shown once a download has taken over a second."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.got, self.start, self.shown = 0, time.monotonic(), False

    def add(self, n: int) -> None:
        self.got += n
        if self.enabled and time.monotonic() - self.start > 1.0:
            self.shown = True
            pct = 100 * self.got // max(self.total, 1)
            sys.stderr.write(
                f"\rfetching {escape(self.name, 80)}: {self.got >> 20} of "
                f"{self.total >> 20} MiB ({pct}%)"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- plans: what each format's reader looks at while it opens a file -----------------------------
def plan(src: RemoteSource, all_headers: bool = False) -> list[tuple[int, int]]:
    """Fetch what opening ``src`` reads (format by format); the whole file where no plan
    says less.  A file a plan cannot make sense of is left for the reader to refuse, with
    the regions that the reader will look at fetched.  A zip's stored tensor records are
    located when first read (their local header fetched with their data), unless
    ``all_headers``.  Returns the ``(offset, nbytes)`` of the tensor data it knows it left out
    (see :func:`all_but_data`)."""
    src.ensure([(0, HEAD)])
    from .reader import detect_format

    head = bytes(src.buf[:HEAD])
    kind = detect_format(head, src.size)
    if kind == "zip":
        src.ensure([(src.size - TAIL, TAIL)])
        return _plan_zip(src, all_headers)
    if kind == "safetensors":
        (n,) = struct.unpack_from("<Q", head)
        src.ensure([(0, 8 + n)])
    elif head[:1] == b"\x80" and src.size > 2:
        return _plan_legacy(src)
    elif len(head) >= 262 and head[257:262] == b"ustar":
        src.ensure([(0, src.size)])
    return []


def all_but_data(src: RemoteSource) -> int:
    """Fetch every byte of ``src`` but its tensor data (stored storage records of a zip,
    storage sections of a legacy file): what the validator reads without ``data``.  Returns
    the bytes left out; a format whose tensor data the plan cannot tell is fetched whole."""
    payloads = _join([(a, a + n) for a, n in plan(src, all_headers=True)])
    rest, pos = [], 0
    for a, b in payloads:
        if a > pos:
            rest.append((pos, a - pos))
        pos = max(pos, b)
    rest.append((pos, src.size - pos))
    src.ensure(rest)
    return sum(b - a for a, b in payloads)


def _plan_zip(src: RemoteSource, all_headers: bool) -> list[tuple[int, int]]:
    from .formats.zip import structs as zs
    from .formats.zip.reader import ZipArchive

    size = src.size
    tail = max(0, size - TAIL)
    pos = _find_eocd(src, tail)
    if pos < 0 and tail > 0:
        tail = max(0, size - _EOCD_SEARCH)
        src.ensure([(tail, size - tail)])
        pos = _find_eocd(src, tail)
    if pos < 0:
        return []  # the reader says the end record is missing
    end = zs.EOCD.struct.unpack_from(src.buf, pos)
    cd_offset, cd_size = end[zs.EOCD_DIRECTORY_OFFSET], end[zs.EOCD_DIRECTORY_SIZE]
    loc = pos - zs.ZIP64_LOCATOR.size
    if loc >= 0:
        src.ensure([(loc, zs.ZIP64_LOCATOR.size)])
        if src.buf[loc : loc + 4] == zs.ZIP64_LOCATOR.signature:
            z64 = zs.ZIP64_LOCATOR.struct.unpack_from(src.buf, loc)[zs.LOC_ZIP64_OFFSET]
            if z64 + zs.ZIP64_EOCD.size > size:
                return []
            src.ensure([(z64, zs.ZIP64_EOCD.size)])
            fields = zs.ZIP64_EOCD.struct.unpack_from(src.buf, z64)
            cd_offset = fields[zs.Z64_DIRECTORY_OFFSET]
            cd_size = fields[zs.Z64_DIRECTORY_SIZE]
    if cd_offset + cd_size > size:
        return []
    src.ensure([(cd_offset, cd_size)])
    try:
        archive = ZipArchive(src)
    except PthError:
        return []  # the reader raises the same error from the same bytes
    return _plan_zip_records(src, archive, all_headers)


def _find_eocd(src: RemoteSource, lo: int) -> int:
    """The zip reader's own rule: the last end-record signature that fits, from ``lo``."""
    from .formats.zip.structs import EOCD

    size = src.size
    lo = max(lo, size - EOCD.size - 0xFFFF)
    assert EOCD.signature is not None
    pos = int(src.buf.rfind(EOCD.signature, lo))
    while pos >= 0 and pos + EOCD.size > size:
        pos = int(src.buf.rfind(EOCD.signature, lo, pos))
    return pos


def _plan_zip_records(src: RemoteSource, archive: Any, all_headers: bool) -> list[tuple[int, int]]:
    """The local headers (one round of requests: the header, its name and room for torch's
    alignment padding; a second for longer extra fields) and the data of every record that is
    not a stored tensor (``data.pkl``, ``version``, TorchScript code ...); a stored tensor's
    header too when ``all_headers``.  Returns the stored tensors' data ranges it knows."""
    from .formats.contract import is_tensor_record
    from .formats.zip import structs as zs
    from .formats.zip.reader import STORED

    local = zs.LOCAL
    size = src.size
    entries = [e for e in archive.entries if e.header_offset + local.size <= size]
    if not all_headers:  # (fetched with the data, when a tensor is read)
        entries = [e for e in entries if not (is_tensor_record(e.name) and e.method == STORED)]
    src.ensure(
        (e.header_offset, local.size + len(e.name.encode()) + _LOCAL_EXTRA_GUESS) for e in entries
    )
    more: list[tuple[int, int]] = []
    data: list[tuple[int, int]] = []
    tensors: list[tuple[int, int]] = []
    for e in entries:
        head = local.struct.unpack_from(src.buf, e.header_offset)
        if head[zs.LH_SIGNATURE] != local.signature:
            continue
        start = e.header_offset + local.size
        stop = start + head[zs.LH_NAME_LENGTH] + head[zs.LH_EXTRA_LENGTH]
        more.append((start, stop - start))
        tensor = is_tensor_record(e.name) and e.method == STORED
        if stop + e.csize <= size:
            (tensors if tensor else data).append((stop, e.csize))
    src.ensure(more)
    src.ensure(data)
    return tensors


def _plan_legacy(src: RemoteSource) -> list[tuple[int, int]]:
    """The five pickles (each fetched in growing windows until a scan finds its STOP), then
    each storage's 8-byte element count."""
    from .formats import legacy
    from .formats.contract import Options
    from .model.device import location_mapper
    from .model.storage import StorageTable
    from .torch.handlers import TorchHandlers

    pos = 0
    ends = []
    for _ in range(5):
        stop = _pickle_end(src, pos)
        if stop is None:
            src.ensure([(0, src.size)])  # let the reader say what is wrong, from real bytes
            return []
        ends.append(stop)
        pos = stop
    opts = Options(location_mapper(None), eager=False, mmap=False)
    plain = TorchHandlers(StorageTable(opts.mapper, lambda info: None), eager=False, mmap=False)
    try:
        _, main_end, table = legacy._unpickle_main(src, ends[2], opts, False, None)
        keys, pos = legacy._header(src, main_end, plain, "legacy storage keys")
    except PthError:
        return []
    counts: list[tuple[int, int, int, int]] = []
    payloads: list[tuple[int, int]] = []
    for raw in keys if isinstance(keys, list) else []:
        key = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        info = table.infos.get(key) if isinstance(key, str) else None
        if info is None or pos + 8 > src.size:
            break
        counts.append((pos, 8, table.count_unit(key), info.nbytes))
        payloads.append((pos + 8, min(info.nbytes, src.size - pos - 8)))
        pos += 8 + info.nbytes
    src.ensure((at, 8) for at, *_ in counts)
    for at, _, unit, nbytes in counts:  # the sections lie where the declarations say?
        if struct.unpack_from("<q", src.buf, at)[0] * unit != nbytes:
            return []  # no: where the data is cannot be told without reading it
    return payloads


def _pickle_end(src: RemoteSource, start: int) -> int | None:
    """Where the pickle at ``start`` ends, fetching from ``start`` in doubling windows."""
    from .pickle.scan import scan_pickle

    window = 1 << 12
    while True:
        end = min(src.size, start + window)
        src.ensure([(start, end - start)])
        found = scan_pickle(src.buf, start, end)
        if found.end is not None:
            return found.end
        if end >= src.size:
            return None
        window *= 4
