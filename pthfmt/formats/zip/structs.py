"""The zip record layouts, each stated once (APPNOTE.TXT 6.3.10, section 4.3).

Every record is a :class:`Layout`: its signature, its fields in order (name and ``struct``
code, all little-endian) and, derived from them, the ``struct.Struct``, each field's byte
offset and a numpy record dtype (for reading a whole central directory at once).  The named
field indices (``CD_CRC``, ``LH_NAME_LENGTH``...) index the tuples ``unpack_from`` returns,
as CPython's :mod:`zipfile` does (``_CD_SIGNATURE = 0``...).  The zip reader, the writer
and the validator all use these; none of them spells an offset.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

__all__ = [
    "Layout",
    "LOCAL",
    "CENTRAL",
    "EOCD",
    "ZIP64_EOCD",
    "ZIP64_LOCATOR",
    "EXTRA_HEADER",
    "DESCRIPTOR32",
    "DESCRIPTOR64",
    "DESCRIPTOR32_BARE",
    "DESCRIPTOR64_BARE",
    "DESCRIPTORS",
    "ZIP64_EXTRA_TAG",
    "ZIP64_VALUE",
    "U32_MAX",
    "U16_MAX",
    "FLAG_ENCRYPTED",
    "FLAG_DESCRIPTOR",
    "FLAG_UTF8",
    "STORED",
    "DEFLATED",
    "zip64_values",
]

_NUMPY = {"4s": "S4", "H": "<u2", "I": "<u4", "Q": "<u8"}


class Layout:
    """One fixed-size zip record: ``signature`` and ``fields`` ((name, struct code), ...)."""

    __slots__ = ("dtype", "fields", "name", "names", "offsets", "signature", "size", "struct")

    def __init__(
        self, name: str, signature: bytes | None, fields: tuple[tuple[str, str], ...]
    ) -> None:
        self.name = name
        self.signature = signature
        self.fields = fields
        self.names = tuple(field for field, _ in fields)
        self.struct = struct.Struct("<" + "".join(code for _, code in fields))
        self.size = self.struct.size
        offsets, at = {}, 0
        for field, code in fields:
            offsets[field] = at
            at += struct.calcsize("<" + code)
        self.offsets: dict[str, int] = offsets
        self.dtype = np.dtype([(field, _NUMPY[code]) for field, code in fields])

    def index(self, field: str) -> int:
        """The position of ``field`` in the tuples :attr:`struct` unpacks."""
        return self.names.index(field)

    def __repr__(self) -> str:
        return f"<zip layout {self.name}: {self.size} bytes>"


#: Local file header (4.3.7); followed by the name, the extra field, then the data.
LOCAL: Final = Layout(
    "local file header",
    b"PK\x03\x04",
    (
        ("signature", "4s"),
        ("version_needed", "H"),
        ("flags", "H"),
        ("method", "H"),
        ("time", "H"),
        ("date", "H"),
        ("crc", "I"),
        ("compressed_size", "I"),
        ("uncompressed_size", "I"),
        ("name_length", "H"),
        ("extra_length", "H"),
    ),
)
LH_SIGNATURE: Final = LOCAL.index("signature")
LH_FLAGS: Final = LOCAL.index("flags")
LH_METHOD: Final = LOCAL.index("method")
LH_CRC: Final = LOCAL.index("crc")
LH_COMPRESSED_SIZE: Final = LOCAL.index("compressed_size")
LH_UNCOMPRESSED_SIZE: Final = LOCAL.index("uncompressed_size")
LH_NAME_LENGTH: Final = LOCAL.index("name_length")
LH_EXTRA_LENGTH: Final = LOCAL.index("extra_length")

#: Central directory file header (4.3.12); followed by name, extra field and comment.
CENTRAL: Final = Layout(
    "central directory entry",
    b"PK\x01\x02",
    (
        ("signature", "4s"),
        ("version_made_by", "H"),
        ("version_needed", "H"),
        ("flags", "H"),
        ("method", "H"),
        ("time", "H"),
        ("date", "H"),
        ("crc", "I"),
        ("compressed_size", "I"),
        ("uncompressed_size", "I"),
        ("name_length", "H"),
        ("extra_length", "H"),
        ("comment_length", "H"),
        ("disk_start", "H"),
        ("internal_attributes", "H"),
        ("external_attributes", "I"),
        ("header_offset", "I"),
    ),
)
CD_SIGNATURE: Final = CENTRAL.index("signature")
CD_FLAGS: Final = CENTRAL.index("flags")
CD_METHOD: Final = CENTRAL.index("method")
CD_CRC: Final = CENTRAL.index("crc")
CD_COMPRESSED_SIZE: Final = CENTRAL.index("compressed_size")
CD_UNCOMPRESSED_SIZE: Final = CENTRAL.index("uncompressed_size")
CD_NAME_LENGTH: Final = CENTRAL.index("name_length")
CD_EXTRA_LENGTH: Final = CENTRAL.index("extra_length")
CD_COMMENT_LENGTH: Final = CENTRAL.index("comment_length")
CD_HEADER_OFFSET: Final = CENTRAL.index("header_offset")

#: End of central directory record (4.3.16); followed by the archive comment.
EOCD: Final = Layout(
    "end of central directory record",
    b"PK\x05\x06",
    (
        ("signature", "4s"),
        ("disk", "H"),
        ("directory_disk", "H"),
        ("disk_entries", "H"),
        ("entries", "H"),
        ("directory_size", "I"),
        ("directory_offset", "I"),
        ("comment_length", "H"),
    ),
)
EOCD_DISK: Final = EOCD.index("disk")
EOCD_DIRECTORY_DISK: Final = EOCD.index("directory_disk")
EOCD_DISK_ENTRIES: Final = EOCD.index("disk_entries")
EOCD_ENTRIES: Final = EOCD.index("entries")
EOCD_DIRECTORY_SIZE: Final = EOCD.index("directory_size")
EOCD_DIRECTORY_OFFSET: Final = EOCD.index("directory_offset")
EOCD_COMMENT_LENGTH: Final = EOCD.index("comment_length")

#: Zip64 end of central directory record (4.3.14); ``record_size`` counts what follows it.
ZIP64_EOCD: Final = Layout(
    "zip64 end of central directory record",
    b"PK\x06\x06",
    (
        ("signature", "4s"),
        ("record_size", "Q"),
        ("version_made_by", "H"),
        ("version_needed", "H"),
        ("disk", "I"),
        ("directory_disk", "I"),
        ("disk_entries", "Q"),
        ("entries", "Q"),
        ("directory_size", "Q"),
        ("directory_offset", "Q"),
    ),
)
Z64_SIGNATURE: Final = ZIP64_EOCD.index("signature")
Z64_RECORD_SIZE: Final = ZIP64_EOCD.index("record_size")
Z64_DISK: Final = ZIP64_EOCD.index("disk")
Z64_DIRECTORY_DISK: Final = ZIP64_EOCD.index("directory_disk")
Z64_DISK_ENTRIES: Final = ZIP64_EOCD.index("disk_entries")
Z64_ENTRIES: Final = ZIP64_EOCD.index("entries")
Z64_DIRECTORY_SIZE: Final = ZIP64_EOCD.index("directory_size")
Z64_DIRECTORY_OFFSET: Final = ZIP64_EOCD.index("directory_offset")
#: ``record_size`` does not count the signature and itself
Z64_RECORD_HEAD: Final = ZIP64_EOCD.offsets["version_made_by"]

#: Zip64 end of central directory locator (4.3.15); just before the end record.
ZIP64_LOCATOR: Final = Layout(
    "zip64 end of central directory locator",
    b"PK\x06\x07",
    (("signature", "4s"), ("zip64_disk", "I"), ("zip64_offset", "Q"), ("disks", "I")),
)
LOC_SIGNATURE: Final = ZIP64_LOCATOR.index("signature")
LOC_ZIP64_OFFSET: Final = ZIP64_LOCATOR.index("zip64_offset")

#: The header of each extra field block (4.5.1); ``length`` bytes of body follow.
EXTRA_HEADER: Final = Layout("extra field header", None, (("tag", "H"), ("length", "H")))
ZIP64_EXTRA_TAG: Final = 0x0001
#: one value of the zip64 extended information extra field (4.5.3)
ZIP64_VALUE: Final = struct.Struct("<Q")
#: torch's (miniz's) alignment padding: tag "FB", body all "Z"
PADDING_TAG: Final = 0x4246

#: Data descriptors (4.3.9): with or without the (optional) signature, 32- or 64-bit sizes.
_DD_SIG = b"PK\x07\x08"
DESCRIPTOR32: Final = Layout(
    "data descriptor",
    _DD_SIG,
    (("signature", "4s"), ("crc", "I"), ("compressed_size", "I"), ("uncompressed_size", "I")),
)
DESCRIPTOR64: Final = Layout(
    "zip64 data descriptor",
    _DD_SIG,
    (("signature", "4s"), ("crc", "I"), ("compressed_size", "Q"), ("uncompressed_size", "Q")),
)
DESCRIPTOR32_BARE: Final = Layout(
    "data descriptor without signature",
    None,
    (("crc", "I"), ("compressed_size", "I"), ("uncompressed_size", "I")),
)
DESCRIPTOR64_BARE: Final = Layout(
    "zip64 data descriptor without signature",
    None,
    (("crc", "I"), ("compressed_size", "Q"), ("uncompressed_size", "Q")),
)
#: the forms a reader tries, in order
DESCRIPTORS: Final = (DESCRIPTOR32, DESCRIPTOR64, DESCRIPTOR32_BARE, DESCRIPTOR64_BARE)

U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFFFFFF  # a saturated 32-bit field: the value is in the zip64 extra
FLAG_ENCRYPTED: Final = 0x0001
FLAG_DESCRIPTOR: Final = 0x0008
FLAG_UTF8: Final = 0x0800
STORED: Final = 0
DEFLATED: Final = 8


def zip64_values(extra: bytes, saturated: tuple[int, ...]) -> tuple[list[int], bool] | None:
    """The zip64 extra field's values for the ``saturated`` 32-bit fields (those equal to
    :data:`U32_MAX`, in the spec's order: uncompressed size, compressed size, header
    offset): ``(values, complete)``, or ``None`` when ``extra`` holds no zip64 field.
    ``complete`` is false when the field is too short for every saturated value (the
    values it lacks are left as they were)."""
    head = EXTRA_HEADER.struct
    i = 0
    while i + head.size <= len(extra):
        tag, length = head.unpack_from(extra, i)
        if tag == ZIP64_EXTRA_TAG:
            body = extra[i + head.size : i + head.size + length]
            values, j, complete = [], 0, True
            for v in saturated:
                if v == U32_MAX:
                    if j + ZIP64_VALUE.size > len(body):
                        complete = False
                    else:
                        (v,) = ZIP64_VALUE.unpack_from(body, j)
                        j += ZIP64_VALUE.size
                values.append(v)
            return values, complete
        i += head.size + length
    return None
