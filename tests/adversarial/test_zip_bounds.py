"""Zip-level bounds that hold for the whole archive, not record by record: what all deflated
records may inflate to together, the memory of the central-directory scan, and directory
entries that alias one record's bytes."""

from __future__ import annotations

import io
import struct
import tracemalloc

import pytest

import pthfmt
from pthfmt.errors import CorruptError, LimitError
from pthfmt.validation import validate
from tests.support.adversarial import aliased_records, many_deflated

MIB = 1 << 20


def test_inflation_is_bounded_for_the_whole_archive():
    data = many_deflated(3)
    with pytest.raises(LimitError) as info:
        pthfmt.load(io.BytesIO(data))
    assert info.value.message == (
        f"the deflated records inflate to more than 256:1 of the {len(data)}-byte file in all "
        "(a decompression bomb?)"
    )
    assert info.value.record == "archive/data/1" and info.value.code == "zip.inflate_limit"
    report = validate(io.BytesIO(data))
    assert "zip.inflate_limit" in report.codes and "load.failed" not in report.codes


def test_one_deflated_record_within_its_allowance_still_loads():
    data = many_deflated(1)
    assert pthfmt.load(io.BytesIO(data))["t0"].nbytes == MIB


def test_central_directory_scan_memory_is_in_proportion_to_the_file():
    """A directory of 8 MiB of ``P`` bytes (the first byte of every signature)."""
    size = 8 * MIB
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, size, 0, 0)
    data = b"PK\x03\x04" + b"P" * (size - 4) + eocd
    tracemalloc.start()
    try:
        with pytest.raises(CorruptError, match="zip central directory entry 0 has a bad"):
            pthfmt.load(io.BytesIO(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * size  # (an offset for every P byte was 20x)


def test_directory_entries_aliasing_one_record_are_refused():
    data = aliased_records(64)
    with pytest.raises(CorruptError) as info:
        pthfmt.load(io.BytesIO(data))
    assert info.value.code == "zip.overlap"
    assert info.value.message.startswith("zip records 'archive/data/00' and 'archive/data/")
    assert "share bytes" in info.value.message
    report = validate(io.BytesIO(data))
    assert "zip.overlap" in report.codes and "load.failed" not in report.codes
