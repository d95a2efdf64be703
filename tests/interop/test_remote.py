"""Remote checkpoints (issue 16): ``pthfmt.open``/``load``/``validate`` of http:// URLs, any
fsspec URL and seekable file objects, against a real HTTP server on a free loopback port
(aiohttp's static file responses, ``tests/support/static_server.py``) that honours ``Range``
and counts the body bytes it sends.

Values are compared bit for bit with the local file (and torch's tensors); bytes transferred,
counted on the server side, with the issue's bounds: ``open`` of a zip checkpoint costs at
most its central directory + ``data.pkl`` + 64 KiB, of a legacy file its pickles and storage
counts (+ 64 KiB of read-ahead), never a storage nobody asked for.  A second server ignores
``Range`` (and says so), another sends short bodies (``tests/support/http_server.py``, a
small server of our own for what no real server does on purpose); files change between
requests."""

from __future__ import annotations

import gc
import io
import itertools
import json
import struct
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

import pthfmt  # noqa: E402
from pthfmt.cli import main as cli_main  # noqa: E402
from pthfmt.errors import PthError  # noqa: E402
from pthfmt.remote import RemoteError, RemoteSource  # noqa: E402
from tests.support.http_server import FileServer, serve  # noqa: E402
from tests.support.static_server import StaticServer, serve_static  # noqa: E402

KIB = 1024


def state_dict() -> dict[str, Any]:
    """A state dict of 40 storages, from 4-byte scalars to 256 KiB matrices, mixed dtypes
    (bf16 and int64 among them) and a tied pair."""
    gen = torch.Generator().manual_seed(16)
    sd: dict[str, Any] = {}
    for i in range(12):
        sd[f"layers.{i}.weight"] = torch.randn(256, 256, generator=gen)
        sd[f"layers.{i}.bias"] = torch.randn(256, generator=gen).to(torch.bfloat16)
        sd[f"layers.{i}.steps"] = torch.tensor(i, dtype=torch.int64)
    sd["embed.weight"] = torch.randn(1000, 64, generator=gen).to(torch.float16)
    sd["head.weight"] = sd["embed.weight"]  # tied
    sd["scale"] = torch.tensor(0.5)
    return sd


@pytest.fixture(scope="module", autouse=True)
def _close_sessions() -> Iterator[None]:
    """Close fsspec's HTTP sessions after this module: their keep-alive timers would
    otherwise fire later, in fsspec's event-loop thread, in the middle of other tests
    (tests/unit/test_no_cycles.py counts every thread's garbage)."""
    yield
    from fsspec.implementations.http import HTTPFileSystem

    HTTPFileSystem.clear_instance_cache()
    gc.collect()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("remote")
    sd = state_dict()
    torch.save(sd, folder / "model.pt")
    torch.save(sd, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return {"zip": folder / "model.pt", "legacy": folder / "legacy.pt"}


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[StaticServer]:
    with serve_static() as s:
        for path in files.values():
            s.put(path.name, path)
        yield s


@pytest.fixture(scope="module")
def no_range_server(files: dict[str, Path]) -> Iterator[FileServer]:
    with serve(ranges=False) as s:
        for path in files.values():
            s.put(path.name, path)
        yield s


def raw(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def torch_raw(t: Any) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def zip_bound(path: Path) -> int:
    """The central directory's size + data.pkl's size + 64 KiB."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        cd = sum(46 + len(i.filename.encode()) + len(i.extra) + len(i.comment) for i in infos)
        pkl = next(i for i in infos if i.filename.endswith("/data.pkl")).compress_size
    return cd + pkl + 64 * KIB


# -- zip ---------------------------------------------------------------------------------------
def test_open_zip_reads_directory_and_pickle_only(server: StaticServer, files: dict[str, Path]):
    server.stats.reset()
    with pthfmt.open(server.url("model.pt")) as ck:
        keys = [k for k, _ in ck.tensors()]
        shapes = {k: ref.shape for k, ref in ck.tensors()}
    assert len(keys) == 38  # (the tied head shares embed's TensorRef: visited once)
    assert shapes["layers.3.weight"] == (256, 256)
    size = files["zip"].stat().st_size
    assert size > 3_000_000
    assert server.stats.body_bytes <= zip_bound(files["zip"]) < size // 20


def test_open_many_records_stays_within_the_bound(tmp_path: Path):
    """3,000 small storages: open reads no storage's local header (each is read with its
    data, on first use), so the directory + data.pkl + 64 KiB bound holds at any count."""
    sd = {f"block.{i}.scale": torch.full((4,), float(i)) for i in range(3000)}
    torch.save(sd, tmp_path / "many.pt")
    with serve_static() as s:
        url = s.put("many.pt", tmp_path / "many.pt")
        with pthfmt.open(url) as ck:
            refs = dict(ck.tensors())
            opened = s.stats.body_bytes
            got = refs["block.1234.scale"].numpy()
        assert opened <= zip_bound(tmp_path / "many.pt")
        assert got.tolist() == [1234.0] * 4
        assert s.stats.body_bytes - opened <= 30 + 60 + 72 + 16 + 2 * 1024  # (+ joined gaps)


def test_touching_one_tensor_fetches_its_storage_once(server: StaticServer):
    ck = pthfmt.open(server.url("model.pt"))
    refs = dict(ck.tensors())
    server.stats.reset()
    got = refs["layers.7.weight"].numpy()
    # its local header (30 bytes, its name, torch's padding) and its data, in one request
    assert 256 * 256 * 4 < server.stats.body_bytes <= 256 * 256 * 4 + 30 + 40 + 72
    data_requests = [r for r in server.stats.ranges if r[1] > 0]
    assert len(data_requests) == 1
    again = refs["layers.7.weight"].numpy()
    assert raw(got) == raw(again)
    assert len([r for r in server.stats.ranges if r[1] > 0]) == 1  # cached: not fetched twice


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_values_bit_for_bit(server: StaticServer, files: dict[str, Path], kind: str):
    sd = state_dict()
    local = pthfmt.load(files[kind])
    with pthfmt.open(server.url(files[kind].name)) as ck:
        lazy = {k: ref.numpy() for k, ref in ck.tensors()}
    loaded = pthfmt.load(server.url(files[kind].name))
    for key, t in sd.items():
        assert raw(loaded[key]) == raw(local[key]) == torch_raw(t), key
        if key != "head.weight":
            assert raw(lazy[key]) == torch_raw(t), key
    assert loaded["head.weight"].base is loaded["embed.weight"].base  # still one storage


def test_load_fetches_the_file_once(server: StaticServer, files: dict[str, Path]):
    server.stats.reset()
    pthfmt.load(server.url("model.pt"))
    assert server.stats.body_bytes == files["zip"].stat().st_size


# -- legacy ------------------------------------------------------------------------------------
def legacy_layout(path: Path) -> tuple[int, int]:
    """(end of the storage-key list, number of storages) of a legacy file, by pickletools."""
    import pickletools

    data = path.read_bytes()
    pos = 0
    for _ in range(5):
        last = max(at for _op, _arg, at in pickletools.genops(data[pos:]))
        pos += last + 1
    return pos, len(state_dict()) - 1


def test_open_legacy_skips_storages(server: StaticServer, files: dict[str, Path]):
    keys_end, n = legacy_layout(files["legacy"])
    server.stats.reset()
    with pthfmt.open(server.url("legacy.pt")) as ck:
        assert ck.format == "legacy"
        assert len(ck.storages) == n
    got = server.stats.body_bytes
    # header, pickles and key list, one 8-byte count per storage, and read-ahead
    assert keys_end <= got <= keys_end + 8 * n + 64 * KIB
    assert got < files["legacy"].stat().st_size // 20


# -- servers that misbehave --------------------------------------------------------------------
def test_server_without_range_open_refused(no_range_server: FileServer):
    url = no_range_server.url("model.pt")
    no_range_server.stats.reset()
    with pytest.raises(RemoteError) as info:
        pthfmt.open(url)
    assert str(info.value) == (
        f"{url}: the server does not accept Range requests, so the file can only be read "
        "whole (pthfmt.load and validate do that; or download it first)"
    )
    assert no_range_server.stats.body_bytes == 0


def test_server_without_range_load_downloads_once(
    no_range_server: StaticServer, files: dict[str, Path]
):
    no_range_server.stats.reset()
    got = pthfmt.load(no_range_server.url("model.pt"))
    assert raw(got["layers.0.weight"]) == torch_raw(state_dict()["layers.0.weight"])
    assert no_range_server.stats.body_bytes == files["zip"].stat().st_size


def test_server_without_range_validate_no_data_downloads_once(
    no_range_server: FileServer, files: dict[str, Path]
):
    no_range_server.stats.reset()
    report = pthfmt.validate(no_range_server.url("model.pt"), data=False)
    assert report.ok and [p.code for p in report.problems] == ["data.skipped"]
    assert no_range_server.stats.body_bytes == files["zip"].stat().st_size


def test_server_that_lies_about_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept-Ranges says bytes, but every answer is 200 with the whole body: a read at the
    start takes what it asked for (and a chunk) and hangs up, a read past the start is refused:
    never the whole 48 MiB file."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(12 << 20)}, path)
    with serve(ranges=False) as s:
        url = s.put("big.pt", path)
        import fsspec.implementations.http as http

        real = http._file_info

        async def says_partial(*args: Any, **kwargs: Any) -> dict[str, Any]:
            info = await real(*args, **kwargs)
            info.pop("partial", None)
            return info

        monkeypatch.setattr(http, "_file_info", says_partial)
        with pytest.raises(RemoteError, match="doesn't appear to support range requests"):
            pthfmt.open(url)
        assert s.stats.body_bytes < 16 << 20


def test_short_body(files: dict[str, Path]):
    with serve(short=10) as s:
        url = s.put("model.pt", files["zip"])
        with pytest.raises(RemoteError) as info:
            pthfmt.open(url)
    size = files["zip"].stat().st_size
    assert str(info.value) == (
        f"{url}: asked for 4096 bytes at offset 0 of the {size}-byte file, got 4086 (a short "
        "body, or a server that ignores Range requests) (offset 0)"
    )


def test_file_changes_between_requests(files: dict[str, Path]):
    with serve_static() as s:
        url = s.put("model.pt", files["zip"])
        ck = pthfmt.open(url)
        ref = dict(ck.tensors())["layers.1.weight"]
        s.put("model.pt", files["legacy"].read_bytes())
        with pytest.raises(RemoteError, match=r"changed while it was being read \(size "):
            ref.numpy()


def test_missing_file(server: StaticServer):
    url = server.url("nope.pt")
    with pytest.raises(FileNotFoundError) as info:
        pthfmt.open(url)
    assert info.value.filename == url
    assert info.value.strerror == (
        f"not found or unreachable (ClientResponseError: 404, message='Not Found', url='{url}')"
    )


def test_cli_validate_and_diff_urls(server: StaticServer, files: dict[str, Path]):
    import subprocess

    from tests.support import ROOT

    url = server.url("model.pt")
    run = [sys.executable, "-m", "pthfmt"]
    done = subprocess.run([*run, "validate", url], capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, f"{url}: ok (zip)\n")
    other = server.url("legacy.pt")
    done = subprocess.run([*run, "diff", url, other], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"A: {url}: 39 tensors, 39 entries\nB: {other}: 39 tensors, 39 entries\n"
        "39 entries equal. load_state_dict(strict=True) would accept B; all values equal.\n"
    )


def test_fsspec_missing_names_the_extra(
    server: StaticServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(PthError) as info:
        pthfmt.open(server.url("model.pt"))
    assert str(info.value) == "reading remote files needs fsspec: pip install 'pthfmt[remote]'"
    assert isinstance(info.value, RemoteError)
    # validate: a file that cannot be read here, not a broken file (exit status 2, not 1)
    report = pthfmt.validate(server.url("model.pt"))
    assert report.codes == ["file.unreadable"] and not report.ok
    assert cli_main(["validate", server.url("model.pt")]) == 2
    assert capsys.readouterr().out == (
        f"{server.url('model.pt')}: unreadable\n"
        "  error    file.unreadable  reading remote files needs fsspec: "
        "pip install 'pthfmt[remote]'\n"
    )


# -- validate, other URLs, file objects --------------------------------------------------------
def test_validate_url(server: StaticServer, files: dict[str, Path]):
    server.stats.reset()
    report = pthfmt.validate(server.url("model.pt"))
    local = pthfmt.validate(files["zip"])
    assert report.ok and local.ok
    assert [p.code for p in report.problems] == [p.code for p in local.problems]
    assert server.stats.body_bytes == files["zip"].stat().st_size  # (CRCs read the data)


def test_memory_url(files: dict[str, Path]):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/remote-test/model.pt", files["zip"].read_bytes())
    try:
        with pthfmt.open("memory:///remote-test/model.pt") as ck:
            got = dict(ck.tensors())["embed.weight"].numpy()
        assert raw(got) == torch_raw(state_dict()["embed.weight"])
    finally:
        fs.rm("/remote-test/model.pt")


class Reader(io.RawIOBase):
    """A seekable binary file object that is not a local file, counting the bytes read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.read_bytes = data, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = [pos, self.pos + pos, len(self.data) + pos][whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        chunk = self.data[self.pos : self.pos + len(b)]
        b[: len(chunk)] = chunk
        self.pos += len(chunk)
        self.read_bytes += len(chunk)
        return len(chunk)


def test_file_object_read_lazily(files: dict[str, Path]):
    data = files["zip"].read_bytes()
    f = Reader(data)
    with pthfmt.open(f) as ck:
        assert isinstance(ck._src, RemoteSource)
        got = dict(ck.tensors())["layers.11.bias"].numpy()
    assert raw(got) == torch_raw(state_dict()["layers.11.bias"])
    assert f.read_bytes <= zip_bound(files["zip"]) + 256 * 2
    assert raw(pthfmt.load(Reader(data))["scale"]) == struct.pack("<f", 0.5)


def test_local_paths_keep_the_map(files: dict[str, Path]):
    from pthfmt.source import Source

    src = Source(files["zip"])
    assert type(src) is Source and src.mapped
    src = Source(f"file://{files['zip']}")
    assert type(src) is Source and src.mapped
    with open(files["zip"], "rb") as fh:
        assert type(Source(fh)) is Source


def torch_shards(sd: dict[str, Any], folder: Path, limit: int = 1 << 20) -> None:
    """``sd`` saved by torch as ``save_pretrained`` lays out a sharded checkpoint: shards of
    at most ``limit`` bytes (a larger tensor alone), named ``pytorch_model-0000i-of-0000n.bin``,
    and ``pytorch_model.bin.index.json``."""
    groups: list[dict[str, Any]] = [{}]
    size = 0
    for key, t in sd.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > limit:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += n
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        torch.save(group, folder / name)
        weight_map.update(dict.fromkeys(group, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


# -- sharded -----------------------------------------------------------------------------------
def test_sharded_by_url_opens_shards_as_keys_are_touched(tmp_path: Path):
    sd = state_dict()
    del sd["head.weight"]  # (tied: save_pretrained keeps one name)
    torch_shards(sd, tmp_path)
    index = tmp_path / "pytorch_model.bin.index.json"
    shards = sorted(p for p in tmp_path.glob("pytorch_model-*.bin"))
    assert len(shards) >= 3
    with serve_static() as s:
        for p in (index, *shards):
            s.put(p.name, p)
        s.stats.reset()
        with pthfmt.load_sharded(s.url(index.name)) as ck:
            assert s.stats.body_bytes == index.stat().st_size  # the index alone
            assert sorted(ck) == sorted(sd)
            got = ck["layers.5.weight"]
            owner = ck.weight_map["layers.5.weight"]
            assert list(ck.shards) == [owner]  # one shard opened
            assert raw(got) == torch_raw(sd["layers.5.weight"])
            size = (tmp_path / owner).stat().st_size
            assert s.stats.body_bytes <= index.stat().st_size + zip_bound(tmp_path / owner) + (
                256 * 256 * 4
            )
            assert s.stats.body_bytes < index.stat().st_size + size
            for key, t in sd.items():
                assert raw(ck[key]) == torch_raw(t), key


def test_sharded_by_url_checks_the_index(tmp_path: Path):
    sd = {"a": torch.ones(3), "b": torch.zeros(300_000)}
    torch_shards(sd, tmp_path)
    index = tmp_path / "pytorch_model.bin.index.json"
    doc = json.loads(index.read_text())
    owners = doc["weight_map"]
    assert owners["a"] != owners["b"]
    owners["a"], owners["b"] = owners["b"], owners["a"]
    index.write_text(json.dumps(doc))
    with serve_static() as s:
        for p in tmp_path.iterdir():
            s.put(p.name, p)
        with pthfmt.load_sharded(s.url(index.name)) as ck:
            with pytest.raises(pthfmt.FormatError) as info:
                ck["a"]
    assert str(info.value) == (
        f"key 'b' is in shard '{owners['a']}' but the index puts it in '{owners['b']}'"
    )


# -- the range bookkeeping ---------------------------------------------------------------------


class Counting(Reader):
    """A :class:`Reader` that records every range asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[tuple[int, int]] = []

    def readinto(self, b: Any) -> int:
        self.asked.append((self.pos, len(b)))
        return super().readinto(b)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 20_000),
    asks=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 6_000)), max_size=12),
)
def test_ensure_fetches_each_byte_once_and_exactly(size: int, asks: list[tuple[int, int]]):
    data = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    f = Counting(data)
    src = RemoteSource(f, lazy=True, progress=False)
    for offset, n in asks:
        src.ensure([(offset, n)])
        end = min(size, offset + n)
        if offset < end:
            assert src.has(offset, end - offset)
            assert bytes(src.buf[offset:end]) == data[offset:end]
    assert src.fetched <= size
    covered = sorted(f.asked)
    for (a, n), (b, _) in itertools.pairwise(covered):
        assert a + n <= b  # no byte asked twice


@pytest.mark.parametrize("variant", ["deflated", "long comment"])
def test_rezipped_checkpoints(files: dict[str, Path], variant: str):
    """Deflated records (their data is fetched while opening: the inflater reads the buffer
    itself) and an end record 20,000 bytes before the end (a second, wider search)."""
    original = zipfile.ZipFile(files["zip"])
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if variant == "deflated" else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        for info in original.infolist():
            z.writestr(info.filename, original.read(info.filename))
        if variant == "long comment":
            z.comment = b"y" * 20_000
    data = out.getvalue()
    local = pthfmt.load(io.BytesIO(data))
    with pthfmt.open(Reader(data)) as ck:
        got = {k: ref.numpy() for k, ref in ck.tensors()}
    assert got.keys() == local.keys() - {"head.weight"}
    for key, value in got.items():
        assert raw(value) == raw(local[key]) == torch_raw(state_dict()[key]), key


def test_progress_after_a_second(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import pthfmt.remote as remote

    clock = iter(range(0, 1000, 2))  # every look at the clock: two seconds later
    monkeypatch.setattr(remote.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(remote, "MAX_REQUEST", 1 << 20)
    data = files["zip"].read_bytes()
    RemoteSource(Reader(data), progress=True)
    mib = len(data) >> 20
    lines = capsys.readouterr().err.split("\r")
    assert lines[1] == f"fetching <stream>: 1 of {mib} MiB ({100 * (1 << 20) // len(data)}%)"
    assert lines[-1] == f"fetching <stream>: {mib} of {mib} MiB (100%)\n"


# -- the engines and the CLI by URL ------------------------------------------------------------
def without_offsets(summary: dict[str, Any]) -> dict[str, Any]:
    """An inspect summary without its file name and file offsets."""
    out = {k: v for k, v in summary.items() if k != "file"}
    out["tensors"] = [{k: v for k, v in r.items() if k != "file_offset"} for r in out["tensors"]]
    out["storages"] = [{k: v for k, v in r.items() if k != "offset"} for r in out["storages"]]
    return out


def test_inspect_url_is_the_local_summary(server: StaticServer, files: dict[str, Path]):
    from pthfmt.engines.inspect import inspect_summary

    server.stats.reset()
    remote = inspect_summary(server.url("model.pt"))
    assert server.stats.body_bytes <= zip_bound(files["zip"])
    local = inspect_summary(str(files["zip"]))
    assert remote["size"] == local["size"] == files["zip"].stat().st_size
    assert remote["file"] == server.url("model.pt")
    # a storage's place in the file is known once its local header is read (not by open)
    assert {r["file_offset"] for r in remote["tensors"]} == {None}
    assert {r["offset"] for r in remote["storages"]} == {None}
    assert None not in {r["offset"] for r in local["storages"]}
    assert without_offsets(remote) == without_offsets(local)


def test_cli_inspect_and_convert_url(server: StaticServer, files: dict[str, Path], tmp_path: Path):
    import subprocess

    import ml_dtypes  # noqa: F401  (safetensors' numpy loader names bfloat16 through it)
    from safetensors.numpy import load_file

    from tests.support import ROOT

    url = server.url("legacy.pt")
    run = [sys.executable, "-m", "pthfmt"]
    done = subprocess.run([*run, "inspect", "--json", url], capture_output=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.decode("utf-8"))
    assert summary["file"] == url and summary["format"] == "legacy"
    assert summary["totals"]["tensors"] == 39
    out = tmp_path / "model.safetensors"
    done = subprocess.run([*run, "convert", url, str(out)], capture_output=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got = load_file(str(out))
    for key, t in state_dict().items():
        if t.dtype != torch.bfloat16:
            assert raw(got[key]) == torch_raw(t), key


def test_convert_safetensors_url(tmp_path: Path):
    """A URL of any input format is converted from a local copy (removed afterwards)."""
    from safetensors.torch import save_file

    sd = {k: v for k, v in state_dict().items() if k != "head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    with serve_static() as s:
        s.put("model.safetensors", tmp_path / "model.safetensors")
        pthfmt.convert(s.url("model.safetensors"), tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert sorted(back) == sorted(sd)
    for key, t in sd.items():
        assert torch.equal(back[key], t), key
    assert not list(Path(tempfile.gettempdir()).glob("pthfmt-convert-*"))


def test_sharded_url_inspect_and_convert(tmp_path: Path):
    from pthfmt.engines.inspect import inspect_summary

    sd = state_dict()
    del sd["head.weight"]
    torch_shards(sd, tmp_path)
    index = tmp_path / "pytorch_model.bin.index.json"
    with serve_static() as s:
        for p in tmp_path.iterdir():
            s.put(p.name, p)
        summary = inspect_summary(s.url(index.name))
        pthfmt.convert(s.url(index.name), tmp_path / "all.pt")
        compared = pthfmt.diff(s.url(index.name), index)  # (each shard read on access)
    local = inspect_summary(str(index))
    assert compared.identical and compared.equal == len(sd), compared
    assert summary["shards"] == local["shards"] and len(local["shards"]) >= 3
    assert without_offsets(summary)["tensors"] == without_offsets(local)["tensors"]
    back = torch.load(tmp_path / "all.pt", weights_only=True)
    assert sorted(back) == sorted(sd)
    for key, t in sd.items():
        assert torch.equal(back[key], t), key


# -- validate without the tensor data ----------------------------------------------------------
def storage_bytes(path: Path) -> int:
    with zipfile.ZipFile(path) as z:
        return sum(i.compress_size for i in z.infolist() if "/data/" in i.filename)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_validate_no_data_fetches_all_but_the_tensors(
    server: StaticServer, files: dict[str, Path], kind: str
):
    path = files[kind]
    server.stats.reset()
    report = pthfmt.validate(server.url(path.name), data=False)
    local = pthfmt.validate(path)
    assert report.ok and local.ok
    codes = [p.code for p in report.problems]
    if kind == "zip":
        assert codes == ["data.skipped", *(p.code for p in local.problems)]
        assert report.problems[0].message == (
            "tensor data not read (data=False): the CRC-32 of 38 stored storage records is "
            "not checked"
        )
        tensors = storage_bytes(path)
    else:  # (the legacy format has no checksums to skip)
        assert codes == [p.code for p in local.problems] == ["legacy.no_checksum"]
        tensors = sum(t.numel() * t.element_size() for k, t in state_dict().items())
        tensors -= state_dict()["head.weight"].numel() * 2  # (tied: stored once)
    rest = path.stat().st_size - tensors
    # (the first look at a file fetches its first 4 KiB and last 8 KiB; a legacy file's
    # pickles are found by scanning windows: either may reach into tensor data)
    assert rest <= server.stats.body_bytes <= rest + 16 * KIB


def data_start(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where a record's bytes start (after its local header's name and extra field)."""
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length


def test_validate_no_data_still_reads_everything_else(tmp_path: Path, files: dict[str, Path]):
    """A damaged tensor record is found with data and not without; a damaged pickle either way."""
    data = bytearray(files["zip"].read_bytes())
    with zipfile.ZipFile(files["zip"]) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
        pkl = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    start = data_start(data, info)
    data[start] ^= 0xFF
    (tmp_path / "tensor.pt").write_bytes(data)
    with serve_static() as s:
        s.put("tensor.pt", tmp_path / "tensor.pt")
        with_data = pthfmt.validate(s.url("tensor.pt"))
        without = pthfmt.validate(s.url("tensor.pt"), data=False)
    assert [p.code for p in with_data.problems] == ["zip.crc_mismatch"]
    assert without.ok and [p.code for p in without.problems] == ["data.skipped"]
    data[start] ^= 0xFF
    at = data_start(data, pkl) + 5
    data[at] ^= 0xFF
    (tmp_path / "pickle.pt").write_bytes(data)
    local = pthfmt.validate(tmp_path / "pickle.pt", data=False)
    assert "zip.crc_mismatch" in [p.code for p in local.problems]
    with serve_static() as s:
        s.put("pickle.pt", tmp_path / "pickle.pt")
        remote = pthfmt.validate(s.url("pickle.pt"), data=False)
    assert [p.to_dict() for p in remote.problems] == [p.to_dict() for p in local.problems]


def test_cli_validate_no_data_and_index_url(tmp_path: Path):
    import subprocess

    from tests.support import ROOT

    sd = state_dict()
    del sd["head.weight"]
    torch_shards(sd, tmp_path)
    index = "pytorch_model.bin.index.json"
    run = [sys.executable, "-m", "pthfmt", "validate"]
    with serve_static() as s:
        for p in tmp_path.iterdir():
            s.put(p.name, p)
        done = subprocess.run([*run, "--no-data", s.url(index)], capture_output=True, cwd=ROOT)
        sent = s.stats.body_bytes
        report = pthfmt.validate(s.url(index))
    assert done.returncode == 0, done.stderr
    shards = sorted(p.name for p in tmp_path.glob("pytorch_model-*.bin"))
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"{s.url(index)}: ok (sharded, {len(shards)} notes)"
    assert [line.split()[:3] for line in lines[1:]] == [
        ["info", "data.skipped", f"{shard}:"] for shard in shards
    ]
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert sent < total - sum(storage_bytes(tmp_path / n) for n in shards) + total // 4
    assert report.ok and report.problems == []


@pytest.mark.parametrize("shard", ["%2e%2e%2fsecret.bin", "model.bin?x=1", "a#b.bin", "../x.bin"])
def test_index_url_shard_names_stay_beside_the_index(tmp_path: Path, shard: str):
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a": shard}}))
    with serve_static() as s:
        s.put(index.name, index)
        with pytest.raises(pthfmt.FormatError) as info:
            pthfmt.load_sharded(s.url(index.name))
    url = s.url(index.name)
    if shard.startswith(".."):
        assert str(info.value) == f"{url}: shard name '{shard}' is a path"
    else:
        assert str(info.value) == f"{url}: shard name '{shard}' is not a plain name"


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_each_small_storage_read_alone_is_fetched(
    server: StaticServer, files: dict[str, Path], kind: str
):
    """Every storage read first thing after open, in a fresh open each: its bytes are fetched
    then (a reader that took them from the temporary file unasked would read zeros)."""
    sd = state_dict()
    del sd["head.weight"]  # (embed.weight's tensor: tensors() yields it once)
    for key, t in sd.items():
        with pthfmt.open(server.url(files[kind].name)) as ck:
            got = dict(ck.tensors())[key].numpy()
        assert raw(got) == torch_raw(t), key
