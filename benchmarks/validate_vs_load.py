"""``validate`` against ``load`` on every case of the adversarial corpus.

The promise (issue: one reader): ``validate`` observes the reader, so the reader's limits
apply to it as to ``load``; on every hostile file it takes at most twice ``load``'s time plus
0.5 s, and reports the error ``load`` raises (a limit as a limit).  Each case is timed in this
process (best of ``--reps``); the table lists the slowest ratios and every case that breaks
the bound or reports a different error class.

    .venv/bin/python benchmarks/validate_vs_load.py [--reps 3] [--show 10]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pthfmt  # noqa: E402
from pthfmt.validation import validate  # noqa: E402
from tests.support.adversarial import cases  # noqa: E402


def best(fn: object, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times), out


def load_error(data: bytes) -> str:
    try:
        pthfmt.load(io.BytesIO(data))
    except pthfmt.PthError as exc:
        return type(exc).__name__
    return "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--show", type=int, default=10)
    args = ap.parse_args()
    rows, broken = [], []
    for case in cases():
        t_load, err = best(lambda data=case.data: load_error(data), args.reps)
        t_val, report = best(lambda data=case.data: validate(io.BytesIO(data)), args.reps)
        row = (case.name, t_load, t_val, t_val / max(t_load, 1e-6), err, report.codes)
        rows.append(row)
        if t_val > 2 * t_load + 0.5 or report.ok:
            broken.append(row)
    rows.sort(key=lambda r: r[2] - r[1], reverse=True)
    print(f"{len(rows)} cases; slowest validate - load:")
    print(f"{'case':<40} {'load s':>8} {'validate s':>10} {'ratio':>6}  load error / codes")
    for name, tl, tv, ratio, err, codes in rows[: args.show]:
        print(f"{name:<40} {tl:8.3f} {tv:10.3f} {ratio:6.1f}  {err} / {','.join(codes)}")
    total_l, total_v = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"total: load {total_l:.2f} s, validate {total_v:.2f} s")
    for name, tl, tv, _, _error, codes in broken:
        print(f"BOUND BROKEN or ok verdict: {name}: load {tl:.3f} s, validate {tv:.3f} s, {codes}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
