"""Remote checkpoints over HTTP: inspecting a 1 GiB checkpoint by ranged reads against
downloading it first.

A torch-written 1 GiB checkpoint (zip, and legacy with ``--legacy``) is served by the test
suite's Range-honouring server (``tests/support/http_server.py``) in its own process on a
loopback port; the server counts the body bytes it sends.  Each operation runs in a fresh
process, interleaved over ``--reps`` repetitions; the table shows median wall time (process
start-up and imports included, as a user pays them) and the bytes sent:

* ``open+inspect``: ``pthfmt.open(url)``, every key, dtype and shape (no tensor data);
* ``open+1 tensor``: the same, then one 4 MiB tensor's ``numpy()``;
* ``load(url)``: every array (the file fetched whole, in 64 MiB requests);
* ``download``: the whole file to a local temporary file through fsspec;
* ``download+open``: that, then ``pthfmt.open`` of the local copy (what inspecting a remote
  file cost before).

    .venv/bin/python benchmarks/remote.py [--reps 3] [--legacy] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "out" / "cache-remote"

_OPS = {
    "open+inspect": """
import pthfmt
with pthfmt.open(URL) as ck:
    rows = [(k, r.dtype, r.shape) for k, r in ck.tensors()]
assert len(rows) == N, len(rows)
""",
    "open+1 tensor": """
import pthfmt
with pthfmt.open(URL) as ck:
    refs = dict(ck.tensors())
    a = refs["layers.7.weight"].numpy()
assert a.nbytes == 4 << 20
""",
    "load(url)": """
import pthfmt
sd = pthfmt.load(URL)
assert len(sd) == N
""",
    "download": """
import fsspec, tempfile, os
fd, tmp = tempfile.mkstemp(); os.close(fd)
fsspec.filesystem("http").get_file(URL, tmp)
os.unlink(tmp)
""",
    "download+open": """
import fsspec, tempfile, os, pthfmt
fd, tmp = tempfile.mkstemp(); os.close(fd)
fsspec.filesystem("http").get_file(URL, tmp)
with pthfmt.open(tmp) as ck:
    rows = [(k, r.dtype, r.shape) for k, r in ck.tensors()]
os.unlink(tmp)
assert len(rows) == N, len(rows)
""",
}


def build(size_mib: int, legacy: bool) -> tuple[Path, int]:
    """A state dict of 4 MiB float32 matrices (and a bias each) adding up to ``size_mib``."""
    import torch

    n = size_mib // 4
    name = f"model-{size_mib}mib{'-legacy' if legacy else ''}.pt"
    path = CACHE / name
    keys = 2 * n
    if path.exists():
        return path, keys
    CACHE.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(16)
    sd = {}
    for i in range(n):
        sd[f"layers.{i}.weight"] = torch.randn(1024, 1024, generator=gen)
        sd[f"layers.{i}.bias"] = torch.randn(1024, generator=gen)
    tmp = path.with_suffix(".tmp")
    torch.save(sd, tmp, _use_new_zipfile_serialization=not legacy)
    tmp.rename(path)
    return path, keys


def stats(port: int, reset: bool = False) -> dict[str, int]:
    url = f"http://127.0.0.1:{port}/{'__reset' if reset else '__stats'}"
    with urllib.request.urlopen(url) as r:
        doc: dict[str, int] = json.loads(r.read())
    return doc


def run_op(op: str, url: str, n: int, port: int) -> tuple[float, int, int]:
    code = f"URL = {url!r}\nN = {n}\n" + _OPS[op]
    stats(port, reset=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    s = stats(port)
    return wall, s["body_bytes"], s["requests"]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--legacy", action="store_true", help="also the legacy format")
    args = ap.parse_args()
    files = [build(args.size_mib, False)]
    if args.legacy:
        files.append(build(args.size_mib, True))
    for path, _ in files:
        path.read_bytes()  # warm page cache: the network path, not the disk, is measured
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.http_server", *(str(p) for p, _ in files)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(f"server on 127.0.0.1:{port}; {args.reps} repetitions, median wall time\n")
        print(f"{'file':28} {'operation':16} {'time':>8} {'bytes sent':>12} {'requests':>9}")
        for path, n in files:
            url = f"http://127.0.0.1:{port}/{path.name}"
            results: dict[str, list[tuple[float, int, int]]] = {op: [] for op in _OPS}
            for _ in range(args.reps):
                for op in _OPS:
                    results[op].append(run_op(op, url, n, port))
            size = path.stat().st_size
            for op, rows in results.items():
                wall = statistics.median(r[0] for r in rows)
                sent = max(r[1] for r in rows)
                reqs = max(r[2] for r in rows)
                pct = 100 * sent / size
                print(
                    f"{path.name + f' ({human(size)})':28} {op:16} {wall:7.2f}s "
                    f"{human(sent):>12} {reqs:>9}   ({pct:.4f}% of the file)"
                )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
