"""Whole-process start-up: what a command-line user pays before the first tensor.

Each row is one ``python -c`` program, run in a fresh process and timed from spawn to exit by
this parent; the rows are interleaved over the repetitions (so a slow moment of the machine
hits every row alike) and the median is reported.  The files are written once by pthfmt (a
float32 and a bfloat16 state dict of 64 tensors of 256x256) and the safetensors twin of the
float32 file (written without torch, by pthfmt.convert), read once before timing (warm cache).

    python benchmarks/startup.py [--reps 15] [--json PATH] [--alt-python LABEL=PYTHON ...]

Rows: ``import numpy``, ``import ml_dtypes``, ``import pthfmt``, ``pthfmt --help`` (the CLI),
load + touch one tensor of the float32 and the bfloat16 file (mmap), the same with
``safetensors.safe_open(framework="np")`` (when installed), and with ``torch.load(mmap=True)``
(when installed).  The report names the versions of Python, numpy, ml_dtypes, torch and
safetensors, and says whether a float32 load imported ml_dtypes (it must not).

``--alt-python LABEL=PYTHON`` (repeatable) adds ``import ml_dtypes`` and the two pthfmt load
rows run by another interpreter (another venv, e.g. one with a different ml_dtypes), labelled
``[LABEL]``, interleaved with the others in the same run; pthfmt is imported from the
current directory by every interpreter (run from the repository root).

pthfmt's modules are byte-compiled first, as ``pip install`` does: an editable install under
``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every module from source in every
process (about 30 ms), which no installed copy pays.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

KEY = "layer.0.weight"


def build(folder: str) -> dict[str, str]:
    import numpy as np

    import pthfmt

    paths = {}
    rng = np.random.default_rng(0)
    f32 = {f"layer.{i}.weight": rng.standard_normal((256, 256), np.float32) for i in range(64)}
    paths["f32"] = os.path.join(folder, "f32.pth")
    pthfmt.save(f32, paths["f32"])
    bf16 = {k: pthfmt.Tensor(v.astype(pthfmt.DTYPES["bfloat16"].numpy)) for k, v in f32.items()}
    paths["bf16"] = os.path.join(folder, "bf16.pth")
    pthfmt.save(bf16, paths["bf16"])
    paths["st"] = os.path.join(folder, "f32.safetensors")
    pthfmt.convert(paths["f32"], paths["st"])
    return paths


def programs(paths: dict[str, str], alt: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each row: (interpreter, program)."""
    rows = {name: (sys.executable, code) for name, code in _programs(paths).items()}
    for label, python in alt.items():
        for name, code in _programs(paths).items():
            if name in ("import ml_dtypes", *PTHFMT_LOADS):
                rows[f"{name} [{label}]"] = (python, code)
    return rows


PTHFMT_LOADS = ("pthfmt f32 load(mmap) + touch one", "pthfmt bf16 load(mmap) + touch one")


def _programs(paths: dict[str, str]) -> dict[str, str]:
    touch = f"x = sd[{KEY!r}]; int(x.reshape(-1).view('uint8').sum())"
    rows = {
        "import numpy": "import numpy",
        "import ml_dtypes": "import ml_dtypes",
        "import pthfmt": "import pthfmt",
        "pthfmt --help": "import sys; sys.argv = ['pthfmt', '--help']\n"
        "from pthfmt.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
        "pthfmt f32 load(mmap) + touch one": "import sys, pthfmt\n"
        f"sd = pthfmt.load({paths['f32']!r}, mmap=True); {touch}\n"
        "assert 'ml_dtypes' not in sys.modules, 'a float32 load imported ml_dtypes'",
        "pthfmt bf16 load(mmap) + touch one": "import pthfmt\n"
        f"sd = pthfmt.load({paths['bf16']!r}, mmap=True); {touch}",
    }
    if _has("safetensors"):
        rows["safetensors f32 safe_open(np) + one"] = (
            "from safetensors import safe_open\n"
            f"with safe_open({paths['st']!r}, framework='np') as f:\n"
            f"    x = f.get_tensor({KEY!r}); int(x.reshape(-1).view('uint8').sum())"
        )
    if _has("torch"):
        rows["torch f32 load(mmap) + touch one"] = (
            "import torch\n"
            f"sd = torch.load({paths['f32']!r}, mmap=True, weights_only=True)\n"
            f"int(sd[{KEY!r}].reshape(-1).view(torch.uint8).sum())"
        )
        rows["torch bf16 load(mmap) + touch one"] = (
            "import torch\n"
            f"sd = torch.load({paths['bf16']!r}, mmap=True, weights_only=True)\n"
            f"int(sd[{KEY!r}].reshape(-1).view(torch.uint8).sum())"
        )
    return rows


def _has(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "ml_dtypes", "torch", "safetensors"):
        out[name] = md.version(name) if _has(name) else "-"
    return out


def compile_package() -> None:
    """Byte-compile pthfmt where it is imported from (what pip does at install time)."""
    import compileall

    import pthfmt

    compileall.compile_dir(os.path.dirname(pthfmt.__file__), quiet=1)


def run(rows: dict[str, tuple[str, str]], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in rows}
    for python, code in rows.values():  # once untimed: caches warm, errors surface
        subprocess.run([python, "-c", code], check=True, capture_output=True)
    for _ in range(reps):
        for name, (python, code) in rows.items():
            start = time.perf_counter()
            subprocess.run([python, "-c", code], check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    return times


def alt_versions(python: str) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        "print(sys.version.split()[0], m.version('numpy'), m.version('ml_dtypes'))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    py, np_v, mld = out.stdout.split()
    return f"python {py}, numpy {np_v}, ml_dtypes {mld}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", help="write the raw samples here")
    ap.add_argument("--alt-python", action="append", default=[], metavar="LABEL=PYTHON")
    args = ap.parse_args()
    alt = dict(a.split("=", 1) for a in args.alt_python)
    compile_package()
    load_start = " ".join(open("/proc/loadavg").read().split()[:3])
    with tempfile.TemporaryDirectory() as folder:
        rows = programs(build(folder), alt)
        times = run(rows, args.reps)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    info = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for label, python in alt.items():
        print(f"[{label}]: {python}: {alt_versions(python)}")
    load_end = " ".join(open("/proc/loadavg").read().split()[:3])
    print(
        f"{args.reps} repetitions interleaved; load average {load_start} at start, "
        f"{load_end} at end"
    )
    print(f"{'row':40} {'median':>9} {'min':>9}  vs import numpy")
    for name, ts in times.items():
        print(
            f"{name:40} {med[name] * 1e3:7.0f}ms {min(ts) * 1e3:7.0f}ms  "
            f"{med[name] / med['import numpy']:.2f}x"
        )
    for ours, theirs in (
        ("pthfmt f32 load(mmap) + touch one", "torch f32 load(mmap) + touch one"),
        ("pthfmt bf16 load(mmap) + touch one", "torch bf16 load(mmap) + touch one"),
        ("pthfmt f32 load(mmap) + touch one", "safetensors f32 safe_open(np) + one"),
    ):
        if theirs in med:
            print(f"{ours}: {med[ours] / med[theirs]:.2f}x the time of {theirs}")
    for label in alt:
        for ours in PTHFMT_LOADS:
            theirs = ours.replace("pthfmt", "torch")
            if theirs in med:
                mine = med[f"{ours} [{label}]"]
                print(f"{ours} [{label}]: {mine / med[theirs]:.2f}x the time of {theirs}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "versions": info,
                    "alt": {k: alt_versions(v) for k, v in alt.items()},
                    "loadavg": [load_start, load_end],
                    "samples": times,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
