"""Writing an output file atomically, and the two adapters between files and write functions.

:func:`write_atomically` is the one atomic-write helper: the bytes go to a temporary file
beside the target (created exclusively, the umask applying as for ``torch.save``), which is
flushed, fsynced and renamed over the target with ``os.replace``; the directory is fsynced so
that the rename is durable.  On any error (``KeyboardInterrupt`` and a full disk included) the
temporary file is removed and an existing target is untouched.

A writer is a function ``emit(write)`` that hands its bytes to ``write``: :func:`stream_writer`
makes ``write`` from a binary file object, :class:`Sink` makes a write-only file object from
``write`` (for code that wants a file, such as ``zipfile`` or :func:`pthfmt.save`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Write", "write_atomically", "stream_writer", "fsync_directory", "Sink"]

#: Takes bytes-like data (bytes, memoryview, uint8 arrays) and writes all of it.
Write = Callable[[Any], None]


def stream_writer(f: IO[bytes]) -> Write:
    """``f.write`` until every byte is taken (raw files may take part of a buffer)."""

    def write(data: Any) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = f.write(view)
            if n is None or n >= view.nbytes:
                return
            if n <= 0:
                raise OSError("the output accepted no bytes")
            view = view[n:]

    return write


def write_atomically(path: str, emit: Callable[[Write], None]) -> None:
    """Write through ``emit`` to a temporary file beside ``path``, then rename it over
    ``path`` (a symbolic link's target is replaced, the link kept)."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    directory = os.path.dirname(os.path.abspath(target))
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    while True:
        temp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, flags, 0o666)  # the umask applies, as for torch.save
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "wb", buffering=1 << 20) as out:
            emit(stream_writer(out))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):  # keep an existing file's permissions
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Sink:
    """A write-only, unseekable file object over a ``write`` function."""

    def __init__(self, write: Write) -> None:
        self._write = write

    def write(self, data: Any) -> int:
        self._write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass
