"""Opening checkpoints: format detection, :func:`open` (lazy) and :func:`load` (arrays)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .closing import Closing
from .errors import FormatError, LimitError, PthError
from .formats.contract import Options, Parsed, Unknown, not_a_checkpoint
from .formats.legacy import read_legacy
from .formats.torchzip import read_zip
from .gcpause import paused_gc
from .model.device import MapLocation, MapLocationError, location_mapper
from .model.tensor import StorageInfo, TensorRef
from .model.tree import walk
from .source import PathOrFile, Source, is_remote

__all__ = ["Checkpoint", "open", "load", "detect_format", "is_safetensors_head", "walk"]

_LEGACY_PREFIX = bytes.fromhex("8a0a6cfc9c46f9206aa85019")  # LONG1 10 <magic number>


def detect_format(head: bytes, size: int | None = None) -> str:
    """``zip``, ``safetensors``, ``tar``, ``legacy`` or ``unknown`` from a file's first 512
    bytes and (for safetensors) its ``size``.

    safetensors is told before legacy: its first byte is the low byte of the header length,
    which is ``0x80`` (a pickle's ``PROTO``) for one header length in 32 (they are multiples
    of 8), and a torch legacy file never has ``{`` at byte 8 (its magic number is there).  A
    safetensors head whose header length runs past the end of the file is told last, so that
    its reader names the truncation instead of "not a checkpoint"."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if size is not None and is_safetensors_head(head, size):
        return "safetensors"
    legacy = head[:1] == b"\x80" and len(head) > 2
    if len(head) >= 262 and head[257:262] == b"ustar" and (not legacy or _tar_header(head)):
        return "tar"
    if legacy:
        return "legacy"
    if size is not None and _truncated_safetensors(head):
        return "safetensors"  # (its reader says where the header ends)
    return "unknown"


def _truncated_safetensors(head: bytes) -> bool:
    """A safetensors head whose header runs past the end of the file (a truncated download):
    ``{`` at byte 8 after a length safetensors would read (text there is not: 8 bytes of
    text are a length of over 2**56)."""
    from .formats.safetensors import MAX_HEADER

    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_HEADER


def _tar_header(head: bytes) -> bool:
    """A legacy pickle whose bytes 257-262 spell ``ustar`` is still a legacy file unless its
    first 512 bytes are a tar header with a valid checksum (torch tries ``tarfile`` first and
    falls back to the legacy reader when that fails)."""
    from .formats.tar import checksum_ok

    try:
        return len(head) >= 512 and checksum_ok(head[:512])
    except PthError:
        return False


def _parse(src: Source, opts: Options) -> Parsed:
    try:
        with paused_gc():
            return _parse_format(src, opts)
    except MemoryError:
        pass  # raised below: the MemoryError's traceback (and what its frames hold) goes
    except MapLocationError as exc:
        raise exc.original from None
    raise LimitError(f"out of memory reading the {src.size}-byte file")


def _parse_format(src: Source, opts: Options) -> Parsed:
    kind = detect_format(bytes(src.buf[:512]), src.size)
    if kind == "zip":
        return read_zip(src, opts)
    if kind == "safetensors":
        from .formats.safetensors import read_safetensors_source

        return read_safetensors_source(src, opts)
    if kind == "legacy":
        return read_legacy(src, opts)
    if kind == "tar":
        from .formats.tar import read_tar

        return read_tar(src, opts)
    raise FormatError(not_a_checkpoint(src.size))


def is_safetensors_head(head: bytes, size: int) -> bool:
    """Whether a ``size``-byte file starting with ``head`` opens like safetensors: an 8-byte
    header length below the file's size, then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size


class Checkpoint(Closing):
    """An open checkpoint: its structure with lazy :class:`TensorRef` leaves.

    Use as a context manager or call :meth:`close`; ``TensorRef.numpy()`` reads data on
    demand (zero copy from the mapped file where the bytes lie uncompressed).
    """

    def __init__(self, src: Source, parsed: Parsed) -> None:
        self._src: Source | None = src
        self._path = src.path
        self._size = src.size
        self._parsed = parsed

    @property
    def format(self) -> str:
        """``"zip"``, ``"legacy"``, ``"tar"``, ``"torchscript"`` or ``"safetensors"``."""
        return self._parsed.format

    @property
    def obj(self) -> Any:
        return self._parsed.obj

    @property
    def storages(self) -> dict[str, StorageInfo]:
        return self._parsed.storages

    @property
    def records(self) -> list[str]:
        return self._parsed.records

    @property
    def byteorder(self) -> str:
        return self._parsed.byteorder

    @property
    def version(self) -> str | None:
        return self._parsed.version

    @property
    def archive_name(self) -> str | None:
        return self._parsed.archive_name

    @property
    def constants(self) -> Any:
        """A TorchScript archive's ``constants.pkl`` (tensor constants), else ``None``."""
        return self._parsed.constants

    @property
    def metadata(self) -> dict[str, str] | None:
        """A safetensors file's ``__metadata__`` (strings to strings), else ``None``."""
        return self._parsed.metadata

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def size(self) -> int:
        """The file's size in bytes (a remote file's, as its server declared it)."""
        return self._size

    @property
    def fetched(self) -> int | None:
        """Bytes fetched so far from a remote file (``None`` for a local one)."""
        return getattr(self._src, "fetched", None)

    @property
    def closed(self) -> bool:
        return self._src is None

    def tensors(self) -> Iterator[tuple[str, TensorRef]]:
        """``(key_path, TensorRef)`` in file order, each object visited once."""
        return walk(self._parsed.obj, leaves=(TensorRef, np.ndarray), want=_is_ref)

    def close(self) -> None:
        self._src = None

    def __repr__(self) -> str:
        return (
            f"<pthfmt.Checkpoint {self.format} {self.path or '<stream>'}: "
            f"{len(self.storages)} storages>"
        )


def _is_ref(value: Any) -> bool:
    return isinstance(value, TensorRef)


def _source(f: PathOrFile, lazy: bool) -> Source:
    """The :class:`Source` of ``f``.  A remote one (a URL, a seekable file object that is not
    a local file) fetches, when ``lazy``, what opening it reads and then only the storages
    asked for; else the whole file, in a few large requests."""
    if not is_remote(f):
        return Source(f)
    from .remote import RemoteSource, plan

    src = RemoteSource(f, lazy=lazy)
    if lazy:
        plan(src)
    return src


def open(
    f: PathOrFile, *, map_location: MapLocation = None, unknown: Unknown = "error"
) -> Checkpoint:
    """Open a checkpoint for inspection and lazy access (reads no tensor data).

    ``f`` is a path, a binary file object, or a URL (``https://``, ``s3://``, any fsspec URL;
    ``pip install 'pthfmt[remote]'``): a remote file is read in ranges, its directory and
    pickle now and each storage when its ``TensorRef.numpy()`` asks.

    ``unknown="stub"`` turns globals outside the allowlist (the classes of a pickled
    ``nn.Module``) into inert :class:`pthfmt.Stub` objects instead of refusing the file.
    """
    src = _source(f, lazy=True)
    opts = Options(location_mapper(map_location), eager=False, mmap=src.mapped, unknown=unknown)
    return Checkpoint(src, _parse(src, opts))


def load(
    f: PathOrFile,
    *,
    map_location: MapLocation = None,
    mmap: bool = False,
    unknown: Unknown = "error",
) -> Any:
    """Load a checkpoint: its Python structure with every tensor a ``numpy.ndarray``.

    Tensors sharing a torch storage come back as views of one buffer.  With ``mmap=True``
    arrays are read-only views of the mapped file wherever the bytes lie uncompressed.
    ``unknown="stub"`` turns globals outside the allowlist into inert :class:`pthfmt.Stub`
    objects (nothing is imported or called); the default refuses them.  A URL is fetched
    whole (into a sparse temporary file, in large ranged requests) before it is parsed.
    """
    src = _source(f, lazy=False)
    opts = Options(location_mapper(map_location), eager=True, mmap=mmap, unknown=unknown)
    return _parse(src, opts).obj
