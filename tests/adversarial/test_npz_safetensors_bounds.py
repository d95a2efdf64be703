"""Hostile safetensors and ``.npz`` inputs: every header rule of safetensors with its exact
error, class, offset and key (the reader and ``check_safetensors`` agree), the bounds of issue
18's class 9 (a 9,000-digit JSON number, deep nesting, shapes with a zero dimension and
2**61-sized others, negative and 2**100 ``.npy`` shapes, npz deflate bombs one by one and in
aggregate, two npz members of one name): a ``PthError`` naming what and where, quickly."""

from __future__ import annotations

import io
import json
import struct
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pthfmt.errors import CorruptError, FormatError, LimitError, PthError, UnsupportedError
from pthfmt.formats.contract import Options
from pthfmt.formats.npz import read_npz
from pthfmt.formats.safetensors import (
    read_safetensors,
    read_safetensors_header,
    read_safetensors_source,
)
from pthfmt.formats.tensordata import Content
from pthfmt.model.device import location_mapper
from pthfmt.source import Source
from pthfmt.validation.safetensors import check_safetensors


def st(header: Any, data: bytes = b"") -> bytes:
    """A safetensors file: ``header`` (a dict, or raw JSON bytes), padded, then ``data``."""
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":"))
    if isinstance(text, str):
        text = text.encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def two(**b: Any) -> dict[str, Any]:
    """Two F32[2] tensors, 'b' modified."""
    second = entry(offsets=(8, 16))
    second.update({k: list(v) if isinstance(v, tuple) else v for k, v in b.items()})
    return {"a": entry(), "b": second}


# (file, error class, message, offset, key)
HEADERS: dict[str, tuple[bytes, type[PthError], str, int | None, str | None]] = {
    "short": (b"\x01\x02", CorruptError,
              "a 2-byte file is too short for a safetensors header", 0, None),
    "header too large": (struct.pack("<Q", 100_000_001) + b"{}", LimitError,
                         "safetensors header of 100000001 bytes (safetensors reads at most "
                         "100000000)", 0, None),
    "header past the end": (struct.pack("<Q", 50) + b"{}", CorruptError,
                            "safetensors header of 50 bytes runs past the end of the 10-byte "
                            "file", 0, None),
    "not utf-8": (st(b'{"\xff":1}'), FormatError,
                  "safetensors header is not UTF-8 (invalid start byte)", 10, None),
    "no value": (st(b'{"a":}'), FormatError,
                 "safetensors header is not JSON: expecting a value", 13, None),
    "not an object": (st(b"[1]"), FormatError,
                      "safetensors header is not JSON: expecting '{', found '['", 8, None),
    "key twice": (st(b'{"a":' + json.dumps(entry()).encode() + b',"a":'
                     + json.dumps(entry()).encode() + b"}", bytes(8)), FormatError,
                  "safetensors header is not JSON: key 'a' appears twice",
                  8 + len('{"a":' + json.dumps(entry()) + ","), None),
    "field twice": (st(b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
                       bytes(8)), FormatError,
                    "safetensors header is not JSON: key 'dtype' appears twice in one object",
                    13, None),
    "NaN": (st(b'{"__metadata__":{"x":NaN}}'), FormatError,
            "safetensors header is not JSON: NaN is not JSON", 24, None),
    "9000 digits": (st(b'{"__metadata__":{"x":' + b"9" * 9000 + b"}}"), FormatError,
                    "safetensors header is not JSON: a number of 9000 digits (at most 40)",
                    24, None),
    "nested 100000 deep": (st(b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                           FormatError, "safetensors header is not JSON: nested too deeply",
                           24, None),
    "text after": (st(b"{}x"), FormatError,
                   "safetensors header is not JSON: text after the JSON object", 10, None),
    "trailing comma": (st(b'{"a":1,}'), FormatError,
                       "safetensors header is not JSON: expecting a key in double quotes",
                       15, None),
    "metadata value": (st({"__metadata__": {"k": 1}}), FormatError,
                       "safetensors __metadata__ must map strings to strings: 'k' is 1", 24,
                       None),
    "metadata list": (st({"__metadata__": [1]}), FormatError,
                      "safetensors __metadata__ must map strings to strings: it is [1]", 24,
                      None),
    "entry not an object": (st({"a": [1]}), FormatError,
                            "safetensors entry 'a' is not an object", 9, "a"),
    "no data_offsets": (st({"a": {"dtype": "F32", "shape": [2]}}), FormatError,
                        "safetensors entry 'a' has no 'data_offsets'", 9, "a"),
    "unknown dtype": (st(two(dtype="F99"), bytes(16)), UnsupportedError,
                      "safetensors entry 'b': unknown dtype 'F99'", 62, "b"),
    "negative dim": (st(two(shape=[-2]), bytes(16)), FormatError,
                     "safetensors entry 'b': bad shape [-2]", 62, "b"),
    "bool dim": (st(two(shape=[True]), bytes(16)), FormatError,
                 "safetensors entry 'b': bad shape [True]", 62, "b"),
    "65 dims": (st(two(shape=[1] * 65), bytes(16)), FormatError,
                "safetensors entry 'b': bad shape [1, 1, 1, 1, 1, 1, ...]", 62, "b"),
    "zero and 2**61 dims": (st(two(shape=[0, 2**61, 2**61], data_offsets=[8, 8]), bytes(8)),
                            FormatError,
                            "safetensors entry 'b': shape [0, 2305843009213693952, "
                            "2305843009213693952] is too large: its non-zero dimensions of "
                            "F32 hold more than 2**63 - 1 bytes", 62, "b"),
    "one offset": (st(two(data_offsets=[8]), bytes(16)), FormatError,
                   "safetensors entry 'b': bad data_offsets [8]", 62, "b"),
    "offsets reversed": (st(two(data_offsets=[16, 8]), bytes(16)), FormatError,
                         "safetensors entry 'b': bad data_offsets [16, 8]", 62, "b"),
    "half bytes": (st(two(dtype="F4", shape=[3], data_offsets=[8, 10]), bytes(10)),
                   FormatError,
                   "safetensors entry 'b': F4 shape [3] is not a whole number of bytes", 62,
                   "b"),
    "past the data": (st(two(), bytes(15)), CorruptError,
                      "safetensors entry 'b': data_offsets [8, 16] run past the 15 data bytes "
                      "of the file", 62, "b"),
    "size": (st(two(data_offsets=[8, 12]), bytes(12)), CorruptError,
             "safetensors entry 'b': F32 shape [2] needs 8 bytes, data_offsets [8, 12] hold 4",
             62, "b"),
    "overlap": (st(two(data_offsets=[4, 12]), bytes(16)), FormatError,
                "safetensors entries 'a' and 'b' overlap (data_offsets [0, 8] and [4, 12])",
                62, "b"),
    "gap": (st(two(data_offsets=[12, 20]), bytes(20)), FormatError,
            "safetensors data has a gap of 4 bytes before entry 'b' (data_offsets [12, 20])",
            128, "b"),
    "gap at the start": (st({"a": entry(offsets=(4, 12))}, bytes(12)), FormatError,
                         "safetensors data has a gap of 4 bytes before entry 'a' (data_offsets "
                         "[4, 12])", 64, "a"),
    "bytes after the last tensor": (st(two(), bytes(20)), FormatError,
                                    "safetensors data has 4 bytes after the last tensor (the "
                                    "tensors end at data offset 16)", 136, None),
    "lone surrogate": (st(b'{"\\ud800":' + json.dumps(entry()).encode() + b"}", bytes(8)),
                       FormatError, "safetensors entry '\\ud800': the name is not valid Unicode",
                       9, "\\ud800"),
    "escape in a name": (st({"\x1b[31m": entry("F99")}, bytes(8)), UnsupportedError,
                         "safetensors entry '\\x1b[31m': unknown dtype 'F99'", 9, "\\x1b[31m"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HEADERS))
def test_header_rule(case: str) -> None:
    data, error, message, offset, key = HEADERS[case]
    start = time.process_time()
    with pytest.raises(PthError) as info:
        read_safetensors_header(data, len(data))
    exc = info.value
    assert type(exc) is error
    assert (exc.message, exc.offset, exc.key_path) == (message, offset, key)
    assert exc.code is not None and exc.code.startswith("safetensors.")
    assert time.process_time() - start < 5


@pytest.mark.parametrize("case", [c for c in HEADERS if HEADERS[c][0][8:9] == b"{"])
def test_validate_reports_the_same_first_problem(case: str) -> None:
    data, _, message, offset, key = HEADERS[case]
    problems = check_safetensors(Source(io.BytesIO(data)))
    assert problems, case
    first = problems[0]
    assert (first.message, first.offset, first.key_path) == (message, offset, key)
    assert first.severity == "error"


def test_validate_reports_every_entry_past_the_first() -> None:
    header = {
        f"t{i}": entry("F99" if i % 2 else "F32", offsets=(8 * i, 8 * i + 8)) for i in range(6)
    }
    problems = check_safetensors(Source(io.BytesIO(st(header, bytes(48)))))
    assert [(p.code, p.key_path) for p in problems] == [
        ("safetensors.dtype", "t1"),
        ("safetensors.dtype", "t3"),
        ("safetensors.dtype", "t5"),
        ("safetensors.offsets", "t2"),
        ("safetensors.offsets", "t4"),
        ("safetensors.offsets", None),
    ]
    many = {f"t{i}": entry("F99") for i in range(1500)}
    problems = check_safetensors(Source(io.BytesIO(st(many))))
    assert len(problems) == 1001 and problems[-1].message == "... and 500 more safetensors problems"


def test_a_sound_file_has_no_problems() -> None:
    data = st(
        {"__metadata__": {"format": "pt"}, **two(), "e": entry(shape=(0, 3), offsets=(16, 16))},
        bytes(16),
    )
    assert check_safetensors(Source(io.BytesIO(data))) == []
    entries, meta = read_safetensors_header(data, len(data))
    assert [e.name for e in entries] == ["a", "b", "e"] and meta == {"format": "pt"}


def test_zero_size_tensor_with_huge_dims_through_every_reader(tmp_path: Path) -> None:
    data = st({"w": entry(shape=(0, 2**61), offsets=(0, 0))})
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    message = (
        "safetensors entry 'w': shape [0, 2305843009213693952] is too large: its "
        "non-zero dimensions of F32 hold more than 2**63 - 1 bytes"
    )
    with pytest.raises(FormatError, match=message.replace("[", r"\[").replace("*", r"\*")):
        read_safetensors_source(Source(path), Options(location_mapper(None), True, True))
    with pytest.raises(FormatError):
        read_safetensors(str(path), Content())
    ok = st({"w": entry(shape=(0, 2**60), offsets=(0, 0))})  # 2**62 bytes: numpy can
    parsed = read_safetensors_source(
        Source(io.BytesIO(ok)), Options(location_mapper(None), True, False)
    )
    assert parsed.obj["w"].shape == (0, 2**60)


def test_huge_metadata_number_in_convert_values(tmp_path: Path) -> None:
    """A ``pthfmt:`` metadata value holding a 9,000-digit number stays a string."""
    value = "9" * 9000
    data = st({"__metadata__": {"pthfmt:x": value}})
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    content = Content()
    read_safetensors(str(path), content)
    assert [(v.name, v.value) for v in content.entries] == [("x", value)]  # type: ignore[union-attr]


# -- npz -----------------------------------------------------------------------------------------


def npy(shape: Any, descr: str = "<f4", body: bytes = b"") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def npz(tmp: Path, members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> str:
    path = tmp / "a.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", method) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return str(path)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((-2,), "member 'w.npy': bad shape (-2,)"),
        ((3, -1), "member 'w.npy': bad shape (3, -1)"),
        (
            (2**100,),
            "member 'w.npy': shape (1267650600228229401496703205376,) is too large: "
            "its non-zero dimensions of float32 hold more than 2**63 - 1 bytes",
        ),
        (
            (0, 2**100),
            "member 'w.npy': shape (0, 1267650600228229401496703205376) is too "
            "large: its non-zero dimensions of float32 hold more than 2**63 - 1 "
            "bytes",
        ),
        (
            (0, 2**61),
            "member 'w.npy': shape (0, 2305843009213693952) is too large: its "
            "non-zero dimensions of float32 hold more than 2**63 - 1 bytes",
        ),
        ((1,) * 65, "member 'w.npy': bad shape (1, 1, 1, 1, 1, 1, ...)"),
    ],
)
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npy_shapes(tmp_path: Path, shape: Any, message: str, method: int) -> None:
    path = npz(tmp_path, [("w.npy", npy(shape))], method)
    with pytest.raises(FormatError) as info:
        read_npz(path, Content())
    assert info.value.message == message and info.value.record == "w.npy"


def test_npz_zero_size_and_big_but_empty_arrays_read(tmp_path: Path) -> None:
    path = npz(tmp_path, [("w.npy", npy((0, 2**40)))])
    content = Content()
    read_npz(path, content)
    (item,) = content.entries
    assert item.load().shape == (0, 2**40)  # type: ignore[union-attr]


def test_two_members_of_one_name(tmp_path: Path) -> None:
    body = np.zeros(2, np.float32).tobytes()
    path = npz(tmp_path, [("w.npy", npy((2,), body=body)), ("w.npy", npy((2,), body=body))])
    with pytest.raises(FormatError) as info:
        read_npz(path, Content())
    assert info.value.message == "npz member 'w.npy' appears twice"


def _bomb_npz(tmp: Path, count: int, n: int) -> str:
    """``count`` deflated members of an ``.npy`` header and ``n`` zero bytes each."""
    path = tmp / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            head = npy((n // 4,))
            with zf.open(f"w{i}.npy", "w", force_zip64=True) as fp:
                fp.write(head)
                for _ in range(n >> 20):
                    fp.write(bytes(1 << 20))
    return str(path)


def test_one_npz_deflate_bomb_is_a_limit(tmp_path: Path) -> None:
    path = _bomb_npz(tmp_path, 1, 64 << 20)  # 64 MiB from ~64 KiB
    start = time.process_time()
    with pytest.raises(LimitError) as info:
        read_npz(path, Content())
    assert time.process_time() - start < 2
    assert info.value.message.startswith("npz member 'w0.npy' inflates ")
    assert info.value.message.endswith(", over pthfmt's 256:1 bound (a decompression bomb?)")


def test_many_small_npz_bombs_are_a_limit_together(tmp_path: Path) -> None:
    path = _bomb_npz(tmp_path, 200, 1 << 20)  # 1 MiB each (within the per-member slack)
    size = Path(path).stat().st_size
    with pytest.raises(LimitError) as info:
        read_npz(path, Content())
    assert info.value.message.startswith("the compressed npz members up to 'w")
    assert info.value.message.endswith(
        f"over pthfmt's bound of 256 times the {size}-byte file (a decompression bomb?)"
    )


def test_a_genuine_compressed_npz_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((64, 64)).astype(np.float32), "z": np.zeros(1000)}
    np.savez_compressed(tmp_path / "ok.npz", **arrays)  # type: ignore[arg-type]
    content = Content()
    read_npz(str(tmp_path / "ok.npz"), content)
    got = {i.name: i.load() for i in content.entries}  # type: ignore[union-attr]
    assert all(np.array_equal(got[k], v) for k, v in arrays.items())
