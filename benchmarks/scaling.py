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
import math
import os
import random
import re
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


class _Storage:
    __slots__ = ("device", "dtype", "key", "nbytes")

    def __init__(self, key: str, dtype: str, nbytes: int, device: object) -> None:
        self.key, self.dtype, self.nbytes, self.device = key, dtype, nbytes, device


class _Tensor:
    __slots__ = ("dtype", "offset", "requires_grad", "shape", "storage", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.dtype = storage.dtype
        self.requires_grad = False

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)

    @property
    def storage_key(self) -> str:
        return self.storage.key

    @property
    def device(self) -> object:
        return self.storage.device


def floor_worker(path: str) -> None:
    """The same pickle unpickled by CPython's C unpickler into two small objects per tensor
    (a storage and a tensor, as pthfmt makes), then the same metadata loop: what building
    this object graph costs at C speed (the zip directory and record reads not timed)."""
    import collections
    import gc
    import io
    import pickle

    import pthfmt
    from pthfmt.formats.torchzip import TorchZip
    from pthfmt.source import Source

    data = TorchZip(Source(path)).read("data.pkl")
    devices: dict[str, object] = {}

    def rebuild(
        storage: _Storage, offset: int, shape: tuple, stride: tuple, *rest: object
    ) -> _Tensor:
        return _Tensor(storage, offset, shape, stride)  # (rest: requires_grad, hooks...)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch" and name.endswith("Storage"):
                return name
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid: tuple) -> _Storage:
            _, cls, key, tag, numel = pid
            dev = devices.get(tag)
            if dev is None:
                dev = devices[tag] = pthfmt.Device(tag)
            return _Storage(key, "float32" if cls == "FloatStorage" else cls, 4 * numel, dev)

    t0 = time.perf_counter()
    gc.disable()  # (as pthfmt's open pauses it)
    tree = Unpickler(io.BytesIO(data)).load()
    gc.freeze()
    gc.unfreeze()
    gc.enable()
    meta = [
        (k, r.dtype, r.shape, r.stride, r.nbytes, r.storage_key, r.device) for k, r in tree.items()
    ]
    t = time.perf_counter() - t0
    print(json.dumps({"t": t, "tensors": len(meta)}))
    sys.stdout.flush()
    os._exit(0)


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


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=str(REPO),
        timeout=timeout,
    )


def measure(
    sizes: list[int], reps: int, timeout: float
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Wall clock of pthfmt and of the pickle floor, sizes and the two interleaved."""
    paths = {n: ensure(n) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    floor: dict[int, list[float]] = {n: [] for n in sizes}
    for rep in range(reps):
        order = [(n, which) for n in sizes for which in ("pthfmt", "floor")]
        random.Random(rep).shuffle(order)
        for n, which in order:
            r = _run(["--worker" if which == "pthfmt" else "--floor", str(paths[n])], timeout)
            if r.returncode != 0:
                raise SystemExit(f"{which} worker failed on {n}: {r.stderr.strip()[-400:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            assert res["tensors"] == n, res
            (times if which == "pthfmt" else floor)[n].append(res["t"])
            print(f"[rep {rep + 1}/{reps}] {n:>8} tensors {which:>6} {fmt_t(res['t'])}", flush=True)
    return times, floor


def _instructions(args: list[str], timeout: float) -> int:
    """Instructions one worker process executes (callgrind, fixed hash seed)."""
    env = child_env()
    env["PYTHONHASHSEED"] = "0"
    r = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=timeout,
    )
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"callgrind failed on {args}: {r.stderr.strip()[-400:]}")
    return int(m.group(1))


def count_instructions(sizes: list[int], timeout: float) -> dict[int, float]:
    """Instructions per tensor of open + all metadata: the worker's count less that of the
    same worker on a one-tensor file (imports and fixed costs), over the extra tensors."""
    base = _instructions(["--worker", str(ensure(1))], timeout)
    out = {}
    for n in sizes:
        out[n] = (_instructions(["--worker", str(ensure(n))], timeout) - base) / (n - 1)
        print(f"{n:>8} tensors {out[n]:,.0f} instructions per tensor", flush=True)
    return out


def table(
    times: dict[int, list[float]],
    floor: dict[int, list[float]],
    instructions: dict[int, float] | None = None,
) -> str:
    ref = 10_000 if 10_000 in times else min(times)
    per = {n: statistics.median(ts) / n * 1e6 for n, ts in times.items()}
    fper = {n: statistics.median(ts) / n * 1e6 for n, ts in floor.items()}
    instr = instructions or {}
    lines = [
        f"| tensors | open + all metadata | min-max | us per tensor | vs {ref:,} "
        f"| pickle floor, us per tensor | vs {ref:,} | instructions per tensor | vs {ref:,} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted(times):
        ts = times[n]
        i = instr.get(n)
        iref = instr.get(ref)
        lines.append(
            f"| {n:,} | {fmt_t(statistics.median(ts))} | {fmt_t(min(ts))}-{fmt_t(max(ts))} "
            f"| {per[n]:.1f} | {per[n] / per[ref]:.2f}x | {fper[n]:.1f} "
            f"| {fper[n] / fper[ref]:.2f}x "
            f"| {f'{i:,.0f}' if i else '-'} | {f'{i / iref:.3f}x' if i and iref else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument(
        "--instructions",
        default="",
        help="comma list of sizes whose instructions per tensor callgrind counts "
        "(e.g. 10000,1000000: about 7 minutes; needs valgrind)",
    )
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="write the samples here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.floor:
        floor_worker(args.floor)
        return 0
    if args.build:
        build(int(args.build[0]), Path(args.build[1]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    start = loadavg()
    times, floor = measure(sizes, args.reps, args.timeout)
    counted = [int(s) for s in args.instructions.split(",") if s]
    instructions = count_instructions(counted, args.timeout * 4) if counted else None
    text = table(times, floor, instructions)
    print(
        f"\n{args.reps} repetitions interleaved; load average {start} at start, "
        f"{loadavg()} at end\n\n{text}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "samples": {str(n): ts for n, ts in times.items()},
                    "floor": {str(n): ts for n, ts in floor.items()},
                    "instructions": {str(n): v for n, v in (instructions or {}).items()},
                    "table": text,
                    "loadavg": [start, loadavg()],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
