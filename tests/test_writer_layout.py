"""The bytes pthfmt.save writes, against the bytes torch.save writes for the same objects.

pthfmt reproduces torch's pickle (memo included), its miniz zip layout (alignment, extras,
descriptors, zip64) and its ``.data/serialization_id``, so for the same state dict and the
same file name the two files are identical, byte for byte.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.serialization as ts
from hypothesis import given, settings
from hypothesis import strategies as st
from test_writer import from_torch, save_bytes, torch_load
from torch import nn

import pthfmt
from pthfmt.formats.zip import writer as zipwriter
from pthfmt.formats.zip.writer import (
    ZipWriter,
    archive_name_for_path,
    data_offset,
    std_hash,
    unordered_set_order,
)
from pthfmt.pickle.pickler import Pickler

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def both(obj: Any, tmp_path: Path, name: str = "ckpt.pt", convert: Any = from_torch,
         **kwargs: Any) -> tuple[bytes, bytes]:
    """torch.save(obj) and pthfmt.save(convert(obj)) under the same file name."""
    (tmp_path / "torch").mkdir(exist_ok=True)
    (tmp_path / "ours").mkdir(exist_ok=True)
    torch.save(obj, tmp_path / "torch" / name)
    pthfmt.save(convert(obj), tmp_path / "ours" / name, **kwargs)
    return (tmp_path / "torch" / name).read_bytes(), (tmp_path / "ours" / name).read_bytes()


def assert_identical(theirs: bytes, ours: bytes) -> None:
    if theirs != ours:
        at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b),
                  min(len(theirs), len(ours)))
        pytest.fail(f"files differ at byte {at} of {len(theirs)}/{len(ours)}: torch "
                    f"{theirs[at - 16:at + 16]!r} ours {ours[at - 16:at + 16]!r}")


def training_checkpoint() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = model(torch.randn(2, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"epoch": 7, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(), "loss": loss.item()}


# -- identical files -------------------------------------------------------------------------

def test_training_checkpoint_is_byte_identical(tmp_path: Path) -> None:
    assert_identical(*both(training_checkpoint(), tmp_path))


def test_every_dtype_and_value_kind_is_byte_identical(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
              torch.complex128, torch.uint16, torch.uint32, torch.uint64, torch.complex32,
              torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
              torch.float8_e5m2fnuz, torch.float8_e8m0fnu, torch.float4_e2m1fn_x2,
              torch.bits8, torch.bits16, torch.bits1x8, torch.bits2x4, torch.bits4x2]
    obj: dict[str, Any] = {}
    for dt in dtypes:
        size = torch.empty(0, dtype=dt).element_size()
        raw = torch.randint(0, 256, (3 * 4 * size,), dtype=torch.uint8, generator=g)
        obj[str(dt)] = raw.view(dt).view(3, 4) if size == 1 else raw.view(dt).reshape(3, 4)
    base = torch.arange(12.0)
    obj.update({
        "param": nn.Parameter(torch.ones(2, 2)), "frozen": nn.Parameter(
            torch.arange(3), requires_grad=False), "grad": torch.ones(3).requires_grad_(),
        "scalar": torch.tensor(2.5), "empty": torch.empty(0, 3), "base": base,
        "views": [base[2:5], base.view(3, 4).t(), base.view(3, 4)[:, 1]],
        "expanded": torch.ones(1, 3).expand(4, 3), "same": base,
        "values": [None, True, 2**40, -7, 1.25, "ü", b"\x00\xffbytes", 1 + 2j, {3, 1},
                   (), (1,), (1, 2, 3, 4), bytearray(b"x"), collections.Counter(x=1)],
        "device": torch.device("cuda", 1), "dtype": torch.bfloat16})
    assert_identical(*both(obj, tmp_path))


def test_many_storages_and_memo_entries_are_byte_identical(tmp_path: Path) -> None:
    """> 256 memo entries (LONG_BINPUT/LONG_BINGET), > 1000 items (SETITEMS batches) and
    enough records to grow the serialization id's hash table several times."""
    sd = collections.OrderedDict((f"layer.{i}.weight", torch.full((2,), float(i)))
                                 for i in range(1100))
    sd._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
        (f"layer.{i}", {"version": 1}) for i in range(1100))
    assert_identical(*both(sd, tmp_path))
    assert_identical(*both({str(i): torch.tensor([i]) for i in range(1000)}, tmp_path))


def test_streams_and_file_names_are_byte_identical(tmp_path: Path) -> None:
    obj = {"w": torch.arange(6.0).reshape(2, 3)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert_identical(buf.getvalue(), save_bytes(from_torch(obj)))
    for name in ("model.tar.gz", "noext", "my model.v2.pt", "ünï.pt", "x.pth"):
        assert_identical(*both(obj, tmp_path, name))


def test_device_tags_are_byte_identical(tmp_path: Path, monkeypatch: Any) -> None:
    # torch's _cuda_tag builds "cuda:<i>" per call; without a GPU, tag every storage that way.
    monkeypatch.setattr(ts, "location_tag", lambda storage: "cuda:" + str(0))
    obj = {"a": torch.ones(2), "b": torch.zeros(3), "a2": torch.ones(1), "d": "cuda:0"}

    def convert(o: Any) -> Any:
        return {k: pthfmt.Tensor(v.numpy(), device="cuda:0") if isinstance(v, torch.Tensor)
                else v for k, v in o.items()}

    assert_identical(*both(obj, tmp_path, convert=convert))


def test_data_starting_like_a_descriptor_is_byte_identical(tmp_path: Path) -> None:
    """torch's writer takes a write starting with ``PK\\7\\8`` for a data descriptor and mixes
    its "CRC" into the serialization id; so do we."""
    data = torch.frombuffer(bytearray(b"PK\x07\x08\x01\x02\x03\x04rest"), dtype=torch.uint8)
    assert_identical(*both({"d": data}, tmp_path))


def test_open_then_save_is_byte_identical(tmp_path: Path) -> None:
    """A torch file read lazily and written back is the same file."""
    base = torch.arange(10.0)
    for i, obj in enumerate([training_checkpoint(), {"p": nn.Parameter(torch.ones(3)),
                            "views": [base, base[3:], base.view(2, 5).t()], "tied": base,
                             "conj": torch.tensor([1 + 2j]).conj(), "u": torch.tensor(
                                 [1, 65535], dtype=torch.uint16), "e": torch.empty(0)}]):
        path = tmp_path / f"t{i}" / "ck.pt"
        path.parent.mkdir()
        torch.save(obj, path)
        with pthfmt.open(path) as ck:
            pthfmt.save(ck.obj, tmp_path / "ck.pt")
        assert_identical(path.read_bytes(), (tmp_path / "ck.pt").read_bytes())


# -- the container, record by record -------------------------------------------------------

def zip_layout(path: Path) -> tuple[list[tuple[Any, ...]], bytes]:
    """Every structure of a (possibly sparse) zip file except data, with CRCs zeroed."""
    entries = []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(size - 98)
        tail = f.read(98)
        cd_size, cd_offset = struct.unpack_from("<QQ", tail, 40)
        f.seek(cd_offset)
        cd = f.read(cd_size)
        pos = 0
        while pos < len(cd):
            fields = list(struct.unpack_from("<IHHHHHHIIIHHHHHII", cd, pos))
            name = cd[pos + 46:pos + 46 + fields[10]]
            extra = cd[pos + 46 + fields[10]:pos + 46 + fields[10] + fields[11]]
            big = struct.unpack_from(f"<{len(extra[4:]) // 8}Q", extra, 4) if extra else ()
            usize = big[0] if fields[9] == 0xFFFFFFFF else fields[9]
            offset = big[-1] if fields[16] == 0xFFFFFFFF else fields[16]
            f.seek(offset)
            local = f.read(30)
            nlen, xlen = struct.unpack_from("<HH", local, 26)
            local_rest = f.read(nlen + xlen)
            start = offset + 30 + nlen + xlen
            f.seek(start + usize)
            zip64 = usize >= 0xFFFFFFFF or offset >= 0xFFFFFFFF
            descriptor = bytearray(f.read(24 if zip64 else 16) if usize else b"")
            descriptor[4:8] = bytes(len(descriptor[4:8]))
            fields[7] = 0
            entries.append((name, fields, extra, local, local_rest, start, bytes(descriptor)))
            pos += 46 + fields[10] + fields[11] + fields[12]
    return entries, tail


def test_layout_details(tmp_path: Path) -> None:
    obj = {"a": np.arange(3, dtype=np.float32), "e": np.zeros(0), "b": np.ones((2, 2))}
    pthfmt.save(obj, tmp_path / "lay.pt")
    entries, _ = zip_layout(tmp_path / "lay.pt")
    names = [e[0].decode() for e in entries]
    assert names == ["lay/data.pkl", "lay/.format_version", "lay/.storage_alignment",
                     "lay/byteorder", "lay/data/0", "lay/data/1", "lay/data/2", "lay/version",
                     "lay/.data/serialization_id"]
    raw = (tmp_path / "lay.pt").read_bytes()
    for name, fields, _, local, local_rest, start, descriptor in entries:
        assert start % 64 == 0
        empty = name.endswith(b"data/1")
        assert struct.unpack_from("<HHH", local, 4) == (0, 0x0800 if empty else 0x0808, 0)
        assert local_rest[len(name):len(name) + 2] == b"FB"
        assert set(local_rest[len(name) + 4:]) <= {ord("Z")}
        assert fields[1:7] == [0, 0, 0x0800 if empty else 0x0808, 0, 0, 0]
        assert descriptor[:4] == (b"" if empty else b"PK\x07\x08")
    with zipfile.ZipFile(tmp_path / "lay.pt") as z:         # CRCs are right
        assert z.testzip() is None
        assert z.read("lay/version") == b"3\n" and z.read("lay/byteorder") == b"little"
        assert z.read("lay/.format_version") == b"1"
        assert z.read("lay/.storage_alignment") == b"64"
        assert len(z.read("lay/.data/serialization_id")) == 40
    assert raw[-22:-18] == b"PK\x05\x06" and raw[-42:-38] == b"PK\x06\x07"


def test_calculate_storage_offsets_reads_our_files(tmp_path: Path) -> None:
    """``.format_version`` 1 lets torch compute record offsets instead of reading local
    headers (mmap + calculate_storage_offsets); that only works if the layout is miniz's."""
    g = torch.Generator().manual_seed(3)
    obj = {f"t{i}": torch.randn(i % 7 + 1, generator=g).to(dt)
           for i, dt in enumerate([torch.float32, torch.float16, torch.int64, torch.uint8,
                                   torch.bool, torch.bfloat16, torch.uint16] * 3)}
    obj["empty"] = torch.empty(0)
    obj["after"] = torch.arange(5.0)
    pthfmt.save(from_torch(obj), tmp_path / "c.pt")
    from torch.utils.serialization import config
    old = config.load.calculate_storage_offsets
    config.load.calculate_storage_offsets = True
    try:
        loaded = torch_load(tmp_path / "c.pt", mmap=True)
    finally:
        config.load.calculate_storage_offsets = old
    for key, t in obj.items():
        assert torch.equal(loaded[key], t), key


def test_zip64_layout_matches_torch(tmp_path: Path, monkeypatch: Any) -> None:
    """Records of 4 GiB and more, and records after the 4 GiB mark, without writing 8 GiB:
    both files are sparse (torch's ``skip_data``; our data is skipped by the output)."""
    real_crc = zipwriter.crc32
    monkeypatch.setattr(zipwriter, "crc32",
                        lambda data, crc=0: 0 if len(data) >= 1 << 20 else real_crc(data, crc))

    class Sparse(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            n = memoryview(data).nbytes
            if n >= 1 << 20:
                self.f.seek(n, 1)                 # all zeros: leave a hole
            else:
                self.f.write(data)
            return n

    sizes = {"big": 2**32 + 100, "small": 6, "big2": 2**32 + 5, "e": 0, "s2": 3}
    with ts.skip_data():
        torch.save({k: torch.empty(n, dtype=torch.uint8 if n > 6 else torch.float32)
                    for k, n in sizes.items()}, tmp_path / "big.pt")
    ours = {k: np.zeros(n, np.uint8 if n > 6 else np.float32) for k, n in sizes.items()}
    with open(tmp_path / "ours.pt", "wb") as f:
        out = Sparse(f)
        pthfmt.save(ours, out, archive_name="big")
        f.truncate()
    theirs_entries, theirs_tail = zip_layout(tmp_path / "big.pt")
    ours_entries, ours_tail = zip_layout(tmp_path / "ours.pt")
    assert theirs_tail == ours_tail
    assert len(theirs_entries) == len(ours_entries) == 11
    for t, o in zip(theirs_entries, ours_entries):
        assert t == o
    big = next(e for e in ours_entries if e[0] == b"big/data/0")
    assert big[2][:4] == b"\x01\x00\x10\x00" and big[6][:4] == b"PK\x07\x08" and len(big[6]) == 24
    both_big = next(e for e in ours_entries if e[0] == b"big/data/2")
    assert both_big[2][:4] == b"\x01\x00\x18\x00"           # usize, csize, offset
    assert (tmp_path / "ours.pt").stat().st_size == (tmp_path / "big.pt").stat().st_size
    (tmp_path / "ours.pt").unlink()               # sparse, but 8 GiB to anyone listing them
    (tmp_path / "big.pt").unlink()


def test_data_offset_formula() -> None:
    """``detail::getOffset`` examples from torch files (see the format notes, §1.4/§1.5)."""
    assert data_offset(0, len("t/data.pkl"), 154) == 64
    assert data_offset(534, len("t/data/0"), 24) == 576
    assert data_offset(726, len("big/data/0"), 4294967396) == 832
    assert data_offset(4294968252, len("big/data/1"), 24) == 4294968320
    assert data_offset(0, 10, 1, alignment=4096) == 4096


def test_serialization_id_parts() -> None:
    """libstdc++ values, printed by a C++ program built with g++ 12."""
    assert std_hash(b"data.pkl") == 4941642132189851806
    names = ["data.pkl", ".format_version", ".storage_alignment", "byteorder", "data/0",
             "data/1", "data/2", "version"]
    assert unordered_set_order(names) == ["version", "data/2", "data/0", "data/1", "byteorder",
                                          ".storage_alignment", ".format_version", "data.pkl"]


def test_zipwriter_refuses_misuse() -> None:
    out = io.BytesIO()
    w = ZipWriter(out.write, "a")
    w.add("x", b"1")
    with pytest.raises(ValueError, match="twice"):
        w.add("x", b"2")
    with pytest.raises(pthfmt.PthError, match="produced 2 bytes"):
        w.add("y", [b"ab"], 3)
    with pytest.raises(ValueError, match="alignment"):
        ZipWriter(out.write, "a", alignment=0)


@pytest.mark.parametrize(("path", "name"), [
    ("names/model.pth", "model"), ("names/model.tar.gz", "model.tar"), ("noext", "noext"),
    ("a/my model.v2.pt", "my model.v2"), ("a\\b\\win.pt", "win"), ("ünï.pt", "archive"),
    ("d/.hidden", "archive")])
def test_archive_names(path: str, name: str) -> None:
    assert archive_name_for_path(path) == name


def test_archive_names_agree_with_torch(tmp_path: Path) -> None:
    for file_name in ("model.pth", "model.tar.gz", "noext", "my model.v2.pt", "ünï.pt"):
        torch.save({}, tmp_path / file_name)
        with zipfile.ZipFile(tmp_path / file_name) as z:
            torch_name = z.namelist()[0].split("/")[0]
        assert archive_name_for_path(str(tmp_path / file_name)) == torch_name


# -- the legacy format ------------------------------------------------------------------------

def test_legacy_layout(tmp_path: Path) -> None:
    """Five pickles, then per storage (keys sorted as strings) an int64 count and the data."""
    obj = {f"t{i}": np.full(i + 1, i, np.int16) for i in range(12)}
    data = save_bytes(obj, format="legacy")
    f = io.BytesIO(data)
    assert pickle.load(f) == 0x1950A86A20F9469CFC6C
    assert pickle.load(f) == 1001
    assert pickle.load(f) == {"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}

    class Name(str):
        def __call__(self, *args: Any) -> Any:
            return (str(self), args)

    class Peek(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return pid

        def find_class(self, module: str, name: str) -> Any:
            return Name(f"{module}.{name}")

    main = Peek(f).load()
    assert main["t3"][0] == "torch._utils._rebuild_tensor_v2"
    assert main["t3"][1][0] == ("storage", "torch.ShortStorage", "3", "cpu", 4, None)
    keys = pickle.load(f)
    assert keys == sorted(str(i) for i in range(12))
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        assert count == int(key) + 1
        assert np.frombuffer(f.read(2 * count), "<i2").tolist() == [int(key)] * count
    assert f.read() == b""
    loaded = torch_load(data)
    assert all(loaded[k].tolist() == v.tolist() for k, v in obj.items())


# -- the pickler against CPython's -----------------------------------------------------------

def _refuse(obj: Any, path: Any) -> Any:
    raise TypeError(type(obj))


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats() | st.text(max_size=5)
    | st.binary(min_size=1, max_size=5) | st.complex_numbers()
    | st.sampled_from(["shared", "x", ""]),
    lambda children: (st.lists(children, max_size=5) | st.lists(children, max_size=5).map(tuple)
                      | st.dictionaries(st.text(max_size=3), children, max_size=5)
                      | st.dictionaries(st.text(max_size=3), children, max_size=5).map(
                          collections.OrderedDict)
                      | st.sets(st.integers(), max_size=4)),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(obj=PLAIN, repeat=st.integers(1, 3))
def test_pickler_matches_cpython(obj: Any, repeat: int) -> None:
    """Same bytes as ``pickle.dumps(obj, protocol=2)`` (memo and batching included)."""
    value = [obj] * repeat
    assert Pickler(_refuse).dump(value) == pickle.dumps(value, protocol=2)


def test_pickler_batches_like_cpython() -> None:
    for n in (1, 2, 999, 1000, 1001, 2000, 2001):
        for value in ({str(i): i for i in range(n)}, list(range(n)),
                      collections.OrderedDict((str(i), i) for i in range(n)), set(range(n))):
            assert Pickler(_refuse).dump(value) == pickle.dumps(value, protocol=2), (n, value)
    shared = ["s"] * 300 + [list(range(3))] * 3
    assert Pickler(_refuse).dump(shared) == pickle.dumps(shared, protocol=2)
    assert Pickler(_refuse).dump(b"") != pickle.dumps(b"", protocol=2)   # see the docstring
    assert torch_load(save_bytes(b"")) == b""


# -- a real >4 GiB record ---------------------------------------------------------------------

@pytest.mark.slow
def test_record_over_4_gib(tmp_path: Path) -> None:
    big = np.zeros(2**32 + 100, np.uint8)
    big[:5] = [1, 2, 3, 4, 5]
    big[-3:] = [7, 8, 9]
    obj = {"big": big, "after": np.arange(6, dtype=np.float32), "empty": np.zeros(0)}
    path = tmp_path / "big.pt"
    try:
        check_big_file(path, obj)
    finally:
        path.unlink(missing_ok=True)              # pytest keeps tmp dirs; 4 GiB is too much


def check_big_file(path: Path, obj: dict[str, np.ndarray]) -> None:
    pthfmt.save(obj, path)
    entries, _ = zip_layout(path)
    assert entries[4][0] == b"big/data/0" and entries[4][2][:4] == b"\x01\x00\x10\x00"
    assert entries[5][1][16] == 0xFFFFFFFF                     # data/1 lies past 4 GiB
    loaded = torch_load(path, mmap=True)
    assert loaded["big"][:5].tolist() == [1, 2, 3, 4, 5]
    assert loaded["big"][-3:].tolist() == [7, 8, 9]
    assert loaded["big"].shape == (2**32 + 100,)
    assert loaded["after"].tolist() == [0, 1, 2, 3, 4, 5] and loaded["empty"].numel() == 0
    with zipfile.ZipFile(path) as z, z.open("big/data/0") as member:
        while member.read(64 << 20):                            # raises on a bad CRC
            pass
    with pthfmt.open(path) as ck:
        assert ck.obj["big"].numpy()[-3:].tolist() == [7, 8, 9]
