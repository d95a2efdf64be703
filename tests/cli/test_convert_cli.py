"""``pthfmt convert`` on the command line, in subprocesses: output, warnings on stderr, and
one-line errors with the exit code for each kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.host import child_env

pytestmark = pytest.mark.torch


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", "convert", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=child_env(),
    )


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_cli_convert(tmp_path: Path) -> None:
    import torch

    from tests.support.torch_helpers import training_checkpoint

    _, ckpt = training_checkpoint()
    torch.save(ckpt, tmp_path / "ckpt.pth")
    out = run(tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors")
    assert out.returncode == 0, out.stderr
    assert "ckpt.safetensors (safetensors): 16 tensors" in out.stdout and "15 values" in out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pthfmt: warning: left out 2 values")
    assert "device" in lines[0] and "blob" in lines[0]
    help_ = subprocess.run(
        [sys.executable, "-m", "pthfmt", "convert", "--help"],
        capture_output=True,
        encoding="utf-8",
        cwd=ROOT,
        env=child_env(),
    )
    assert help_.returncode == 0 and "example" in help_.stdout


@pytest.mark.parametrize(
    "case", ["garbage", "truncated", "missing", "unknown-out", "unknown-in", "out-dir"]
)
def test_cli_errors_are_one_line(tmp_path: Path, case: str) -> None:
    import torch

    torch.save({"w": torch.randn(50)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    src, dst, code = tmp_path / "in.pth", tmp_path / "out.safetensors", 1
    if case == "garbage":
        src.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        src.write_bytes(data[: len(data) // 2])
    elif case == "missing":
        code = 2
    elif case == "unknown-out":
        src.write_bytes(data)
        dst, code = tmp_path / "out.xyz", 2
    elif case == "unknown-in":
        src, code = tmp_path / "in.dat", 2
        src.write_bytes(b"\x00" * 64)
    elif case == "out-dir":
        src.write_bytes(data)
        dst, code = tmp_path / "sub.npz", 2
        dst.mkdir()
    out = run(src, dst)
    assert out.returncode == code, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    named = dst if case in ("unknown-out", "out-dir") else src
    assert lines[0].startswith(f"pthfmt: {named}: "), lines[0]
    assert not out.stdout
    assert case == "out-dir" or not dst.exists()
    assert no_temp_files(tmp_path)
