"""pthfmt.save's outputs (paths, streams, pipes), its atomicity, and re-saving what
pthfmt.open / pthfmt.load read from torch's files."""

from __future__ import annotations

import collections
import errno
import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::UserWarning")]
torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import pthfmt  # noqa: E402
from pthfmt import atomic  # noqa: E402
from pthfmt.formats.zip import writer as zipwriter  # noqa: E402
from tests.support import EXAMPLES  # noqa: E402
from tests.support.host import child_env, run_python  # noqa: E402
from tests.support.writer import save_bytes  # noqa: E402
from tests.support.writer_torch import element_bytes, from_torch, torch_load  # noqa: E402


def old_file(tmp_path: Path) -> tuple[Path, bytes]:
    target = tmp_path / "ck.pt"
    torch.save({"old": torch.arange(3)}, target)
    return target, target.read_bytes()


def assert_untouched(target: Path, old: bytes) -> None:
    assert target.read_bytes() == old
    assert torch_load(target)["old"].tolist() == [0, 1, 2]


def others(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "ck.pt")


# -- outputs ------------------------------------------------------------------------------------


def test_path_output_replaces_atomically_and_keeps_permissions(tmp_path: Path) -> None:
    target, _ = old_file(tmp_path)
    target.chmod(0o640)
    pthfmt.save({"new": np.ones(2)}, target)
    assert torch_load(target)["new"].tolist() == [1.0, 1.0]
    assert (target.stat().st_mode & 0o777) == 0o640
    assert others(tmp_path) == []
    pthfmt.save({"p": np.ones(1)}, str(tmp_path / "fresh.pt"))
    umask = os.umask(0)
    os.umask(umask)
    assert ((tmp_path / "fresh.pt").stat().st_mode & 0o777) == 0o666 & ~umask


def test_symlink_target_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real.pt"
    real.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(real)
    pthfmt.save({"x": np.arange(2)}, link)
    assert link.is_symlink() and torch_load(real)["x"].tolist() == [0, 1]
    with zipfile.ZipFile(real) as z:  # the archive is named after the link
        assert z.namelist()[0].startswith("link/")


class NoSeek(io.RawIOBase):
    """A write-only stream that takes at most ``limit`` bytes per call and cannot seek."""

    def __init__(self, limit: int = 1000) -> None:
        self.data = bytearray()
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")[: self.limit]
        self.data += view
        return len(view)

    def seek(self, *args: Any) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


def test_non_seekable_stream_with_partial_writes() -> None:
    obj = {"w": np.arange(5000, dtype=np.float32), "b": np.ones((3, 3))[::2]}
    for fmt in ("zip", "legacy"):
        out = NoSeek()
        pthfmt.save(obj, out, format=fmt)
        assert bytes(out.data) == save_bytes(obj, format=fmt)
        loaded = torch_load(bytes(out.data))
        assert loaded["w"].tolist() == obj["w"].tolist() and loaded["b"].shape == (2, 3)


def test_pipe_to_torch_in_another_process() -> None:
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import io, sys, torch; t = torch.load(io.BytesIO("
            "sys.stdin.buffer.read()), weights_only=True); print(t['w'].sum().item(), "
            "t['w'].dtype, t['n'])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
        env=child_env(),
    )
    assert reader.stdin is not None
    obj = {"w": np.ones((1024, 1024), np.float32), "n": 7}  # 4 MiB: more than a pipe holds
    pthfmt.save(obj, reader.stdin)
    reader.stdin.close()
    assert reader.stdout is not None
    out = reader.stdout.read()
    assert reader.wait(timeout=60) == 0
    assert out.decode().split() == ["1048576.0", "torch.float32", "7"]


def test_raw_pipe_file_descriptor(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    obj = {"x": np.arange(100_000, dtype=np.int64)}
    chunks: list[bytes] = []
    import threading

    def drain() -> None:
        with open(read_fd, "rb", buffering=0) as r:
            while data := r.read(1 << 16):
                chunks.append(data)

    thread = threading.Thread(target=drain)
    thread.start()
    with open(write_fd, "wb", buffering=0) as w:  # a raw FileIO on a pipe
        pthfmt.save(obj, w)
    thread.join(timeout=30)
    assert torch_load(b"".join(chunks))["x"].tolist() == obj["x"].tolist()


# -- atomicity ----------------------------------------------------------------------------------


def test_keyboard_interrupt_mid_save_leaves_the_old_file(tmp_path: Path, monkeypatch: Any) -> None:
    target, old = old_file(tmp_path)
    calls = []
    real = zipwriter.crc32

    def interrupted(data: Any, crc: int = 0) -> int:
        calls.append(1)
        if len(calls) == 6:  # inside the first storage
            raise KeyboardInterrupt
        return real(data, crc)

    monkeypatch.setattr(zipwriter, "crc32", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pthfmt.save({"a": np.ones(10), "b": np.ones(20)}, target)
    assert_untouched(target, old)
    assert others(tmp_path) == []


def test_disk_full_leaves_the_old_file(tmp_path: Path, monkeypatch: Any) -> None:
    target, old = old_file(tmp_path)
    real = atomic.stream_writer

    def full_disk(f: Any) -> Any:
        write, budget = real(f), [100_000]

        def limited(data: Any) -> None:
            budget[0] -= memoryview(data).nbytes
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            write(data)

        return limited

    monkeypatch.setattr(atomic, "stream_writer", full_disk)
    with pytest.raises(OSError, match="No space"):
        pthfmt.save({"big": np.ones(1 << 20)}, target)
    assert_untouched(target, old)
    assert others(tmp_path) == []


def test_file_size_limit_in_a_child_leaves_the_old_file(tmp_path: Path) -> None:
    """A real failing write(2) (EFBIG under RLIMIT_FSIZE) rather than a simulated one."""
    target, old = old_file(tmp_path)
    result = run_python(
        """
        import errno, resource, signal, sys
        import numpy as np, pthfmt
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            pthfmt.save({"big": np.ones(1 << 20)}, sys.argv[1])
        except OSError as exc:
            print("failed", errno.errorcode[exc.errno])
        """,
        str(target),
    )
    assert result.stdout.split() == ["failed", "EFBIG"], result.stderr
    assert_untouched(target, old)
    assert others(tmp_path) == []


def test_sigkill_mid_save_never_leaves_a_partial_target(tmp_path: Path) -> None:
    target, old = old_file(tmp_path)
    result = run_python(
        """
        import os, signal, sys
        import numpy as np, pthfmt
        from pthfmt.formats.zip import writer as zipwriter
        real, calls = zipwriter.crc32, []
        def crc(data, value=0):
            calls.append(1)
            if len(calls) == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(data, value)
        zipwriter.crc32 = crc
        pthfmt.save({f"t{i}": np.full(1 << 16, i) for i in range(10)}, sys.argv[1])
        """,
        str(target),
    )
    assert result.returncode == -9
    assert_untouched(target, old)
    leftovers = others(tmp_path)  # SIGKILL cannot clean up its temp file,
    assert all(n.startswith(".ck.pt.") and n.endswith(".tmp") for n in leftovers)
    assert len(leftovers) == 1  # but it never has the target's name
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(tmp_path / leftovers[0])


def test_unserializable_writes_nothing_even_late_in_the_tree(tmp_path: Path) -> None:
    target, old = old_file(tmp_path)
    with pytest.raises(pthfmt.UnserializableError) as info:
        pthfmt.save({"w": np.ones(1 << 20), "later": [1, 2, {"deep": object()}]}, target)
    assert info.value.key_path == "later.2.deep"
    assert_untouched(target, old)
    assert others(tmp_path) == []


# -- re-saving what the reader read ------------------------------------------------------------


def sample() -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(24, generator=g)
    tied = nn.Parameter(torch.randn(3, 4, generator=g))
    noted = torch.arange(4.0)
    noted.note = {"unit": "m"}  # type: ignore[attr-defined]
    return {
        "w": tied,
        "tied": tied,
        "frozen": nn.Parameter(torch.arange(5), requires_grad=False),
        "grad": torch.ones(2).requires_grad_(),
        "base": base,
        "slice": base[4:10],
        "t": base.view(4, 6).t(),
        "col": base.view(4, 6)[:, 2],
        "expanded": torch.ones(1, 3).expand(5, 3),
        "scalar": torch.tensor(7.5),
        "empty": torch.empty(0, 2),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "u16": torch.tensor([1, 65535], dtype=torch.uint16),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "conj": torch.tensor([1 + 2j, 3 - 4j]).conj(),
        "neg": torch._neg_view(torch.ones(2)),
        "noted": noted,
        "lists": [torch.tensor([1, 2]), (torch.tensor([3]), 4)],
        "meta": {"epoch": 3, "name": "run"},
    }


def assert_same_torch(a: Any, b: Any, where: str = "") -> None:
    """Two torch.load results agree: values, dtypes, layout, flags and types."""
    if isinstance(a, torch.Tensor):
        assert type(a) is type(b), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), where
        assert a.storage_offset() == b.storage_offset(), where
        assert a.requires_grad == b.requires_grad, where
        assert a.is_conj() == b.is_conj() and a.is_neg() == b.is_neg(), where
        assert (element_bytes(a.detach()) == element_bytes(b.detach())).all(), where
        assert getattr(a, "__dict__", {}) == getattr(b, "__dict__", {}), where
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), where
        for k in a:
            assert_same_torch(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_torch(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def sharing_pattern(obj: dict[str, Any]) -> list[list[str]]:
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            groups[v.untyped_storage().data_ptr()].append(k)
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.parametrize("src_format", ["zip", "legacy"])
@pytest.mark.parametrize("dst_format", ["zip", "legacy"])
def test_open_then_save_is_lossless(src_format: str, dst_format: str, tmp_path: Path) -> None:
    obj = sample()
    legacy = {"u16", "f8"}  # torch cannot load these from legacy files
    if "legacy" in (src_format, dst_format):
        obj = {k: v for k, v in obj.items() if k not in legacy}
    torch.save(obj, tmp_path / "src.pt", _use_new_zipfile_serialization=src_format == "zip")
    expected = torch_load(tmp_path / "src.pt")
    with pthfmt.open(tmp_path / "src.pt") as ck:
        pthfmt.save(ck.obj, tmp_path / "dst.pt", format=dst_format)
    for mmap in (False, True) if dst_format == "zip" else (False,):
        loaded = torch_load(tmp_path / "dst.pt", mmap=mmap)
        assert_same_torch(expected, loaded)
        assert sharing_pattern(loaded) == sharing_pattern(expected)
        assert loaded["w"] is loaded["tied"]


def test_device_tags_and_map_location_survive(tmp_path: Path, monkeypatch: Any) -> None:
    import torch.serialization as ts

    with monkeypatch.context() as m:
        m.setattr(ts, "location_tag", lambda storage: "cuda:" + str(1))
        torch.save({"a": torch.ones(2), "b": torch.zeros(1)}, tmp_path / "gpu.pt")
    (tmp_path / "copy").mkdir()
    with pthfmt.open(tmp_path / "gpu.pt") as ck:
        pthfmt.save(ck.obj, tmp_path / "copy" / "gpu.pt")
    with pthfmt.open(tmp_path / "gpu.pt", map_location="cpu") as ck:
        pthfmt.save(ck.obj, tmp_path / "cpu.pt")
    with pthfmt.open(tmp_path / "copy" / "gpu.pt") as ck:
        assert {str(t.device) for _, t in ck.tensors()} == {"cuda:1"}
    assert (tmp_path / "copy" / "gpu.pt").read_bytes() == (tmp_path / "gpu.pt").read_bytes()
    assert torch_load(tmp_path / "cpu.pt")["a"].tolist() == [1.0, 1.0]  # no map_location needed
    with pthfmt.open(tmp_path / "cpu.pt") as ck:
        assert {str(t.device) for _, t in ck.tensors()} == {"cpu"}


def test_compressed_source_records(tmp_path: Path) -> None:
    obj = {"w": torch.arange(1000.0), "v": torch.arange(1000.0)[::3]}
    torch.save(obj, tmp_path / "src.pt")
    with (
        zipfile.ZipFile(tmp_path / "src.pt") as src,
        zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pthfmt.open(tmp_path / "deflated.pt") as ck:
        pthfmt.save(ck.obj, tmp_path / "out.pt")
    assert_same_torch(torch_load(tmp_path / "src.pt"), torch_load(tmp_path / "out.pt"))


def test_saving_over_the_open_source_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save(sample(), path)
    expected = torch_load(path)
    with pthfmt.open(path) as ck:
        pthfmt.save(ck.obj, path)  # the mapping keeps reading the replaced file
        pthfmt.save(ck.obj, path)
    assert_same_torch(expected, torch_load(path))


@pytest.mark.parametrize("mmap", [False, True])
def test_load_then_save(mmap: bool, tmp_path: Path) -> None:
    obj = {k: v for k, v in sample().items() if k not in ("conj", "neg", "noted")}
    torch.save(obj, tmp_path / "src.pt")
    arrays = pthfmt.load(tmp_path / "src.pt", mmap=mmap)
    pthfmt.save(arrays, tmp_path / "out.pt")
    expected, loaded = torch_load(tmp_path / "src.pt"), torch_load(tmp_path / "out.pt")
    for key in ("base", "slice", "t", "col", "bf16", "u16", "f8", "scalar", "empty", "expanded"):
        assert loaded[key].dtype == expected[key].dtype, key
        assert loaded[key].stride() == expected[key].stride(), key
        assert (element_bytes(loaded[key]) == element_bytes(expected[key])).all(), key
    views = sharing_pattern({k: loaded[k] for k in ("base", "slice", "t", "col")})
    assert views == [["base", "col", "slice", "t"]]


# -- a real training checkpoint --------------------------------------------------------------


def _civilnet() -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CivilNet


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_training_checkpoint_resumes(fmt: str, tmp_path: Path) -> None:
    """model + optimizer + epoch + loss: torch.save -> pthfmt.open -> pthfmt.save -> resume
    training in a fresh model and optimizer, step for step identical to the original."""
    net_class = _civilnet()
    torch.manual_seed(0)
    net = net_class()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    for _ in range(2):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(
        {
            "epoch": 2,
            "model_state_dict": net.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "loss": loss.item(),
        },
        tmp_path / "src.pt",
    )
    with pthfmt.open(tmp_path / "src.pt") as ck:
        pthfmt.save(ck.obj, tmp_path / "dst.pt", format=fmt)
    state = torch_load(tmp_path / "dst.pt")
    assert state["epoch"] == 2 and state["loss"] == loss.item()
    fresh = net_class()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh.load_state_dict(state["model_state_dict"])
    fresh_opt.load_state_dict(state["optimizer_state_dict"])
    for model, optimizer in ((net, opt), (fresh, fresh_opt)):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_bundled_example_checkpoint(tmp_path: Path) -> None:
    src = EXAMPLES / "civilnet_checkpoint.pth"
    with pthfmt.open(src) as ck:
        pthfmt.save(ck.obj, tmp_path / "civilnet_checkpoint.pth")
    assert (tmp_path / "civilnet_checkpoint.pth").read_bytes() == src.read_bytes()
    net = _civilnet()()
    net.load_state_dict(torch_load(tmp_path / "civilnet_checkpoint.pth")["model_state_dict"])


def test_converted_torch_objects_round_trip(tmp_path: Path) -> None:
    obj = sample()
    del obj["conj"], obj["neg"], obj["noted"]
    loaded = torch_load(save_bytes(from_torch(obj)))
    assert_same_torch(torch_load(save_bytes(from_torch(obj))), loaded)
    for key in ("base", "slice", "t", "bf16", "f8", "u16"):
        assert torch.equal(
            loaded[key].view(torch.uint8) if loaded[key].dtype.itemsize == 1 else loaded[key],
            obj[key].view(torch.uint8) if obj[key].dtype.itemsize == 1 else obj[key],
        ), key
