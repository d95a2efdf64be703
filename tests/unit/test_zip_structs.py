"""The zip record layouts: stated once, used by the reader and the writer, and consistent with
the zip specification's fixed sizes and CPython's zipfile (as pickletools is with pickle)."""

from __future__ import annotations

import io
import struct
import zipfile

from pthfmt.formats.zip import structs as zs
from pthfmt.formats.zip.reader import ZipArchive
from pthfmt.formats.zip.writer import ZipWriter
from pthfmt.source import Source

#: APPNOTE.TXT 4.3: the fixed part of each record, in bytes
SPEC_SIZES = {
    zs.LOCAL: 30,
    zs.CENTRAL: 46,
    zs.EOCD: 22,
    zs.ZIP64_EOCD: 56,
    zs.ZIP64_LOCATOR: 20,
    zs.EXTRA_HEADER: 4,
    zs.DESCRIPTOR32: 16,
    zs.DESCRIPTOR64: 24,
    zs.DESCRIPTOR32_BARE: 12,
    zs.DESCRIPTOR64_BARE: 20,
}


def test_sizes_match_the_spec():
    for layout, size in SPEC_SIZES.items():
        assert layout.size == size == layout.struct.size == layout.dtype.itemsize, layout


def test_sizes_and_signatures_match_cpython_zipfile():
    assert zs.LOCAL.size == zipfile.sizeFileHeader
    assert zs.CENTRAL.size == zipfile.sizeCentralDir
    assert zs.EOCD.size == zipfile.sizeEndCentDir
    assert zs.ZIP64_EOCD.size == zipfile.sizeEndCentDir64
    assert zs.ZIP64_LOCATOR.size == zipfile.sizeEndCentDir64Locator
    assert zs.LOCAL.signature == zipfile.stringFileHeader
    assert zs.CENTRAL.signature == zipfile.stringCentralDir
    assert zs.EOCD.signature == zipfile.stringEndArchive
    assert zs.ZIP64_EOCD.signature == zipfile.stringEndArchive64
    assert zs.ZIP64_LOCATOR.signature == zipfile.stringEndArchive64Locator


def _offset(fmt: str | bytes, index: int) -> int:
    """Byte offset of field ``index`` in a struct format of single-letter codes."""
    codes = (fmt.decode() if isinstance(fmt, bytes) else fmt).lstrip("<")
    expanded = []
    i = 0
    while i < len(codes):
        j = i
        while codes[j].isdigit():
            j += 1
        n = int(codes[i:j] or 1)
        expanded += [codes[j]] * (1 if codes[j] == "s" else n) if codes[j] != "s" else [f"{n}s"]
        i = j + 1
    return struct.calcsize("<" + "".join(expanded[:index]))


def test_field_offsets_match_cpython_zipfile():
    # CPython splits the version fields into two bytes; offsets of the shared fields agree
    cd = zipfile.structCentralDir
    assert zs.CENTRAL.offsets["crc"] == _offset(cd, zipfile._CD_CRC) == 16
    assert zs.CENTRAL.offsets["compressed_size"] == _offset(cd, zipfile._CD_COMPRESSED_SIZE)
    assert zs.CENTRAL.offsets["name_length"] == _offset(cd, zipfile._CD_FILENAME_LENGTH) == 28
    assert zs.CENTRAL.offsets["header_offset"] == _offset(cd, zipfile._CD_LOCAL_HEADER_OFFSET) == 42
    fh = zipfile.structFileHeader
    assert zs.LOCAL.offsets["crc"] == _offset(fh, zipfile._FH_CRC) == 14
    assert zs.LOCAL.offsets["name_length"] == _offset(fh, zipfile._FH_FILENAME_LENGTH) == 26
    assert zs.LOCAL.offsets["extra_length"] == _offset(fh, zipfile._FH_EXTRA_FIELD_LENGTH)
    assert (
        zs.EOCD.offsets["directory_offset"]
        == _offset(zipfile.structEndArchive, zipfile._ECD_OFFSET)
        == 16
    )
    assert (
        zs.EOCD.offsets["comment_length"]
        == _offset(zipfile.structEndArchive, zipfile._ECD_COMMENT_SIZE)
        == 20
    )


def test_named_indices_point_at_their_fields():
    assert zs.CENTRAL.names[zs.CD_CRC] == "crc"
    assert zs.CENTRAL.names[zs.CD_HEADER_OFFSET] == "header_offset"
    assert zs.LOCAL.names[zs.LH_EXTRA_LENGTH] == "extra_length"
    assert zs.EOCD.names[zs.EOCD_COMMENT_LENGTH] == "comment_length"
    assert zs.ZIP64_EOCD.names[zs.Z64_DIRECTORY_OFFSET] == "directory_offset"
    assert zs.ZIP64_LOCATOR.names[zs.LOC_ZIP64_OFFSET] == "zip64_offset"
    assert zs.Z64_RECORD_HEAD == 12


def _written(records: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    w = ZipWriter(out.write, "archive")
    for name, data in records.items():
        w.add(name, data)
    w.finish()
    return out.getvalue()


def test_writer_output_parses_with_the_same_layouts():
    raw = _written({"data.pkl": b"\x80\x02}q\x00.", "data/0": b"\x01" * 100})
    z = ZipArchive(Source(io.BytesIO(raw)))
    names = [e.name for e in z.entries]
    assert names == [
        "archive/data.pkl",
        "archive/data/0",
        "archive/version",
        "archive/byteorder",
        "archive/.data/serialization_id",
    ]
    e = z.entries[1]
    local = z.local_header(e)
    assert (local.flags, local.method, local.crc, local.csize, local.usize) == (0x0808, 0, 0, 0, 0)
    assert local.name == "archive/data/0"
    assert local.data_offset % 64 == 0
    assert raw[local.data_offset : local.data_offset + 100] == b"\x01" * 100
    tail = zs.DESCRIPTOR32.struct.unpack_from(raw, local.data_offset + 100)
    assert tail == (b"PK\x07\x08", e.crc, 100, 100)
    assert e.central_size == zs.CENTRAL.size + len(b"archive/data/0")
    assert z.end_record[zs.EOCD_ENTRIES] == 5
    assert z.zip64_record is not None and z.zip64_record[zs.Z64_ENTRIES] == 5
    # CPython reads what the writer wrote, field for field
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = zf.getinfo("archive/data/0")
        assert (info.CRC, info.file_size, info.header_offset) == (e.crc, 100, e.header_offset)


def test_zip64_values_reads_only_saturated_fields():
    body = zs.ZIP64_VALUE.pack(1 << 33) + zs.ZIP64_VALUE.pack(1 << 34)
    extra = zs.EXTRA_HEADER.struct.pack(zs.ZIP64_EXTRA_TAG, len(body)) + body
    assert zs.zip64_values(extra, (zs.U32_MAX, 7, zs.U32_MAX)) == ([1 << 33, 7, 1 << 34], True)
    assert zs.zip64_values(extra[:12], (zs.U32_MAX, zs.U32_MAX)) == ([1 << 33, zs.U32_MAX], False)
    assert zs.zip64_values(b"", (5,)) is None
