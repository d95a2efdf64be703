"""``pthfmt validate`` over a folder of 200 small checkpoints: serial against ``-j 2``.

The folder holds what a CI job meets: sound files written by ``torch.save`` and by
``pthfmt.save`` (zip and legacy format), truncated ones, bit-flipped ones (a byte of tensor
data inverted: a CRC-32 mismatch) and one whose pickle calls ``os.system``.  Each variant runs
``python -m pthfmt validate --json FOLDER`` in a fresh process (start-up included, as CI pays
it), interleaved over several repetitions; the table shows the median and best wall time and
checks that every variant reports the same verdicts.

    .venv/bin/python benchmarks/validate_many.py [--files 200] [--reps 5] [--jobs 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path, n: int) -> dict[str, int]:
    """Write ``n`` files into ``folder``; returns how many of each kind."""
    import torch

    import pthfmt

    kinds = {"torch": 0, "pthfmt": 0, "legacy": 0, "truncated": 0, "bitflip": 0, "evil": 0}
    for i in range(n):
        torch.manual_seed(i)
        state = {f"layer{j}.weight": torch.randn(64, 64) for j in range(8)}
        state["step"] = i
        kind = ("torch", "pthfmt", "legacy", "truncated", "bitflip")[i % 5]
        if i == n - 1:
            kind = "evil"
        path = folder / f"{i:04d}-{kind}.pt"
        if kind == "pthfmt":
            pthfmt.save({k: v.numpy() for k, v in state.items() if k != "step"}, path)
        elif kind == "legacy":
            torch.save(state, path, _use_new_zipfile_serialization=False)
        elif kind == "evil":
            path.write_bytes(_evil(folder))
        else:
            torch.save(state, path)
            data = bytearray(path.read_bytes())
            if kind == "truncated":
                del data[len(data) // 2 :]
            elif kind == "bitflip":
                at = data.index(b"data/0") + 200
                data[at] ^= 0xFF
            path.write_bytes(bytes(data))
        kinds[kind] += 1
    return kinds


def _evil(folder: Path) -> bytes:
    import torch

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {folder}/PWNED",))

    path = folder / "evil.tmp"
    torch.save({"w": torch.ones(2), "hook": Payload()}, path)
    data = path.read_bytes()
    path.unlink()
    return data


def run_once(folder: Path, jobs: int) -> tuple[float, dict[str, object]]:
    argv = [sys.executable, "-m", "pthfmt", "validate", "--json", str(folder)]
    if jobs != 1:
        argv[4:4] = ["-j", str(jobs)]
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, encoding="utf-8", cwd=ROOT, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise SystemExit(f"validate failed ({out.returncode}): {out.stderr}")
    doc = json.loads(out.stdout)
    return elapsed, {"summary": doc["summary"], "ok": [f["ok"] for f in doc["files"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--jobs", default="1,2", help="comma-separated -j values (1: serial)")
    opts = ap.parse_args()
    jobs = [int(j) for j in opts.jobs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        kinds = build(folder, opts.files)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{opts.files} files, {size / 1024:.0f} KiB: {kinds}; {os.cpu_count()} CPUs")
        times: dict[int, list[float]] = {j: [] for j in jobs}
        verdicts: dict[int, dict[str, object]] = {}
        for _ in range(opts.reps):
            for j in jobs:
                elapsed, verdict = run_once(folder, j)
                times[j].append(elapsed)
                verdicts[j] = verdict
        assert not (folder / "PWNED").exists(), "the payload ran"
        first = verdicts[jobs[0]]
        print(f"summary: {first['summary']}")
        print(f"{'variant':<12}{'median s':>10}{'best s':>10}{'vs serial':>11}")
        base = statistics.median(times[jobs[0]])
        for j in jobs:
            med = statistics.median(times[j])
            name = "serial" if j == 1 else f"-j {j}"
            same = "" if verdicts[j] == first else "  (DIFFERENT VERDICTS)"
            print(f"{name:<12}{med:>10.2f}{min(times[j]):>10.2f}{base / med:>10.2f}x{same}")


if __name__ == "__main__":
    main()
