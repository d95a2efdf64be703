#!/usr/bin/env python
"""Copy load: which fresh buffer should a storage copy go into?

A copying load reads each large storage from the page cache into a new buffer with
``preadv``.  What differs is how that buffer is allocated:

- ``populate``: a private anonymous ``mmap`` with ``MAP_POPULATE`` (the kernel provides every
  page in the one ``mmap`` call, 4 KiB pages: the mapping is not advised for huge pages);
- ``empty``: ``np.empty`` (glibc ``malloc``; numpy advises ``MADV_HUGEPAGE`` on large
  allocations, so with THP on ``madvise`` the pages fault in 2 MiB at a time during the copy);
- ``thp_populate``: an anonymous ``mmap`` advised ``MADV_HUGEPAGE`` and then populated with
  ``MADV_POPULATE_WRITE`` (Linux >= 5.14): huge pages, provided in one call.

Each measurement is a fresh process (numpy imported, source file warm in the page cache) that
allocates and fills ``count`` buffers of ``size`` bytes (kept alive, as a load keeps them), in
one of three conditions:

- ``fresh``: nothing allocated before: the process's first use of that much memory;
- ``freed``: the process first allocates the same total with ``np.empty``, writes every page and
  frees it (memory recently freed by the process);
- ``reload``: the process first runs the same allocations and copies with the same strategy
  and frees them (a second load in one session); only the second one is timed.

The (strategy, size, condition) triples run interleaved, a different shuffled order in every
repetition; the report gives medians, min-max, and in how many repetitions each strategy won
its (size, condition) pair.

    python benchmarks/copy_alloc.py [--reps 9] [--sizes 1M,4M,16M,64M,1G] [--json PATH]
    python benchmarks/copy_alloc.py --load CHECKPOINT [--reps 9]

``--load`` times ``pthfmt.load(CHECKPOINT)`` (copying) instead, in a fresh process per run,
with ``pthfmt.source.fresh_buffer`` replaced by each strategy (conditions ``fresh`` and
``reload``: the second of two loads in one process), and ``torch.load(weights_only=True)`` of
the same file for reference (row ``torch``, when torch is installed).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
GiB = 1 << 30
SOURCE_BYTES = GiB
MADV_POPULATE_WRITE = 23  # <linux/mman.h>; Python 3.11's mmap module does not name it
STRATEGIES = ("populate", "empty", "thp_populate")
CONDITIONS = ("fresh", "freed", "reload")
# how many buffers of each size one measurement fills (1 MiB alone is too short to time)
COUNTS = {MiB: 64, 4 * MiB: 16, 16 * MiB: 8, 64 * MiB: 4, GiB: 1}


def alloc(strategy: str, nbytes: int):  # type: ignore[no-untyped-def]
    import numpy as np

    if strategy == "populate":
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE)
        return np.frombuffer(region, np.uint8)
    if strategy == "thp_populate":
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
        region.madvise(mmap.MADV_HUGEPAGE)
        region.madvise(MADV_POPULATE_WRITE)
        return np.frombuffer(region, np.uint8)
    return np.empty(nbytes, np.uint8)


def load_worker(spec: dict) -> None:
    """Time ``pthfmt.load`` of a checkpoint with ``fresh_buffer`` replaced by a strategy."""
    if spec["strategy"] == "torch":
        import torch

        def load():  # type: ignore[no-untyped-def]
            return torch.load(spec["source"], weights_only=True)
    else:
        import ml_dtypes  # noqa: F401  (imported by a bf16 load; not what is measured here)

        import pthfmt
        import pthfmt.source

        pthfmt.source.fresh_buffer = lambda n: alloc(spec["strategy"], n)  # type: ignore

        def load():  # type: ignore[no-untyped-def]
            return pthfmt.load(spec["source"])

    if spec["cond"] == "reload":
        first = load()
        del first
    t0 = time.perf_counter()
    out = load()
    t = time.perf_counter() - t0
    del out
    print(json.dumps({"t": t}))


def worker(spec: dict) -> None:
    if "load" in spec:
        load_worker(spec)
        return
    import numpy as np

    size, count = spec["size"], spec["count"]
    fd = os.open(spec["source"], os.O_RDONLY)
    if spec["cond"] == "freed":
        junk = np.empty(size * count, np.uint8)
        junk[:: mmap.PAGESIZE] = 1  # every page faulted in
        del junk
    elif spec["cond"] == "reload":
        load(fd, spec["strategy"], size, count)
    t = load(fd, spec["strategy"], size, count)
    print(json.dumps({"t": t}))


def load(fd: int, strategy: str, size: int, count: int) -> float:
    """Allocate and fill ``count`` buffers; the time taken (the buffers are freed after)."""
    keep = []
    t0 = time.perf_counter()
    for k in range(count):
        out = alloc(strategy, size)
        view = memoryview(out.data)
        offset = (k * size) % (SOURCE_BYTES - size + 1)
        done = 0
        while done < size:
            done += os.preadv(fd, [view[done:]], offset + done)
        del view
        keep.append(out)
    return time.perf_counter() - t0


def make_source(path: Path) -> None:
    if path.exists() and path.stat().st_size == SOURCE_BYTES:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    block = rnd.randbytes(16 * MiB)
    with open(path, "wb") as f:
        for _ in range(SOURCE_BYTES // len(block)):
            f.write(block)


def warm(path: Path) -> None:
    buf = bytearray(16 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def parse_size(text: str) -> int:
    unit = {"K": 1 << 10, "M": MiB, "G": GiB}.get(text[-1].upper(), 1)
    return int(text[:-1] if unit > 1 else text) * unit


def fmt_size(n: int) -> str:
    return f"{n / GiB:.4g} GiB" if n >= GiB else f"{n / MiB:.4g} MiB"


def fmt_t(v: float) -> str:
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(sizes: list[int], reps: int, source: Path, load: bool = False) -> list[dict]:
    conds = ("fresh", "reload") if load else CONDITIONS
    strategies = STRATEGIES + (("torch",) if load and has_torch() else ())
    jobs = [(s, c, st) for s in sizes for c in conds for st in strategies]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))  # this tree's pthfmt
    samples = []
    for rep in range(reps):
        order = jobs[:]
        random.Random(1000 + rep).shuffle(order)
        for size, cond, strategy in order:
            spec = {
                "size": size,
                "count": COUNTS.get(size, 1),
                "cond": cond,
                "strategy": strategy,
                "source": str(source),
                **({"load": True} if load else {}),
            }
            r = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                raise SystemExit(f"worker failed: {r.stderr.strip()[-400:]}")
            t = json.loads(r.stdout.strip().splitlines()[-1])["t"]
            samples.append({**spec, "rep": rep, "t": t})
            print(
                f"[rep {rep + 1}/{reps}] {fmt_size(size):>7} {cond:5s} {strategy:12s} {fmt_t(t)}",
                flush=True,
            )
    return samples


def has_torch() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


def report(samples: list[dict], sizes: list[int]) -> str:
    conds = [c for c in (*CONDITIONS,) if any(s["cond"] == c for s in samples)]
    strategies = [st for st in (*STRATEGIES, "torch") if any(s["strategy"] == st for s in samples)]
    lines = [
        "| size x count | condition | strategy | median | min-max | per GiB | wins |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for cond in conds:
            group = [s for s in samples if s["size"] == size and s["cond"] == cond]
            wins = {st: 0 for st in strategies}
            for rep in sorted({s["rep"] for s in group}):
                this = [s for s in group if s["rep"] == rep]
                mine = [s for s in this if s["strategy"] != "torch"]
                wins[min(mine, key=lambda s: s["t"])["strategy"]] += 1
            for st in strategies:
                ts = [s["t"] for s in group if s["strategy"] == st]
                if not ts:
                    continue
                med = statistics.median(ts)
                total = size * group[0]["count"]
                lines.append(
                    f"| {fmt_size(size)} x {group[0]['count']} | {cond} | {st} | "
                    f"{fmt_t(med)} | {fmt_t(min(ts))}-{fmt_t(max(ts))} | "
                    f"{fmt_t(med * GiB / total)} | {wins[st]}/{len(ts)} |"
                )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--sizes", default="1M,4M,16M,64M,1G")
    ap.add_argument("--json", help="write the raw samples here")
    ap.add_argument("--load", metavar="CHECKPOINT", help="time pthfmt.load of this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.load:
        source = Path(args.load)
        sizes = [source.stat().st_size]
    else:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
        source = HERE / "out" / "copy-source.bin"
        make_source(source)
    warm(source)
    start = loadavg()
    samples = run(sizes, args.reps, source, bool(args.load))
    table = report(samples, sizes)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    print(
        f"\nload average {start} at start, {loadavg()} at end; THP {thp}; "
        f"{args.reps} repetitions interleaved; kernel {os.uname().release}\n"
    )
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"samples": samples, "loadavg": [start, loadavg()], "thp": thp}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
