"""The bytes pthfmt.save writes, against the bytes torch.save writes for the same objects.

pthfmt reproduces torch's pickle (memo included), its miniz zip layout (alignment, extras,
descriptors, zip64) and its ``.data/serialization_id``, so for the same state dict and the
same file name the two files are identical, byte for byte.  The layout checks that need no
torch are in ``tests/unit/test_writer_layout.py``.
"""

from __future__ import annotations

import collections
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]
torch = pytest.importorskip("torch")

import torch.serialization as ts  # noqa: E402
from torch import nn  # noqa: E402

import pthfmt  # noqa: E402
from pthfmt.formats.zip import writer as zipwriter  # noqa: E402
from pthfmt.formats.zip.writer import archive_name_for_path  # noqa: E402
from tests.support.host import require_free_disk, sparse_files  # noqa: E402
from tests.support.writer import save_bytes, zip_layout  # noqa: E402
from tests.support.writer_torch import from_torch, torch_load  # noqa: E402


def both(
    obj: Any, tmp_path: Path, name: str = "ckpt.pt", convert: Any = from_torch, **kwargs: Any
) -> tuple[bytes, bytes]:
    """torch.save(obj) and pthfmt.save(convert(obj)) under the same file name."""
    (tmp_path / "torch").mkdir(exist_ok=True)
    (tmp_path / "ours").mkdir(exist_ok=True)
    torch.save(obj, tmp_path / "torch" / name)
    pthfmt.save(convert(obj), tmp_path / "ours" / name, **kwargs)
    return (tmp_path / "torch" / name).read_bytes(), (tmp_path / "ours" / name).read_bytes()


def assert_identical(theirs: bytes, ours: bytes) -> None:
    if theirs != ours:
        at = next(
            (i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours))
        )
        pytest.fail(
            f"files differ at byte {at} of {len(theirs)}/{len(ours)}: torch "
            f"{theirs[at - 16 : at + 16]!r} ours {ours[at - 16 : at + 16]!r}"
        )


def training_checkpoint() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = model(torch.randn(2, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": loss.item(),
    }


# -- identical files -------------------------------------------------------------------------


def test_training_checkpoint_is_byte_identical(tmp_path: Path) -> None:
    assert_identical(*both(training_checkpoint(), tmp_path))


def test_every_dtype_and_value_kind_is_byte_identical(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    dtypes = [
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.complex32,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.float8_e4m3fnuz,
        torch.float8_e5m2fnuz,
        torch.float8_e8m0fnu,
        torch.float4_e2m1fn_x2,
        torch.bits8,
        torch.bits16,
        torch.bits1x8,
        torch.bits2x4,
        torch.bits4x2,
    ]
    obj: dict[str, Any] = {}
    for dt in dtypes:
        size = torch.empty(0, dtype=dt).element_size()
        raw = torch.randint(0, 256, (3 * 4 * size,), dtype=torch.uint8, generator=g)
        obj[str(dt)] = raw.view(dt).view(3, 4) if size == 1 else raw.view(dt).reshape(3, 4)
    base = torch.arange(12.0)
    obj.update(
        {
            "param": nn.Parameter(torch.ones(2, 2)),
            "frozen": nn.Parameter(torch.arange(3), requires_grad=False),
            "grad": torch.ones(3).requires_grad_(),
            "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 3),
            "base": base,
            "views": [base[2:5], base.view(3, 4).t(), base.view(3, 4)[:, 1]],
            "expanded": torch.ones(1, 3).expand(4, 3),
            "same": base,
            "values": [
                None,
                True,
                2**40,
                -7,
                1.25,
                "ü",
                b"\x00\xffbytes",
                1 + 2j,
                {3, 1},
                (),
                (1,),
                (1, 2, 3, 4),
                bytearray(b"x"),
                collections.Counter(x=1),
            ],
            "device": torch.device("cuda", 1),
            "dtype": torch.bfloat16,
        }
    )
    assert_identical(*both(obj, tmp_path))


def test_many_storages_and_memo_entries_are_byte_identical(tmp_path: Path) -> None:
    """> 256 memo entries (LONG_BINPUT/LONG_BINGET), > 1000 items (SETITEMS batches) and
    enough records to grow the serialization id's hash table several times."""
    sd = collections.OrderedDict(
        (f"layer.{i}.weight", torch.full((2,), float(i))) for i in range(1100)
    )
    sd._metadata = collections.OrderedDict(  # type: ignore[attr-defined]
        (f"layer.{i}", {"version": 1}) for i in range(1100)
    )
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
        return {
            k: pthfmt.Tensor(v.numpy(), device="cuda:0") if isinstance(v, torch.Tensor) else v
            for k, v in o.items()
        }

    assert_identical(*both(obj, tmp_path, convert=convert))


def test_data_starting_like_a_descriptor_is_byte_identical(tmp_path: Path) -> None:
    """torch's writer takes a write starting with ``PK\\7\\8`` for a data descriptor and mixes
    its "CRC" into the serialization id; so do we."""
    data = torch.frombuffer(bytearray(b"PK\x07\x08\x01\x02\x03\x04rest"), dtype=torch.uint8)
    assert_identical(*both({"d": data}, tmp_path))


def test_open_then_save_is_byte_identical(tmp_path: Path) -> None:
    """A torch file read lazily and written back is the same file."""
    base = torch.arange(10.0)
    for i, obj in enumerate(
        [
            training_checkpoint(),
            {
                "p": nn.Parameter(torch.ones(3)),
                "views": [base, base[3:], base.view(2, 5).t()],
                "tied": base,
                "conj": torch.tensor([1 + 2j]).conj(),
                "u": torch.tensor([1, 65535], dtype=torch.uint16),
                "e": torch.empty(0),
            },
        ]
    ):
        path = tmp_path / f"t{i}" / "ck.pt"
        path.parent.mkdir()
        torch.save(obj, path)
        with pthfmt.open(path) as ck:
            pthfmt.save(ck.obj, tmp_path / "ck.pt")
        assert_identical(path.read_bytes(), (tmp_path / "ck.pt").read_bytes())


# -- the container, record by record -------------------------------------------------------


def test_calculate_storage_offsets_reads_our_files(tmp_path: Path) -> None:
    """``.format_version`` 1 lets torch compute record offsets instead of reading local
    headers (mmap + calculate_storage_offsets); that only works if the layout is miniz's."""
    g = torch.Generator().manual_seed(3)
    obj = {
        f"t{i}": torch.randn(i % 7 + 1, generator=g).to(dt)
        for i, dt in enumerate(
            [
                torch.float32,
                torch.float16,
                torch.int64,
                torch.uint8,
                torch.bool,
                torch.bfloat16,
                torch.uint16,
            ]
            * 3
        )
    }
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
    if not sparse_files(tmp_path):
        require_free_disk(tmp_path, 17 << 30)  # two 8 GiB files, written in full
    real_crc = zipwriter.crc32
    monkeypatch.setattr(
        zipwriter, "crc32", lambda data, crc=0: 0 if len(data) >= 1 << 20 else real_crc(data, crc)
    )

    class Sparse(io.RawIOBase):
        def __init__(self, f: Any) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            n = memoryview(data).nbytes
            if n >= 1 << 20:
                self.f.seek(n, 1)  # all zeros: leave a hole
            else:
                self.f.write(data)
            return n

    sizes = {"big": 2**32 + 100, "small": 6, "big2": 2**32 + 5, "e": 0, "s2": 3}
    with ts.skip_data():
        torch.save(
            {
                k: torch.empty(n, dtype=torch.uint8 if n > 6 else torch.float32)
                for k, n in sizes.items()
            },
            tmp_path / "big.pt",
        )
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
    assert both_big[2][:4] == b"\x01\x00\x18\x00"  # usize, csize, offset
    assert (tmp_path / "ours.pt").stat().st_size == (tmp_path / "big.pt").stat().st_size
    (tmp_path / "ours.pt").unlink()  # sparse, but 8 GiB to anyone listing them
    (tmp_path / "big.pt").unlink()


def test_archive_names_agree_with_torch(tmp_path: Path) -> None:
    for file_name in ("model.pth", "model.tar.gz", "noext", "my model.v2.pt", "ünï.pt"):
        torch.save({}, tmp_path / file_name)
        with zipfile.ZipFile(tmp_path / file_name) as z:
            torch_name = z.namelist()[0].split("/")[0]
        assert archive_name_for_path(str(tmp_path / file_name)) == torch_name


# -- the legacy format and the pickler, read by torch ----------------------------------------


def test_torch_reads_the_legacy_layout() -> None:
    """The file of tests/unit/test_writer_layout.py::test_legacy_layout, read by torch."""
    obj = {f"t{i}": np.full(i + 1, i, np.int16) for i in range(12)}
    loaded = torch_load(save_bytes(obj, format="legacy"))
    assert all(loaded[k].tolist() == v.tolist() for k, v in obj.items())


def test_torch_reads_an_empty_bytes_value() -> None:
    """Our pickler writes ``b""`` unlike CPython's (tests/unit/test_writer_layout.py::
    test_pickler_batches_like_cpython): torch reads it all the same."""
    assert torch_load(save_bytes(b"")) == b""


# -- a real >4 GiB record ---------------------------------------------------------------------


@pytest.mark.slow
def test_record_over_4_gib(tmp_path: Path) -> None:
    require_free_disk(tmp_path, (4 << 30) + (1 << 20))
    big = np.zeros(2**32 + 100, np.uint8)
    big[:5] = [1, 2, 3, 4, 5]
    big[-3:] = [7, 8, 9]
    obj = {"big": big, "after": np.arange(6, dtype=np.float32), "empty": np.zeros(0)}
    path = tmp_path / "big.pt"
    try:
        check_big_file(path, obj)
    finally:
        path.unlink(missing_ok=True)  # pytest keeps tmp dirs; 4 GiB is too much


def check_big_file(path: Path, obj: dict[str, np.ndarray]) -> None:
    pthfmt.save(obj, path)
    entries, _ = zip_layout(path)
    assert entries[4][0] == b"big/data/0" and entries[4][2][:4] == b"\x01\x00\x10\x00"
    assert entries[5][1][16] == 0xFFFFFFFF  # data/1 lies past 4 GiB
    loaded = torch_load(path, mmap=True)
    assert loaded["big"][:5].tolist() == [1, 2, 3, 4, 5]
    assert loaded["big"][-3:].tolist() == [7, 8, 9]
    assert loaded["big"].shape == (2**32 + 100,)
    assert loaded["after"].tolist() == [0, 1, 2, 3, 4, 5] and loaded["empty"].numel() == 0
    with zipfile.ZipFile(path) as z, z.open("big/data/0") as member:
        while member.read(64 << 20):  # raises on a bad CRC
            pass
    with pthfmt.open(path) as ck:
        assert ck.obj["big"].numpy()[-3:].tolist() == [7, 8, 9]
