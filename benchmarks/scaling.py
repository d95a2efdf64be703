#!/usr/bin/env python
"""Scaling: ``pthfmt.open`` + all metadata of checkpoints of 1k, 10k, 100k and 1M tensors.

Each file is a flat state dict ``{"blocks.<i>.w": float32 array of 4 elements}`` written by
``pthfmt.save`` (torch takes minutes to write a million tensors; the format is the same, one
zip record per storage), built once into ``benchmarks/out/cache-scaling/`` and read once
before timing (warm page cache).  Each measurement is a fresh process: import pthfmt, then
time ``pthfmt.open(path)`` and, for every ``(key, ref)`` of ``.tensors()``, ``dtype``,
``shape``, ``stride``, ``nbytes``, ``storage_key`` and ``device`` (the ``pthfmt.open`` row of
``run.py``).  Sizes are interleaved over the repetitions (a different order each time); the
report gives the median, min-max, microseconds per tensor, and the per-tensor cost relative
to the smallest size (1.00x everywhere = linear).

    python benchmarks/scaling.py [--reps 3] [--sizes 1000,10000,100000,1000000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "out" / "cache-scaling"
FORMAT_VERSION = 1  # bump when the files' layout changes: cached files are rebuilt


def build(n: int, path: Path) -> None:
    import numpy as np

    import pthfmt

    base = np.arange(4, dtype=np.float32)
    sd = {f"blocks.{i}.w": base + i for i in range(n)}
    tmp = path.with_suffix(".tmp")
    pthfmt.save(sd, str(tmp))
    os.replace(tmp, path)


def worker(path: str) -> None:
    import pthfmt

    t0 = time.perf_counter()
    ck = pthfmt.open(path)
    meta = [
        (k, r.dtype, r.shape, r.stride, r.nbytes, r.storage_key, r.device) for k, r in ck.tensors()
    ]
    t = time.perf_counter() - t0
    print(json.dumps({"t": t, "tensors": len(meta)}))
    sys.stdout.flush()
    os._exit(0)  # skip tearing down a million objects


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def ensure(n: int) -> Path:
    path = CACHE / f"flat-{n}-v{FORMAT_VERSION}.pt"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--build", str(n), str(path)],
            check=True,
            env=child_env(),
            cwd=str(REPO),
        )
        print(
            f"built {path.name} ({path.stat().st_size / 2**20:.1f} MiB) in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    with open(path, "rb", buffering=0) as f:  # warm page cache
        while f.read(16 << 20):
            pass
    return path


def fmt_t(v: float) -> str:
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(sizes: list[int], reps: int, timeout: float) -> dict[int, list[float]]:
    paths = {n: ensure(n) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for rep in range(reps):
        order = sizes[:]
        random.Random(rep).shuffle(order)
        for n in order:
            r = subprocess.run(
                [sys.executable, __file__, "--worker", str(paths[n])],
                capture_output=True,
                text=True,
                env=child_env(),
                cwd=str(REPO),
                timeout=timeout,
            )
            if r.returncode != 0:
                raise SystemExit(f"worker failed on {n}: {r.stderr.strip()[-400:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            assert res["tensors"] == n, res
            times[n].append(res["t"])
            print(f"[rep {rep + 1}/{reps}] {n:>8} tensors {fmt_t(res['t'])}", flush=True)
    return times


def table(times: dict[int, list[float]]) -> str:
    lines = [
        "| tensors | open + all metadata | min-max | us per tensor | per tensor vs "
        f"{min(times):,} |",
        "|---|---|---|---|---|",
    ]
    first = None
    for n in sorted(times):
        med = statistics.median(times[n])
        per = med / n * 1e6
        first = first or per
        lines.append(
            f"| {n:,} | {fmt_t(med)} | {fmt_t(min(times[n]))}-{fmt_t(max(times[n]))} "
            f"| {per:.1f} | {per / first:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="write the samples here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.build:
        build(int(args.build[0]), Path(args.build[1]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    start = loadavg()
    times = measure(sizes, args.reps, args.timeout)
    text = table(times)
    print(
        f"\n{args.reps} repetitions interleaved; load average {start} at start, "
        f"{loadavg()} at end\n\n{text}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "samples": {str(n): ts for n, ts in times.items()},
                    "table": text,
                    "loadavg": [start, loadavg()],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
