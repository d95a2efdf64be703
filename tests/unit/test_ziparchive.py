"""The zip layer (``pthfmt.formats.zip.reader``) against CPython's ``zipfile``.

The central directory and the local headers are read two ways: column-wise with numpy for a
well-formed archive (``_scan_central``, ``_scan_local``), and entry by entry
(``_walk_central``, ``data_offset``), which is also what names the first bad entry.  Both
must give exactly what ``zipfile`` reads, for any names (UTF-8 or cp437, holding a
``PK\\1\\2`` signature), extra fields, comments and zip64 fields.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt.errors import CorruptError, FormatError
from pthfmt.formats.torchzip import TorchZip
from pthfmt.formats.zip import reader
from pthfmt.formats.zip.reader import ZipArchive
from pthfmt.source import Source

_FIELDS = (
    "name",
    "index",
    "method",
    "flags",
    "crc",
    "csize",
    "usize",
    "header_offset",
    "central_offset",
)


def _build(members: list[tuple[str, bytes, bytes, bool]], comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data, extra, deflate in members:
            info = zipfile.ZipInfo(name)
            info.extra = extra
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            zf.writestr(info, data)
        zf.comment = comment
    return out.getvalue()


def _rows(entries: list) -> list[tuple]:
    return [tuple(getattr(e, f) for f in _FIELDS) for e in entries]


def _check(raw: bytes) -> ZipArchive:
    archive = ZipArchive(Source(io.BytesIO(raw)))
    walked = archive._walk_central(len(archive.entries))
    assert _rows(archive.entries) == _rows(walked)
    infos = zipfile.ZipFile(io.BytesIO(raw)).infolist()
    assert [(e.name, e.crc, e.csize, e.usize, e.header_offset, e.method) for e in walked] == [
        (i.filename, i.CRC, i.compress_size, i.file_size, i.header_offset, i.compress_type)
        for i in infos
    ]
    assert archive.names == [e.name for e in walked]
    assert archive.sizes == [e.usize for e in walked]
    # payload offsets: the batch scan and the one-by-one reader agree, and the bytes are right
    archive._scan_local()
    plain = archive.plain_offsets()
    for entry in walked:  # (plain: what a reader may slice without reading the entry)
        stored = entry.method == zipfile.ZIP_STORED and entry.csize == entry.usize
        assert plain[entry.index] == (archive.data_offset(entry) if stored else -1)
    for entry, info in zip(archive.entries, infos):
        scanned = archive.known_offset(entry)
        archive.forget_offset(entry)
        assert archive.data_offset(entry) == scanned
        if entry.method == zipfile.ZIP_STORED:
            assert archive.read(entry) == zipfile.ZipFile(io.BytesIO(raw)).read(info)
    return archive


names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(names, st.binary(max_size=40), st.booleans()),
        min_size=1,
        max_size=80,
        unique_by=lambda m: m[0],
    ),
    st.binary(max_size=20),
)
def test_any_archive_reads_as_zipfile_reads_it(members, comment):
    assume(b"PK\x05\x06" not in comment)  # zipfile itself cannot read those
    raw = _build([(name, data, b"", deflate) for name, data, deflate in members], comment)
    _check(raw)


def test_many_entries_with_tricky_names_extras_and_signatures():
    members = []
    for i in range(300):
        name = f"archive/data/{i}"
        if i % 7 == 0:
            name += "/PK\x01\x02" + "é" * (i % 3)  # a signature inside the name
        extra = struct.pack("<HH4s", 0xCAFE, 4, b"PK\x01\x02") if i % 11 == 0 else b""
        members.append((name, bytes([i % 256]) * (i % 50), extra, i % 5 == 0))
    archive = _check(_build(members, b"PK\x01\x02 in the comment"))
    assert archive._scan_central(len(archive.entries)) is None  # the chain check refused
    plain = _check(_build([(f"archive/data/{i}", b"x" * i, b"", False) for i in range(300)]))
    assert plain._scan_central(len(plain.entries)) is not None  # the fast path ran


def test_cp437_names_decode_by_their_flag():
    raw = bytearray(_build([(f"a/{i}", b"", b"", False) for i in range(100)]))
    # zipfile writes ASCII names without the UTF-8 flag; make entry 5's name byte 0x82 (é)
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    entry = archive.entries[5]
    raw[entry.central_offset + 46 + 2] = raw[entry.header_offset + 30 + 2] = 0x82
    assert _check(bytes(raw)).entries[5].name == "a/é"


def test_zip64_central_fields_widen_sizes():
    members = [(f"a/{i}", b"abc" * i, b"", False) for i in range(100)]
    extra = struct.pack("<HHQQ", 1, 16, 3 * 42, 3 * 42)
    members[42] = ("a/42", b"abc" * 42, extra, False)
    raw = bytearray(_build(members))
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    at = archive.entries[42].central_offset
    struct.pack_into("<II", raw, at + 20, 0xFFFFFFFF, 0xFFFFFFFF)  # csize, usize -> zip64
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    assert archive._scan_central(100) is not None
    assert (archive.entries[42].csize, archive.entries[42].usize) == (126, 126)
    assert _rows(archive.entries) == _rows(archive._walk_central(100))
    assert archive.read(archive.entries[42]) == b"abc" * 42


def test_a_broken_local_header_is_reported_by_the_entry_reader():
    raw = bytearray(_build([(f"a/{i}", b"x" * 10, b"", False) for i in range(100)]))
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    raw[archive.entries[7].header_offset] = ord("Q")
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    assert archive.data_offset(archive.entries[6]) > 0
    with pytest.raises(CorruptError, match="local header signature"):
        archive.data_offset(archive.entries[7])


# -- torch's record lookup (zipformat.TorchZip) ------------------------------------------------


def _torchzip(names: list[str]) -> TorchZip:
    return TorchZip(Source(io.BytesIO(_build([(n, b"", b"", False) for n in names]))))


@pytest.mark.parametrize("folder", ["a", "Model"])  # (the folder's own capitals: not folded)
def test_record_names_fold_ascii_case_only_as_miniz_does(folder: str) -> None:
    names = ["data.pkl", "data/É", "Data/x", *(f"data/{i}" for i in range(9))]
    archive = _torchzip([f"{folder}/{n}" for n in names])
    assert not archive.clashes
    assert archive.find("DATA.PKL").name == f"{folder}/data.pkl"
    assert archive.find("data/x").name == f"{folder}/Data/x"
    assert archive.find("DATA/7").name == f"{folder}/data/7"
    assert archive.find("data/É").name == f"{folder}/data/É"
    assert archive.find("data/é") is None  # MZ_TOLOWER folds ASCII only
    assert archive.find("x") is None
    assert not _torchzip([f"{folder}/É", f"{folder}/é"]).clashes


@pytest.mark.parametrize("folder", ["a", "Model"])
@pytest.mark.parametrize("names", [["x", "X"], ["Xy", "XY"], ["d/1", "d/1"], ["d/a", "D/A"]])
def test_names_equal_but_for_ascii_case_are_ambiguous(folder: str, names: list[str]) -> None:
    archive = _torchzip([f"{folder}/{n}" for n in names])
    assert archive.clashes
    with pytest.raises(FormatError, match="ambiguous"):
        archive.find(names[0].lower())


def test_zip64_offsets_past_the_file_are_corrupt_records_not_overflows():
    members = [(f"a/{i}", b"abc", b"", False) for i in range(5)]
    members[2] = ("a/2", b"abc", struct.pack("<HHQ", 1, 8, 2**64 - 1), False)
    raw = bytearray(_build(members))
    at = ZipArchive(Source(io.BytesIO(bytes(raw)))).entries[2].central_offset
    struct.pack_into("<I", raw, at + 42, 0xFFFFFFFF)  # header offset -> zip64 field
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    assert archive.entries[2].header_offset == 2**64 - 1
    assert archive.read(archive.entries[0]) == b"abc"  # the batch scan copes
    with pytest.raises(CorruptError, match="runs past the end"):
        archive.data_offset(archive.entries[2])


_OFFSETS = st.one_of(st.integers(0, 3000), st.integers(0, 2**32 - 2))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_OFFSETS, st.integers(0, 300)), min_size=1, max_size=30))
def test_the_overlap_check_by_columns_is_the_entry_by_entry_one(spans):
    """``check_disjoint`` over the directory's offset and size columns (numpy) names the same
    first overlapping pair as the loop over sorted entries."""
    raw = bytearray(_build([(f"a/{i}", b"", b"", False) for i in range(len(spans))]))
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    for entry, (lho, csize) in zip(archive.entries, spans):
        struct.pack_into("<I", raw, entry.central_offset + 20, csize)
        struct.pack_into("<I", raw, entry.central_offset + 42, lho)

    def outcome(columns: bool) -> tuple | None:
        archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
        assert archive._spans is not None
        if not columns:
            archive._spans = None
        try:
            archive.check_disjoint()
        except CorruptError as exc:
            return (exc.message, exc.record, exc.offset)
        return None

    assert outcome(True) == outcome(False)


def test_zip64_offsets_past_the_file_leave_the_columns_to_the_entries():
    members = [(f"a/{i}", b"abc", b"", False) for i in range(10)]
    extra = struct.pack("<HHQ", 1, 8, 1 << 40)  # a header offset far past the file
    members[3] = ("a/3", b"abc", extra, False)
    raw = bytearray(_build(members))
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    struct.pack_into("<I", raw, archive.entries[3].central_offset + 42, 0xFFFFFFFF)
    archive = ZipArchive(Source(io.BytesIO(bytes(raw))))
    assert archive.entries[3].header_offset == 1 << 40
    assert archive._spans is None
    archive.check_disjoint()


def test_a_load_makes_entries_only_for_the_records_it_reads_by_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storages are located from the directory's columns: a load of 300 tensors makes an
    entry object for the few records it reads by entry (pickle, version), not per storage."""
    made: list[str] = []
    init = reader.ZipEntry.__init__

    def counted(self: reader.ZipEntry, name: str, *args: Any, **kwargs: Any) -> None:
        made.append(name)
        init(self, name, *args, **kwargs)

    buf = io.BytesIO()
    pthfmt.save({f"w{i}": np.full(3, i, np.float32) for i in range(300)}, buf)
    monkeypatch.setattr(reader.ZipEntry, "__init__", counted)
    out = pthfmt.load(io.BytesIO(buf.getvalue()))
    assert [int(out[f"w{i}"][0]) for i in range(300)] == list(range(300))
    assert 0 < len(made) <= 5, made


def test_entries_are_made_once_each_and_index_like_a_list() -> None:
    archive = ZipArchive(
        Source(io.BytesIO(_build([(f"a/{i}", b"x" * i, b"", False) for i in range(5)])))
    )
    entries = archive.entries
    assert len(entries) == 5
    assert entries[-1] is entries[4] and entries[-1].name == "a/4"
    assert [e.name for e in entries[1:4]] == ["a/1", "a/2", "a/3"]
    assert list(entries) == [entries[i] for i in range(5)]  # (the same objects)
    with pytest.raises(IndexError):
        entries[5]
