"""Where a checkpoint's bytes come from: a memory map of a file, or bytes read from a stream."""

from __future__ import annotations

import errno
import io
import mmap as _mmap
import os
import stat
from typing import IO, Any, Union

import numpy as np

from .errors import CorruptError, FormatError, LimitError
from .text import escape

__all__ = [
    "Source",
    "PREAD_FROM",
    "PathOrFile",
    "fresh_buffer",
    "is_remote",
    "out_of_memory",
    "open_regular",
    "file_kind",
]

PREAD_FROM = 1 << 20  # smaller copies come from the mapping (one call is cheaper)
_PREAD_CHUNK = 1 << 30
_HAVE_PREADV = hasattr(os, "preadv")

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]
_POPULATE = getattr(_mmap, "MAP_POPULATE", 0)


def out_of_memory(what: str) -> LimitError:
    """The error for an allocation the machine refused (``MemoryError`` or ``ENOMEM``)."""
    return LimitError(f"out of memory {what}")


def fresh_buffer(nbytes: int) -> np.ndarray:
    """A new writable ``uint8`` buffer that a copy is about to fill.

    Large ones are private anonymous mappings made with ``MAP_POPULATE`` where the platform
    has it: the kernel provides every page in one call instead of one page fault at a time
    while the copy runs (on virtual machines, where faulting fresh memory is slow and erratic,
    this is steadier).  The mapping is released with the last array that uses it.
    """
    # Measured against np.empty (huge pages: numpy advises them from 4 MiB) and against
    # MADV_HUGEPAGE + MADV_POPULATE_WRITE, 1 MiB-1 GiB buffers and pthfmt.load of a 1 GiB,
    # 327-tensor file (benchmarks/copy_alloc.py; figures in benchmarks/README.md, "Copy load").
    # Huge pages win where the process recently freed memory (a second load: 342-357 ms vs
    # 456-459 ms) and count more wins overall, but in a fresh process on these VMs new 2 MiB
    # pages are slow (likely backed by the host on first touch): load medians 1.23-1.37 s,
    # np.empty 0.43-0.82 s, MAP_POPULATE 0.46 s in both runs (0.45-0.53 s, 10 of 16 fresh
    # wins).  A fresh process is the command-line case and the benchmark's, so MAP_POPULATE
    # is kept for every size.
    if nbytes >= PREAD_FROM and _POPULATE:
        try:
            region = _mmap.mmap(-1, nbytes, flags=_mmap.MAP_PRIVATE | _POPULATE)
            return np.frombuffer(region, np.uint8)
        except OSError:  # out of memory: numpy below says so, or succeeds
            pass
    try:
        return np.empty(nbytes, np.uint8)
    except MemoryError:
        pass  # raised below, so that the MemoryError is not kept as its context
    raise out_of_memory(f"allocating {nbytes} bytes")


class Source:
    """The whole file as one buffer (``mmap`` when the file can be mapped, else ``bytes``).

    A URL (``https://...``, any fsspec URL) or a seekable file object that is not a local file
    makes a :class:`pthfmt.remote.RemoteSource` instead, which fetches the whole file unless
    told to fetch lazily (as :func:`pthfmt.open` does).
    """

    def __new__(cls, f: PathOrFile, *args: Any, **kwargs: Any) -> Source:
        if cls is Source and is_remote(f):
            from .remote import RemoteSource

            return super().__new__(RemoteSource)
        return super().__new__(cls)

    def __init__(self, f: PathOrFile) -> None:
        self.path: str | None = None
        self.mapped = False
        self._fd: int | None = None
        self._whole: np.ndarray | None = None
        self._view: memoryview | None = None
        if isinstance(f, str) and f.startswith("file://"):
            f = f[len("file://") :]
        if isinstance(f, (str, bytes, os.PathLike)):
            self.path = os.fspath(f) if not isinstance(f, bytes) else os.fsdecode(f)
            with open_regular(self.path) as fh:
                self.buf = self._map(fh)
        elif hasattr(f, "read"):
            self.buf = self._from_stream(f)
        else:
            raise TypeError(f"expected a path or a binary file object, not {type(f).__name__}")
        self.size = len(self.buf)
        if self.size == 0:
            raise FormatError("empty file: not a torch checkpoint")

    def _map(self, fh: Any) -> Any:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return b""
        self.mapped = True
        # A descriptor of our own for copies: pread moves bytes from the page cache straight
        # into the new buffer, without faulting in the mapping first (about 1.5x faster).
        self._descriptor = _Descriptor(os.dup(fh.fileno()))
        self._fd = self._descriptor.fd
        try:
            return _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise
        raise out_of_memory(f"mapping the {size}-byte file")

    def _from_stream(self, f: Any) -> Any:
        try:
            return self._read_stream(f)
        except MemoryError:
            pass
        raise out_of_memory("reading the file object into memory")

    def _read_stream(self, f: Any) -> Any:
        if isinstance(f, io.BytesIO):
            return f.getbuffer()[f.tell() :].tobytes()
        try:
            fileno = f.fileno()
            start = f.tell()
            if start == 0 and _is_regular(fileno):
                buf = self._map(f)
                if buf:
                    return buf
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            pass
        data = f.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("file object must be opened in binary mode")
        return bytes(data)

    def array(self, offset: int, nbytes: int) -> np.ndarray:
        """A read-only ``uint8`` view of ``nbytes`` at ``offset`` (zero copy)."""
        self.check(offset, nbytes, "data")
        # its own base (a memoryview), so that every storage is the root of its arrays
        return np.frombuffer(self.view[offset : offset + nbytes], np.uint8)

    @property
    def whole(self) -> np.ndarray:
        """The whole file as one read-only ``uint8`` array (made once; slices are cheap)."""
        if self._whole is None:
            self._whole = np.frombuffer(self.buf, np.uint8)
        return self._whole

    @property
    def view(self) -> memoryview:
        """The whole file as one read-only ``memoryview`` (made once)."""
        if self._view is None:
            self._view = memoryview(self.buf).toreadonly()
        return self._view

    def copy(self, offset: int, nbytes: int) -> np.ndarray:
        """A private, writable copy of ``nbytes`` at ``offset`` (its own base array, so that
        sharing between arrays means sharing a torch storage)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            self.check(offset, nbytes, "data")  # (raises)
        if nbytes < PREAD_FROM or self._fd is None or not _HAVE_PREADV:
            whole = self._whole if self._whole is not None else self.whole
            try:
                return whole[offset : offset + nbytes].copy()
            except MemoryError:
                pass
            raise out_of_memory(f"copying {nbytes} bytes at file offset {offset}")
        out = fresh_buffer(nbytes)
        view = memoryview(out.data)
        done = 0
        while done < nbytes:
            got = os.preadv(self._fd, [view[done : done + _PREAD_CHUNK]], offset + done)
            if got <= 0:
                raise CorruptError(f"file shrank while reading {nbytes} bytes at {offset}")
            done += got
        return out

    def bytes(self, offset: int, nbytes: int) -> bytes:
        self.check(offset, nbytes, "data")
        try:
            return bytes(self.buf[offset : offset + nbytes])
        except MemoryError:
            pass
        raise out_of_memory(f"copying {nbytes} bytes at file offset {offset}")

    def check(self, offset: int, nbytes: int, what: str, record: str | None = None) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise CorruptError(
                f"{what} of {nbytes} bytes at file offset {offset} runs past "
                f"the end of the {self.size}-byte file",
                record=record,
            )


def is_remote(f: Any) -> bool:
    """Whether ``f`` is a URL or a seekable file object that is not a local file."""
    if isinstance(f, str):
        if "://" not in f or f.startswith("file://"):
            return False
    elif isinstance(f, (bytes, os.PathLike, io.BytesIO)) or not hasattr(f, "seekable"):
        return False
    from .remote import is_remote_object, is_url

    return is_url(f) or is_remote_object(f)


class _Descriptor:
    """A file descriptor closed when the last array that may need it is gone."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _is_regular(fileno: int) -> bool:
    return stat.S_ISREG(os.fstat(fileno).st_mode)


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def open_regular(path: str) -> IO[bytes]:
    """``path`` opened for reading, refusing what is not a regular file.

    Every local file pthfmt reads is opened here.  A FIFO (opening one blocks until a
    writer comes, forever if none does), a device (``/dev/zero`` never ends) or a socket is
    a :class:`FormatError` (``file.not_regular``), told without blocking: the file is opened
    non-blocking and looked at before a byte is read.  A directory stays the
    ``IsADirectoryError`` that ``open`` gives.
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise FormatError(
                f"{escape(path, None)}: {file_kind(mode)}, not a regular file: never read",
                code="file.not_regular",
            )
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is (``a FIFO``...), from its ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"
