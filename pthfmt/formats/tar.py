"""The pre-0.4 tar format: ``torch.save`` of torch 0.1 to 0.3 (read only).

An uncompressed tar archive (torch wrote it with ``tarfile`` in PAX format) of four members,
written in this order and read by torch in the order ``storages``, ``tensors``, ``pickle``::

    sys_info   pickle({'protocol_version': 1000, 'little_endian': ..., 'type_sizes': {...}})
               (never read by torch; optional here)
    pickle     the object; its persistent ids are tensor or storage keys (``str(_cdata)``,
               looked up as ``int(pid)``) or ``(cls, source_file, source)`` for an nn.Module
               class, which pthfmt refuses
    tensors    pickle(num_tensors), then per tensor:
                 pickle((tensor_key, storage_key, tensor_class))
                 <i ndim, 4 padding bytes, ndim x <q size, ndim x <q stride, <q storage_offset
    storages   pickle(num_storages), then per storage:
                 pickle((key, location, storage_class)), <q element count, count x itemsize
                 bytes (always little-endian)
               then pickle([(view_key, root_key, offset, numel), ...]): storages that are
               slices of another (in elements of the root's type)

The members are parsed here (ustar headers, PAX ``x``/``g`` records, GNU long names) rather
than with :mod:`tarfile`, so that every offset is checked against the file, the archive is
scanned in linear time, and storage bytes stay where they are: an mmap load views them in the
mapped file.  Pickle offsets in errors are absolute file offsets; ``record`` names the member.

pthfmt is stricter than torch where torch would silently pick one of two readings or read
memory the file does not hold: a member name or a key that occurs twice, a count that
disagrees with the member's length, bytes after the last item of a member, and a tensor that
runs past its storage (torch's ``set_`` grows the storage with uninitialised memory) are
refused.
"""

from __future__ import annotations

import copy
import math
import struct
from typing import Any

import numpy as np

from ..errors import CorruptError, FormatError, PthError, UnsafePickleError, UnsupportedError
from ..model.storage import StorageSlice, StorageTable, StorageType, StoredReader
from ..model.stub import StubType
from ..model.tensor import INTP_MAX, MAX_NDIM, StorageInfo, TensorRef
from ..pickle.machine import Unpickler
from ..source import Source
from ..text import quoted
from ..torch.handlers import TorchHandlers
from .contract import Options, Parsed, Unknown

__all__ = ["read_tar", "TarMember", "tar_members"]

BLOCK = 512
_COUNT = struct.Struct("<q")
_NDIM = struct.Struct("<i4x")
_REGULAR = (b"0", b"\0", b"7")  # file, old-style file, contiguous file
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos
_UNSIGNED = struct.Struct("148B8x356B")
_SIGNED = struct.Struct("148b8x356b")
_POSIX_MAGIC = b"ustar\x0000"
_REQUIRED = ("storages", "tensors", "pickle")


class TarMember:
    """One tar member: its name, type flag and where its data lies in the file."""

    __slots__ = ("header", "name", "offset", "size", "type")

    def __init__(self, name: str, type_: bytes, header: int, offset: int, size: int) -> None:
        self.name, self.type, self.header, self.offset, self.size = (
            name,
            type_,
            header,
            offset,
            size,
        )

    @property
    def regular(self) -> bool:
        return self.type in _REGULAR and not (self.type == b"\0" and self.name.endswith("/"))

    @property
    def end(self) -> int:
        return self.offset + self.size

    def __repr__(self) -> str:
        return (
            f"TarMember({self.name!r}, type={self.type!r}, offset={self.offset}, size={self.size})"
        )


# -- the archive ---------------------------------------------------------------------------------


def _text(raw: bytes) -> str:
    """A NUL-terminated header field as text (undecodable bytes kept as surrogates)."""
    nul = raw.find(b"\0")
    return (raw if nul < 0 else raw[:nul]).decode("utf-8", "surrogateescape")


def _number(raw: bytes, what: str, pos: int) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if raw[0] & 0x80:
        if raw[0] != 0x80:
            raise CorruptError(f"tar header at offset {pos}: negative {what}", offset=pos)
        return int.from_bytes(raw[1:], "big")
    nul = raw.find(b"\0")
    digits = (raw if nul < 0 else raw[:nul]).strip(b" ")
    if not digits:
        return 0
    if digits.strip(b"01234567"):
        raise CorruptError(
            f"tar header at offset {pos}: {what} {bytes(raw)!r} is not an octal number", offset=pos
        )
    return int(digits, 8)


def _pax(raw: bytes, pos: int) -> dict[str, str]:
    """PAX extended header records ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(raw) and raw[i] != 0:
        space = raw.find(b" ", i, i + 21)
        digits = raw[i:space] if space > i else b""
        if not digits.isdigit():
            raise CorruptError(
                f"PAX header at offset {pos}: record at byte {i} has no length", offset=pos
            )
        length = int(digits)
        stop = i + length
        if stop > len(raw) or stop <= space + 1 or raw[stop - 1] != 0x0A:
            raise CorruptError(
                f"PAX header at offset {pos}: record at byte {i} of length "
                f"{length} does not end in a newline inside the header",
                offset=pos,
            )
        key, eq, value = raw[space + 1 : stop - 1].partition(b"=")
        if not eq:
            raise CorruptError(
                f"PAX header at offset {pos}: record at byte {i} has no '='", offset=pos
            )
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i = stop
    return out


def checksum_ok(header: bytes, pos: int = 0) -> bool:
    """Whether a 512-byte header's checksum field matches its bytes (as ``tarfile`` sums
    them: unsigned or signed, the field itself counted as spaces)."""
    stored = _number(header[148:156], "checksum", pos)
    return stored in (256 + sum(_UNSIGNED.unpack(header)), 256 + sum(_SIGNED.unpack(header)))


def tar_members(src: Source) -> list[TarMember]:
    """Every member of the archive, in order, each checked to lie inside the file."""
    buf, size = src.buf, src.size
    members: list[TarMember] = []
    global_pax: dict[str, str] = {}
    local_pax: dict[str, str] = {}
    long_name: str | None = None
    pos = 0
    while True:
        if pos + BLOCK > size:
            rest = bytes(buf[pos:size])
            if rest.strip(b"\0"):
                raise CorruptError(
                    f"tar header at offset {pos} is truncated: the file ends "
                    f"{size - pos} bytes into it",
                    offset=pos,
                )
            break  # end of file without an end marker
        header = bytes(buf[pos : pos + BLOCK])
        if not header.strip(b"\0"):
            break  # end-of-archive marker
        if not checksum_ok(header, pos):
            raise CorruptError(
                f"tar header at offset {pos} (member {_text(header[:100])!r}) has a bad checksum",
                offset=pos,
            )
        flag = header[156:157]
        name = _text(header[:100])
        if header[257:265] == _POSIX_MAGIC:
            prefix = _text(header[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        length = _number(header[124:136], "size", pos)
        data = pos + BLOCK
        if flag in (b"x", b"g", b"L", b"K"):
            if length > size - data:
                raise CorruptError(
                    f"tar extended header at offset {pos} of {length} bytes "
                    f"runs past the end of the {size}-byte file",
                    offset=pos,
                )
            raw = bytes(buf[data : data + length])
            if flag == b"x":
                local_pax = _pax(raw, pos)
            elif flag == b"g":
                global_pax.update(_pax(raw, pos))
            elif flag == b"L":
                long_name = _text(raw)
            pos = data + -(-length // BLOCK) * BLOCK
            continue
        pax = {**global_pax, **local_pax}
        if long_name is not None:
            name = long_name
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            if not pax["size"].isdigit():
                raise CorruptError(
                    f"tar member {quoted(name)}: PAX size {pax['size']!r} is not a number",
                    record=name,
                    offset=pos,
                )
            length = int(pax["size"])
        local_pax, long_name = {}, None
        if flag == b"S" or any(k.startswith("GNU.sparse.") for k in pax):
            raise UnsupportedError(f"tar member {quoted(name)} is a sparse file", record=name)
        member = TarMember(name, flag, pos, data, length)
        members.append(member)
        if not member.regular and flag in (*_NO_DATA, b"\0"):
            pos = data  # tarfile skips no data for these
            continue
        if length > size - data:
            raise CorruptError(
                f"tar member {quoted(name)} of {length} bytes at offset {data} runs "
                f"past the end of the {size}-byte file",
                record=name,
                offset=data,
            )
        pos = data + -(-length // BLOCK) * BLOCK
        if pos > size:
            raise CorruptError(
                f"tar member {quoted(name)}: the file ends inside its padding (truncated archive)",
                record=name,
                offset=size,
            )
    return members


def _index(members: list[TarMember]) -> dict[str, TarMember]:
    found: dict[str, TarMember] = {}
    for member in members:
        if member.name not in (*_REQUIRED, "sys_info"):
            continue
        if member.name in found:
            raise FormatError(f"tar member {quoted(member.name)} occurs twice", record=member.name)
        if not member.regular:
            raise FormatError(
                f"tar member {quoted(member.name)} is not a regular file (type {member.type!r})",
                record=member.name,
            )
        found[member.name] = member
    for name in _REQUIRED:
        if name not in found:
            raise FormatError(
                f"tar member {quoted(name)} is missing: not a torch tar checkpoint", record=name
            )
    return found


# -- pickles -------------------------------------------------------------------------------------


class _TarHandlers(TorchHandlers):
    """TorchHandlers whose persistent ids are the tensor and storage keys of the archive.

    ``objects`` is ``None`` while the header pickles of ``storages`` and ``tensors`` are read
    (torch reads those without a ``persistent_load``).  Two pieces of torch 0.3 pickling are
    understood here: an nn.Module class travels as the persistent id
    ``(cls, source_file, source)`` (a stub with ``unknown="stub"``, else refused), and an
    ``nn.Parameter`` is ``Parameter(data)`` followed by ``BUILD`` with the Variable state
    ``(requires_grad, volatile, backward_hooks)``.
    """

    def __init__(
        self, table: StorageTable, *, eager: bool, mmap: bool, unknown: Unknown = "error"
    ) -> None:
        super().__init__(table, eager=eager, mmap=mmap, unknown=unknown)
        self.objects: dict[str, Any] | None = None

    def lenient(self) -> _TarHandlers:
        twin = copy.copy(self)  # same objects: the re-run resolves the same keys
        twin.eager = twin.mmap = False
        twin._globals = {}
        return twin

    def persistent_load(self, pid: Any) -> Any:
        if self.objects is None:
            raise FormatError(f"persistent id {_short(pid)} in a header pickle")
        if isinstance(pid, (tuple, list)):
            tagged = (
                len(pid) > 1
                and isinstance(pid[0], (str, bytes))
                and pid[0] in ("module", b"module")
            )
            cls = pid[1] if tagged else pid[0] if pid else None
            if self.unknown == "stub" and isinstance(cls, StubType):
                return cls
            raise UnsafePickleError(
                f"persistent id {_short(pid)} is a pickled class (an "
                f"nn.Module source reference); pthfmt loads no classes"
            )
        key = _key(pid, "persistent id")
        hit = self.objects.get(key)
        if hit is None:
            raise FormatError(
                f"persistent id {_short(pid)} names no tensor of member "
                f"'tensors' and no storage of member 'storages'"
            )
        return hit

    def build(self, obj: Any, state: Any) -> None:
        if (
            isinstance(obj, (TensorRef, np.ndarray))
            and isinstance(state, tuple)
            and len(state) == 3
            and isinstance(state[0], bool)
            and isinstance(state[1], bool)
            and (state[2] is None or isinstance(state[2], dict))
        ):
            if isinstance(obj, TensorRef):  # torch's Tensor.__setstate__, legacy
                obj.requires_grad = state[0]
            return
        super().build(obj, state)


def _key(value: Any, what: str) -> str:
    """A tensor or storage key: torch's ``int(saved_id)``, as the canonical decimal string."""
    if isinstance(value, (str, bytes)):
        try:
            return str(int(value))
        except ValueError:
            pass
    elif type(value) is int:
        return str(value)
    raise FormatError(f"{what} {_short(value)} is not an integer key")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _count(value: Any, what: str, member: TarMember, pos: int) -> int:
    if type(value) is not int or value < 0:
        raise FormatError(
            f"member {quoted(member.name)}: {what} {_short(value)} is not a non-negative int",
            record=member.name,
            offset=pos,
        )
    return value


def _entry(value: Any, n: int, what: str, member: TarMember, pos: int) -> tuple[Any, ...]:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise FormatError(
            f"member {quoted(member.name)}: {what} {_short(value)} is not a {n}-tuple",
            record=member.name,
            offset=pos,
        )
    return tuple(value)


class _Reader:
    """Reads the pickles and raw blocks of one member, tracking the position."""

    def __init__(self, src: Source, member: TarMember, handlers: _TarHandlers) -> None:
        self.src, self.member, self.handlers = src, member, handlers
        self.pos = member.offset

    @property
    def left(self) -> int:
        return self.member.end - self.pos

    def pickle(self) -> Any:
        u = Unpickler(
            self.src.buf,
            self.handlers,
            start=self.pos,
            end=self.member.end,
            record=self.member.name,
        )
        value = u.load()
        self.pos = u.pos
        return value

    def need(self, nbytes: int, what: str) -> int:
        if nbytes > self.left:
            raise CorruptError(
                f"member {quoted(self.member.name)}: {what} ({nbytes} bytes) runs "
                f"past the end of the member ({self.left} bytes left)",
                record=self.member.name,
                offset=self.pos,
            )
        at = self.pos
        self.pos += nbytes
        return at

    def ran_out(self, done: int, total: int, what: str) -> None:
        if self.left <= 0:
            raise CorruptError(
                f"member {quoted(self.member.name)} ends after {done} of the {total} {what} "
                "it declares",
                record=self.member.name,
                offset=self.pos,
            )

    def finish(self, what: str) -> None:
        if self.left:
            raise CorruptError(
                f"member {quoted(self.member.name)} has {self.left} bytes after "
                f"{what} (does a count disagree with the data?)",
                record=self.member.name,
                offset=self.pos,
            )


def _read_storages(r: _Reader, table: StorageTable, objects: dict[str, Any]) -> None:
    name = r.member.name
    total = _count(r.pickle(), "storage count", r.member, r.member.offset)
    reader = StoredReader(r.src, False)
    for i in range(total):
        r.ran_out(i, total, "storages")
        at = r.pos
        key, tag, stype = _entry(r.pickle(), 3, "storage header", r.member, at)
        key = _key(key, "storage key")
        if key in objects:
            raise FormatError(
                f"member {quoted(name)}: storage key {key} occurs twice", record=name, offset=at
            )
        if isinstance(tag, bytes):
            tag = tag.decode("ascii", "replace")
        if not isinstance(stype, StorageType):
            raise FormatError(
                f"member {quoted(name)}: storage {key}: {_short(stype)} is not a storage class",
                record=name,
                offset=at,
            )
        if stype.dtype is None:
            raise FormatError(
                f"member {quoted(name)}: storage {key} is an {stype.name}, which has "
                f"no element type (torch cannot load it either)",
                record=name,
                offset=at,
            )
        (count,) = _COUNT.unpack_from(r.src.buf, r.need(8, f"element count of storage {key}"))
        if count < 0:
            raise CorruptError(
                f"member {quoted(name)}: storage {key} has a negative element count {count}",
                record=name,
                offset=r.pos - 8,
            )
        data = r.need(
            count * stype.dtype.itemsize, f"storage {key} of {count} {stype.dtype.name} elements"
        )
        try:
            info = table.declare(key, stype, tag, count)
        except FormatError as exc:
            raise exc.locate(record=name, offset=at) from None
        info.record = name
        info.offset = data
        info.attach(reader)
        objects[key] = info
    at = r.pos
    views = r.pickle()
    if not isinstance(views, (list, tuple)):
        raise FormatError(
            f"member {quoted(name)}: the storage view list is a {type(views).__name__}, not a list",
            record=name,
            offset=at,
        )
    for item in views:
        view_key, root_key, start, numel = _entry(item, 4, "storage view", r.member, at)
        view_key = _key(view_key, "storage view key")
        root_key = _key(root_key, "storage view root key")
        root = objects.get(root_key)
        if not isinstance(root, (StorageInfo, StorageSlice)):
            raise FormatError(
                f"member {quoted(name)}: storage view {view_key} is a slice of "
                f"storage {root_key}, which the member does not hold",
                record=name,
                offset=at,
            )
        if view_key in objects:
            raise FormatError(
                f"member {quoted(name)}: storage view key {view_key} is also the key of a storage",
                record=name,
                offset=at,
            )
        if isinstance(root, StorageSlice):
            base, first, limit = root.base, root.start, root.numel
        else:
            base, first, limit = root, 0, root.numel
        if (
            type(start) is not int
            or type(numel) is not int
            or start < 0
            or numel < 0
            or start + numel > limit
        ):
            raise CorruptError(
                f"member {quoted(name)}: storage view {view_key} "
                f"[{_short(start)}:+{_short(numel)}] does not fit the "
                f"{limit} elements of storage {root_key}",
                record=name,
                offset=at,
            )
        objects[view_key] = StorageSlice(base, first + start, numel)
    r.finish("the storage view list")


def _check_empty_view(
    storage: StorageInfo | StorageSlice,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    key: str,
    name: str,
    at: int,
) -> None:
    """What ``check_view`` leaves open for a view with no elements: numpy's own limits.

    A non-empty view is bounded by its storage; an empty one may declare any sizes and
    strides, and numpy refuses (with ``ValueError``) those it cannot represent.
    """
    if 0 not in shape:
        return
    info = storage.base if isinstance(storage, StorageSlice) else storage
    itemsize = info.dtype.itemsize if info.dtype else 1
    if math.prod(n for n in shape if n) * itemsize > INTP_MAX or any(
        abs(s) * itemsize > INTP_MAX for s in stride
    ):
        raise CorruptError(
            f"member {quoted(name)}: empty tensor {key} has sizes {shape} and strides "
            f"{stride} that no array can have",
            record=name,
            offset=at,
        )


def _read_tensors(r: _Reader, handlers: _TarHandlers, objects: dict[str, Any]) -> None:
    name = r.member.name
    buf = r.src.buf
    total = _count(r.pickle(), "tensor count", r.member, r.member.offset)
    for i in range(total):
        r.ran_out(i, total, "tensors")
        at = r.pos
        key, storage_key, _tensor_class = _entry(r.pickle(), 3, "tensor header", r.member, at)
        key = _key(key, "tensor key")
        if key in objects:
            raise FormatError(
                f"member {quoted(name)}: tensor key {key} occurs twice or is also a storage key",
                record=name,
                offset=at,
            )
        if storage_key is None:
            raise FormatError(
                f"member {quoted(name)}: tensor {key} has no storage (torch cannot load it either)",
                record=name,
                offset=at,
            )
        storage_key = _key(storage_key, "tensor storage key")
        storage = objects.get(storage_key)
        if not isinstance(storage, (StorageInfo, StorageSlice)):
            raise FormatError(
                f"member {quoted(name)}: tensor {key} views storage {storage_key}, "
                f"which member 'storages' does not hold",
                record=name,
                offset=at,
            )
        (ndim,) = _NDIM.unpack_from(buf, r.need(8, f"dimension count of tensor {key}"))
        if ndim < 0:
            raise CorruptError(
                f"member {quoted(name)}: tensor {key} has {ndim} dimensions",
                record=name,
                offset=r.pos - 8,
            )
        meta = r.need(
            8 * (2 * ndim + 1), f"sizes, strides and offset of tensor {key} ({ndim} dimensions)"
        )
        if ndim > MAX_NDIM:  # (before any product of sizes: that would be quadratic)
            raise UnsupportedError(
                f"member {quoted(name)}: tensor {key} has {ndim} dimensions "
                f"(numpy allows {MAX_NDIM})",
                record=name,
                offset=at,
            )
        shape = struct.unpack_from(f"<{ndim}q", buf, meta)
        stride = struct.unpack_from(f"<{ndim}q", buf, meta + 8 * ndim)
        (offset,) = _COUNT.unpack_from(buf, meta + 16 * ndim)
        _check_empty_view(storage, shape, stride, key, name, at)
        try:
            objects[key] = handlers.make_tensor(storage, None, offset, shape, stride, False)
        except PthError as exc:
            raise exc.locate(record=name, offset=at) from None
    r.finish("the last tensor")


def read_tar(src: Source, opts: Options) -> Parsed:
    members = tar_members(src)
    found = _index(members)
    table = StorageTable(opts.mapper, lambda info: None)
    handlers = _TarHandlers(table, eager=opts.eager, mmap=opts.mmap, unknown=opts.unknown)

    sys_info = None
    if "sys_info" in found:
        r = _Reader(src, found["sys_info"], handlers)
        sys_info = r.pickle()
        if not isinstance(sys_info, dict):
            raise FormatError(
                f"member 'sys_info' is a {type(sys_info).__name__}, not a dict", record="sys_info"
            )
        r.finish("sys_info")

    objects: dict[str, Any] = {}
    _read_storages(_Reader(src, found["storages"], handlers), table, objects)
    _read_tensors(_Reader(src, found["tensors"], handlers), handlers, objects)

    handlers.objects = objects
    r = _Reader(src, found["pickle"], handlers)
    obj = r.pickle()
    r.finish("the object pickle's STOP")

    version = sys_info.get("protocol_version") if sys_info else None
    return Parsed(
        format="tar",
        obj=obj,
        storages=table.infos,
        records=[m.name for m in members],
        byteorder="little",
        version=str(version) if type(version) is int else None,
        sys_info=sys_info,
    )
