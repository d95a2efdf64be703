"""``.npz`` files (numpy's zip of ``.npy`` arrays): the reader and the writer, without pickle.

- :func:`read_npz` adds an npz's arrays to a :class:`~pthfmt.formats.tensordata.Content`:
  stored members are views of the mapped file, compressed ones are read one array at a time
  when written; every ``.npy`` header is checked against the member's size first.
- :func:`write_npz` streams the arrays into an npz (``ZIP_STORED``, zip64 where needed).

Bounds (:func:`check_members`, :func:`_npy_header`): a member name given twice is refused (as
for ``.pth`` zips: which copy a reader sees depends on the reader); compressed members may
inflate at most :data:`~pthfmt.formats.zip.reader.DATA_RATIO`:1 (+1 MiB) each, and all of
them together at most that ratio of the file's size (+1 MiB), as the zip reader bounds
tensor records; ``.npy`` shapes must be at most 64 non-negative ints whose non-zero
dimensions hold at most 2**63 - 1 bytes.

``.npy`` cannot describe bfloat16, float8, complex32, float4 or ``bits`` types: their raw bits
are stored as unsigned integers of the same width (:data:`NPZ_RAW_DTYPES`) and the sidecar
member ``__pthfmt__`` (a 0-d string array holding a JSON object) names the dtype, the
non-tensor values and the file metadata, so that npz to torch restores them.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..atomic import Sink, Write
from ..errors import CorruptError, FormatError, LimitError, PthError, UnsupportedError
from ..model.device import Device
from ..model.dtypes import DTypeInfo, by_name, from_numpy
from ..model.tensor import INTP_MAX, MAX_NDIM, StorageInfo, TensorRef
from ..source import open_regular
from ..text import escape, quoted, short_repr
from . import strictjson
from .tensordata import (
    Content,
    Meta,
    TensorItem,
    Value,
    c_strides,
    count,
    is_big,
    listing,
    map_file,
)
from .zip.reader import DATA_RATIO

__all__ = ["NPZ_RAW_DTYPES", "SIDECAR", "ZIP_ERRORS", "check_members", "read_npz", "write_npz"]

#: torch dtypes whose ``.npy`` form is their raw bits as this unsigned integer type.
NPZ_RAW_DTYPES: Final[dict[str, str]] = {
    "bfloat16": "uint16", "complex32": "uint32", "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8", "float8_e4m3fnuz": "uint8", "float8_e5m2fnuz": "uint8",
    "float8_e8m0fnu": "uint8", "float4_e2m1fn_x2": "uint8", "bits8": "uint8",
    "bits16": "uint16", "bits1x8": "uint8", "bits2x4": "uint8", "bits4x2": "uint8",
}  # fmt: skip
#: Name of the ``.npz`` member holding dtypes, values and metadata (JSON).
SIDECAR: Final = "__pthfmt__"
#: What zipfile raises for damaged archives besides OSError (a name flagged UTF-8 that is
#: not: UnicodeDecodeError; an encrypted member: RuntimeError).
ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    EOFError,
    zlib.error,
    struct.error,
    UnicodeDecodeError,
    RuntimeError,
)

_Header = tuple[tuple[int, ...], bool, np.dtype[Any], int]


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _reason(exc: BaseException) -> str:
    """What numpy's or zipfile's error says, as a message may hold it: escaped and bounded
    (numpy quotes the member's header, which the file controls), without object addresses
    (numpy's header parser names ``<ast.Call object at 0x...>``: the same file would give
    a different message on every run)."""
    return escape(_ADDRESS.sub("", str(exc)), 300)


def read_npz(path: str, content: Content) -> None:
    """Add the arrays of an npz (and its sidecar's values and metadata) to ``content``."""
    with open_regular(path) as fh:
        if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # (an empty npz: no members)
            raise FormatError("not an npz file (no zip signature)")
    try:
        npz = np.load(path, allow_pickle=False)
    except ZIP_ERRORS as exc:
        raise FormatError(f"not an npz file ({_reason(exc)})") from None
    content.closers.append(npz.close)
    mm, size = map_file(path, content)
    members = [i for i in npz.zip.infolist() if not i.filename.endswith("/")]  # (not is_dir)
    check_members(members, size)
    sidecar: dict[str, Any] = {}
    if any(i.filename == SIDECAR + ".npy" for i in members):
        sidecar = _read_sidecar(npz, content)
    dtypes = sidecar.get("dtypes", {})
    skipped = []
    for info in members:
        if info.filename == SIDECAR + ".npy":
            continue
        if not info.filename.endswith(".npy"):
            skipped.append(f"{info.filename} (not an .npy array)")
            continue
        name = info.filename[:-4]
        try:
            item = _npz_item(npz, info, name, dtypes.get(name), mm, size)
        except PthError:
            raise
        except (ValueError, *ZIP_ERRORS) as exc:  # numpy's header parser, zipfile
            raise FormatError(f"member {quoted(info.filename)}: {_reason(exc)}") from None
        if isinstance(item, str):
            skipped.append(f"{name} ({item})")
        else:
            content.entries.append(item)
    if skipped:
        content.warnings.append(
            f"left out {count(skipped, 'npz member')} that cannot be a tensor: {listing(skipped)}"
        )
    _sidecar_entries(sidecar, content)


def _sidecar_entries(sidecar: dict[str, Any], content: Content) -> None:
    values = sidecar.get("values", {})
    if isinstance(values, dict):
        content.entries.extend(Value(str(k), v) for k, v in values.items())
    metadata = sidecar.get("metadata", {})
    if isinstance(metadata, dict):
        content.metadata.update(
            {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        )


_SLACK: Final = 1 << 20


def check_members(members: list[zipfile.ZipInfo], size: int) -> None:
    """Refuse a name given twice, a member whose header and data do not lie inside the file,
    and compressed members that inflate more than ``DATA_RATIO``:1 (+1 MiB) each or, all
    together, more than that ratio of the file."""
    seen: set[str] = set()
    total = 0
    for info in members:
        name = escape(info.filename)
        if info.filename in seen:
            raise FormatError(f"npz member '{name}' appears twice", record=name)
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise UnsupportedError(f"npz member '{name}' is encrypted", record=name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedError(
                f"npz member '{name}' uses zip compression method {info.compress_type} "
                "(numpy writes stored or deflated members)",
                record=name,
            )
        if not 0 <= info.header_offset <= size - 30 - info.compress_size:
            raise CorruptError(
                f"npz member '{name}' ({info.compress_size} bytes at offset "
                f"{info.header_offset}) does not lie inside the {size}-byte file",
                record=name,
            )
        if info.compress_type == zipfile.ZIP_STORED:
            continue
        if info.file_size > DATA_RATIO * info.compress_size + _SLACK:
            raise LimitError(
                f"npz member '{name}' inflates {info.file_size // max(info.compress_size, 1)}:1 "
                f"({info.file_size} bytes from {info.compress_size}), over pthfmt's "
                f"{DATA_RATIO}:1 bound (a decompression bomb?)",
                record=name,
            )
        total += info.file_size
        if total > DATA_RATIO * size + _SLACK:
            raise LimitError(
                f"the compressed npz members up to '{name}' inflate to {total} bytes, over "
                f"pthfmt's bound of {DATA_RATIO} times the {size}-byte file (a decompression "
                "bomb?)",
                record=name,
            )


def _check_shape(info: zipfile.ZipInfo, shape: Any, dtype: np.dtype[Any]) -> tuple[int, ...]:
    """An ``.npy`` shape: at most 64 non-negative ints whose non-zero dimensions fit numpy."""
    name = escape(info.filename)
    if not (
        isinstance(shape, tuple)
        and len(shape) <= MAX_NDIM
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        raise FormatError(f"member '{name}': bad shape {short_repr(shape)}", record=name)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n or 1
        if nbytes > INTP_MAX:
            raise FormatError(
                f"member '{name}': shape {short_repr(shape)} is too large: its non-zero "
                f"dimensions of {dtype} hold more than 2**63 - 1 bytes",
                record=name,
            )
    return shape


def _npy_header(npz: Any, info: zipfile.ZipInfo) -> _Header | str:
    """``(shape, fortran_order, dtype, header length)`` of an ``.npy`` member, checked
    against the member's size (so that no reader allocates what the file does not hold),
    or why it cannot be read."""
    fmt = np.lib.format
    with npz.zip.open(info) as fp:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            return f".npy version {version[0]}.{version[1]}"
        header = fp.tell()
    shape = _check_shape(info, shape, dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if header + nbytes > info.file_size:
        raise CorruptError(
            f"member {quoted(info.filename)}: {nbytes} bytes of {shape} {dtype} "
            f"do not fit its {info.file_size} bytes"
        )
    return shape, bool(fortran), dtype, header


def _read_sidecar(npz: Any, content: Content) -> dict[str, Any]:
    info = npz.zip.getinfo(SIDECAR + ".npy")
    try:
        parsed = _npy_header(npz, info)
        if isinstance(parsed, str) or parsed[0] != () or parsed[2].kind != "U":
            raise ValueError("not a 0-d string array")
        with npz.zip.open(info) as fp:
            array = np.lib.format.read_array(fp, allow_pickle=False)
        doc = strictjson.loads(str(array[()]))
        if not isinstance(doc, dict) or not isinstance(doc.get("dtypes", {}), dict):
            raise ValueError("not a JSON object")
        return doc
    except ZIP_ERRORS as exc:
        raise CorruptError(f"member {quoted(info.filename)}: {_reason(exc)}") from None
    except ValueError as exc:  # strict JSON refused it (a FormatError): not our sidecar
        content.warnings.append(
            f"the {SIDECAR!r} member is not pthfmt's sidecar ({_reason(exc)}): "
            "ignored, so raw-bit dtypes and values are not restored"
        )
        return {}


def _torch_dtype(torch_name: Any, dtype: np.dtype[Any]) -> DTypeInfo | str:
    """The torch dtype of a stored array (as the sidecar names it, or by its numpy dtype),
    or why it has none."""
    if torch_name is not None:
        row = by_name(str(torch_name))
        raw = NPZ_RAW_DTYPES.get(row.name) if row else None
        if row is None or raw is None or np.dtype(raw) != dtype.newbyteorder("="):
            return f"sidecar dtype {torch_name!r} does not fit the stored {dtype}"
        return row
    row = from_numpy(dtype) if dtype.fields is None else None
    if row is None or row.numpy.metadata:
        return f"dtype {dtype} has no torch equivalent"
    return row


def _restorer(torch_name: Any, target: np.dtype[Any]) -> Callable[[np.ndarray], np.ndarray]:
    def restore(array: np.ndarray) -> np.ndarray:
        if torch_name is None:
            return array
        if array.dtype.itemsize > 1 and is_big(array.dtype) != (sys.byteorder == "big"):
            array = array.byteswap().view(array.dtype.newbyteorder())  # raw bits: host order
        return array.view(target)

    return restore


def _stored_begin(info: zipfile.ZipInfo, header: int, nbytes: int, mm: Any, size: int) -> int:
    """The file offset of a stored member's array data, checked against the file."""
    off = info.header_offset
    local = bytes(mm[off : off + 30]) if off + 30 <= size else b""
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise CorruptError(f"member {quoted(info.filename)}: no local header at {off}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(off + 30 + name_len + extra_len + header)


def _npz_item(
    npz: Any, info: zipfile.ZipInfo, name: str, torch_name: Any, mm: Any, size: int
) -> TensorItem | str:
    """One array of an npz as an item, or why it cannot be one."""
    parsed = _npy_header(npz, info)
    if isinstance(parsed, str):
        return parsed
    shape, fortran, dtype, header = parsed
    if dtype.hasobject:
        return "object array: would need pickle"
    info_row = _torch_dtype(torch_name, dtype)
    if isinstance(info_row, str):
        return info_row
    nbytes = math.prod(shape) * dtype.itemsize
    restore = _restorer(torch_name, info_row.numpy if torch_name is not None else dtype)
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
        begin = _stored_begin(info, header, nbytes, mm, size)
        if begin + nbytes > size:
            raise CorruptError(
                f"member {quoted(info.filename)}: {nbytes} bytes of {shape} "
                f"{dtype} run past the end of the file"
            )

        def load() -> np.ndarray:
            flat = np.frombuffer(mm, dtype, count=math.prod(shape), offset=begin)
            array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
            return restore(array)

        return TensorItem(name, info_row, shape, load, load)

    def load_member() -> np.ndarray:
        try:
            with npz.zip.open(info) as fp:  # this member (not another of the same name)
                array = np.lib.format.read_array(fp, allow_pickle=False)
        except (ValueError, *ZIP_ERRORS) as exc:
            raise CorruptError(f"member {quoted(info.filename)}: {_reason(exc)}") from None
        if array.shape != shape or array.dtype != dtype:
            raise CorruptError(f"member {quoted(info.filename)} changed while read")
        return restore(array)

    row = info_row
    return TensorItem(
        name, row, shape, load_member, lambda: _lazy_ref(name, row, shape, load_member)
    )


def _lazy_ref(
    name: str, info: DTypeInfo, shape: tuple[int, ...], load: Callable[[], np.ndarray]
) -> TensorRef:
    """A TensorRef whose bytes are read (decompressed) only while save() writes them."""
    storage = StorageInfo(name, info, math.prod(shape) * info.itemsize, "cpu", Device.parse("cpu"))

    def read(_: StorageInfo, mmap: bool) -> np.ndarray:
        array = np.ascontiguousarray(load())
        if is_big(array.dtype) != (sys.byteorder == "big"):  # the reader's host order
            array = array.byteswap().view(array.dtype.newbyteorder())
        return array.reshape(-1).view(np.uint8)

    storage.attach(read, cache=False)  # read while save() writes it, not kept
    return TensorRef(storage, info, 0, shape, c_strides(shape))


def write_npz(write: Write, items: list[TensorItem], values: list[Value], meta: Meta) -> None:
    """Write an npz through ``write``: one ``.npy`` per tensor (raw-bit dtypes as unsigned
    integers), and the sidecar when there are raw dtypes, ``values`` or ``meta``."""
    dtypes: dict[str, str] = {}
    with zipfile.ZipFile(Sink(write), "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]
        for item in items:
            array = item.load()
            raw = NPZ_RAW_DTYPES.get(item.dtype.name)
            if raw is not None:
                array = array.view(np.dtype(raw).newbyteorder(array.dtype.byteorder))
                dtypes[item.name] = item.dtype.name
            if array.shape != item.shape:
                raise CorruptError(
                    f"{item.name}: data of shape {array.shape}, expected {item.shape}"
                )
            with zf.open(item.name + ".npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, array, allow_pickle=False)
            del array
            if item.release is not None:
                item.release()
        sidecar: dict[str, Any] = {}
        if dtypes:
            sidecar["dtypes"] = dtypes
        if values:
            sidecar["values"] = {v.name: v.value for v in values}
        if meta:
            sidecar["metadata"] = meta
        if sidecar:
            text = json.dumps({"pthfmt": 1, **sidecar})
            with zf.open(SIDECAR + ".npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, np.array(text), allow_pickle=False)
