#!/usr/bin/env python
"""pthfmt benchmark: build synthetic checkpoints with torch, time every operation in a fresh
subprocess, interleaved over repetitions, and report median time and memory as ratios.

    python benchmarks/run.py [--quick] [--reps N] [--out benchmarks/out/results.json]
                             [--cases large,small,legacy,f32,bf16,huge,scaling] [--readme]
    python benchmarks/run.py --profile small:pthfmt.open     # py-spy self-time hot spots

See benchmarks/README.md for what each row means and how memory is measured.  This file is
also the worker that runs one measurement (``--worker SPEC``) and the builder of the cases
(``--build SPEC``); its top level imports nothing but the standard library, so a worker
imports exactly what its operation needs (no torch in a pthfmt worker).
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
GiB = 1 << 30
RESULT_TAG = "@@RESULT "
SAMPLE_INTERVAL = 0.002  # seconds between two reads of the child's /proc/PID/status


# ============================================================================================
# The cases
# ============================================================================================
def large_spec(quick: bool) -> dict:
    """An LLM-like state dict: ~1 GiB (quick: ~80 MiB) of bfloat16/float16 in ~330 tensors."""
    if quick:
        return {"hidden": 512, "inter": 1408, "layers": 8, "vocab": 16000}
    return {"hidden": 1024, "inter": 2816, "layers": 36, "vocab": 32000}


def small_spec(quick: bool) -> dict:
    """50,000 (quick: 5,000) tensors of 1-16 elements, plus Adam state for a tenth of them."""
    n = 5000 if quick else 50000
    return {"model_tensors": n, "optimizer_params": n // 10}


def large_layout(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    h, i, v = spec["hidden"], spec["inter"], spec["vocab"]
    out = [("model.embed_tokens.weight", (v, h), "bfloat16")]
    for n in range(spec["layers"]):
        dt = "bfloat16" if n % 2 == 0 else "float16"
        p = f"model.layers.{n}."
        out += [(p + f"self_attn.{k}_proj.weight", (h, h), dt) for k in "qkvo"]
        out += [
            (p + "mlp.gate_proj.weight", (i, h), dt),
            (p + "mlp.up_proj.weight", (i, h), dt),
            (p + "mlp.down_proj.weight", (h, i), dt),
            (p + "input_layernorm.weight", (h,), dt),
            (p + "post_attention_layernorm.weight", (h,), dt),
        ]
    out += [("model.norm.weight", (h,), "bfloat16"), ("lm_head.weight", (v, h), "float16")]
    return out


_SMALL_KINDS = [
    ("conv.weight", (2, 2, 2)),
    ("conv.bias", (2,)),
    ("bn.weight", (4,)),
    ("bn.bias", (4,)),
    ("bn.running_mean", (4,)),
    ("bn.running_var", (4,)),
    ("bn.num_batches_tracked", ()),
    ("fc.weight", (3, 5)),
    ("fc.bias", (3,)),
    ("scale", (16,)),
]

CASES = ("large", "small", "legacy", "f32", "bf16")
SCRIPT_CASES = ("huge", "scaling")  # run by their own scripts (huge.py, scaling.py)
# whole-process cases: the large layout in one dtype, as .pt and .safetensors of the same weights
DTYPE_CASES = {"f32": "float32", "bf16": "bfloat16"}


def build_cases(spec: dict) -> None:
    """Worker: make the case files with torch (run in its own process)."""
    import torch
    from safetensors.torch import save_file

    out = Path(spec["dir"])
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    gen = torch.Generator().manual_seed(0)
    if {"large", "legacy"} & set(spec["cases"]):
        t0 = time.perf_counter()
        sd = {}
        for name, shape, dt in large_layout(spec["large"]):
            sd[name] = torch.randn(shape, generator=gen, dtype=getattr(torch, dt))
        data = sum(t.nbytes for t in sd.values())
        torch.save(sd, out / "large.pt")
        torch.save(sd, out / "legacy.pt", _use_new_zipfile_serialization=False)
        save_file(sd, str(out / "large.safetensors"))
        touch = ["model.layers.0.self_attn.q_proj.weight"]
        for case in ("large", "legacy"):
            meta[case] = {
                "file": f"{case}.pt",
                "safetensors": "large.safetensors",
                "tensors": len(sd),
                "data_bytes": data,
                "touch_path": touch,
                "file_bytes": (out / f"{case}.pt").stat().st_size,
                "format": "legacy" if case == "legacy" else "zip",
            }
        print(
            f"built large/legacy: {len(sd)} tensors, {data / GiB:.3f} GiB "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        del sd
    for case in set(DTYPE_CASES) & set(spec["cases"]):
        t0 = time.perf_counter()
        dt = getattr(torch, DTYPE_CASES[case])
        sd = {
            name: torch.randn(shape, generator=gen, dtype=dt)
            for name, shape, _ in large_layout(spec["large"])
        }
        torch.save(sd, out / f"{case}.pt")
        save_file(sd, str(out / f"{case}.safetensors"))
        meta[case] = {
            "file": f"{case}.pt",
            "safetensors": f"{case}.safetensors",
            "tensors": len(sd),
            "data_bytes": sum(t.nbytes for t in sd.values()),
            "touch_path": ["model.layers.0.self_attn.q_proj.weight"],
            "file_bytes": (out / f"{case}.pt").stat().st_size,
            "format": "zip",
        }
        print(f"built {case}: {len(sd)} tensors in {time.perf_counter() - t0:.1f} s", flush=True)
        del sd
    if "small" in spec["cases"]:
        t0 = time.perf_counter()
        n, n_opt = spec["small"]["model_tensors"], spec["small"]["optimizer_params"]
        model = {}
        for k in range(n):
            kind, shape = _SMALL_KINDS[k % len(_SMALL_KINDS)]
            name = f"blocks.{k // len(_SMALL_KINDS)}.{kind}"
            if kind.endswith("num_batches_tracked"):
                model[name] = torch.tensor(k, dtype=torch.int64)
            else:
                model[name] = torch.randn(shape, generator=gen)
        params = list(model.values())
        state = {}
        for k in range(n_opt):
            p = params[k].float()
            state[k] = {
                "step": torch.tensor(100.0),
                "exp_avg": torch.randn_like(p),
                "exp_avg_sq": torch.rand_like(p),
            }
        opt = {
            "state": state,
            "param_groups": [
                {
                    "lr": 1e-3,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 0.01,
                    "amsgrad": False,
                    "maximize": False,
                    "foreach": None,
                    "capturable": False,
                    "differentiable": False,
                    "fused": None,
                    "params": list(range(n)),
                }
            ],
        }
        ckpt = {
            "model": model,
            "optimizer": opt,
            "epoch": 7,
            "global_step": 123456,
            "config": {"name": "bench", "widths": [64, 128, 256], "dropout": 0.1},
        }
        torch.save(ckpt, out / "small.pt")
        flat = {f"model.{k}": v for k, v in model.items()}
        for k, s in state.items():
            flat.update({f"optimizer.state.{k}.{name}": t for name, t in s.items()})
        save_file(flat, str(out / "small.safetensors"))
        meta["small"] = {
            "file": "small.pt",
            "safetensors": "small.safetensors",
            "tensors": len(flat),
            "data_bytes": sum(t.nbytes for t in flat.values()),
            "touch_path": ["model", next(iter(model))],
            "format": "zip",
            "file_bytes": (out / "small.pt").stat().st_size,
        }
        print(f"built small: {len(flat)} tensors in {time.perf_counter() - t0:.1f} s", flush=True)
    old = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    for case in meta:
        meta[case]["fingerprint"] = spec["fingerprints"][case]
    old.update(meta)
    (out / "meta.json").write_text(json.dumps(old, indent=1))


# ============================================================================================
# The worker: one measurement in a fresh process
# ============================================================================================
class Skip(Exception):
    """The operation cannot run here (e.g. ``pthfmt.save`` not written yet)."""


def status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith((b"VmHWM", b"VmRSS", b"RssAnon", b"RssFile", b"RssShmem")):
                k, v = line.split(b":")
                out[k.decode()] = int(v.split()[0]) * 1024
    return out


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def leaves(obj, kinds):
    """Every array/tensor of a nested dict/list/tuple, depth first."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, kinds):
            yield x
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def touch_numpy(arrays) -> int:
    """Read every byte: XOR-reduce a uint8 view of each array (~25 GB/s when in memory)."""
    import numpy as np

    acc = 0
    for a in arrays:
        acc ^= int(np.bitwise_xor.reduce(a.reshape(-1).view(np.uint8)))
    return acc


def _np_leaves(obj):
    import numpy as np

    return leaves(obj, np.ndarray)


def _torch_leaves_as_numpy(obj):
    import torch

    for t in leaves(obj, torch.Tensor):
        yield t.reshape(-1).view(torch.uint8).numpy()


def _pthfmt_save_fn():
    import pthfmt

    save = getattr(pthfmt, "save", None)
    if save is None:
        try:
            from pthfmt.writer import save
        except ImportError as exc:
            raise Skip("n/a: pthfmt.save missing") from exc
    return save


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Each operation: prepare(ctx) -> state (imports, inputs; untimed), run(ctx, state) -> result
# (timed), and a kind: "load" (nothing after), "mmap" (touch every byte, timed separately),
# "save" (fsync the output, timed separately: torch.save and safetensors do not fsync,
# pthfmt.save does; the row's time is save + fsync for every library and for the floor).
def _prep_pthfmt(ctx):
    import pthfmt

    return pthfmt


def _prep_pthfmt_save(ctx):
    import pthfmt

    save = _pthfmt_save_fn()
    obj = pthfmt.load(ctx["path"])
    return save, obj


def _prep_torch(ctx):
    import torch

    return torch


def _prep_torch_save(ctx):
    import torch

    return torch, torch.load(ctx["path"], weights_only=True)


def _prep_st(ctx):
    import ml_dtypes  # noqa: F401  (bfloat16 for safetensors' numpy API)
    import safetensors.numpy as stn

    return stn


def _prep_st_save(ctx):
    stn = _prep_st(ctx)
    return stn, stn.load_file(ctx["st_path"])


def _prep_st_torch(ctx):
    import safetensors.torch as stt

    return stt


def _prep_st_torch_save(ctx):
    stt = _prep_st_torch(ctx)
    return stt, stt.load_file(ctx["st_path"])


def _prep_floor(ctx):
    import numpy as np

    return np


def _prep_floor_write(ctx):
    import numpy as np

    size = os.path.getsize(ctx["path"])
    data = np.empty(size, np.uint8)
    with open(ctx["path"], "rb") as f:
        f.readinto(memoryview(data))  # faults the buffer in before the timing
    return data


def _floor_copy(ctx, np):
    with open(ctx["path"], "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    src = np.frombuffer(m, np.uint8)
    buf = np.empty(len(m), np.uint8)  # freshly allocated: its pages fault in here
    np.copyto(buf, src)
    return buf, m


def _floor_map(ctx, np):
    with open(ctx["path"], "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return [np.frombuffer(m, np.uint8)]


def _floor_write(ctx, data):
    with open(ctx["scratch"], "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _pthfmt_open_meta(ctx, pthfmt):
    ck = pthfmt.open(ctx["path"])
    meta = [
        (k, r.dtype, r.shape, r.stride, r.nbytes, r.storage_key, r.device) for k, r in ck.tensors()
    ]
    return ck, meta


OPS = {
    # name: (prepare, run, kind, leaves-for-touch)
    "pthfmt.load": (_prep_pthfmt, lambda c, m: m.load(c["path"]), "load", None),
    "pthfmt.load_mmap": (
        _prep_pthfmt,
        lambda c, m: m.load(c["path"], mmap=True),
        "mmap",
        _np_leaves,
    ),
    "pthfmt.open": (_prep_pthfmt, _pthfmt_open_meta, "load", None),
    "pthfmt.save": (
        _prep_pthfmt_save,
        lambda c, s: s[0](s[1], c["scratch"], format=c["format"]),
        "save",
        None,
    ),
    "torch.load": (_prep_torch, lambda c, t: t.load(c["path"], weights_only=True), "load", None),
    "torch.load_mmap": (
        _prep_torch,
        lambda c, t: t.load(c["path"], mmap=True, weights_only=True),
        "mmap",
        _torch_leaves_as_numpy,
    ),
    "torch.save": (
        _prep_torch_save,
        lambda c, s: s[0].save(
            s[1], c["scratch"], _use_new_zipfile_serialization=c["format"] == "zip"
        ),
        "save",
        None,
    ),
    "safetensors.load": (_prep_st, lambda c, m: m.load_file(c["st_path"]), "load", None),
    "safetensors.save": (
        _prep_st_save,
        lambda c, s: s[0].save_file(s[1], c["scratch"]),
        "save",
        None,
    ),
    # safetensors.torch.load_file maps the file (no copy, 0 MiB anon): timed with the touch,
    # like the mmap rows
    "safetensors_torch.load": (
        _prep_st_torch,
        lambda c, m: m.load_file(c["st_path"]),
        "mmap",
        lambda r: _torch_leaves_as_numpy(r),
    ),
    "safetensors_torch.save": (
        _prep_st_torch_save,
        lambda c, s: s[0].save_file(s[1], c["scratch"]),
        "save",
        None,
    ),
    "floor.copy": (_prep_floor, _floor_copy, "load", None),
    "floor.touch": (_prep_floor, _floor_map, "mmap", lambda r: iter(r)),
    "floor.write": (_prep_floor_write, _floor_write, "save", None),
}
CLI_OPS = ("cli.pthfmt", "cli.torch", "cli.safetensors")


def timed_region(run, ctx, state, repeat: int):
    for _ in range(repeat - 1):
        run(ctx, state)
    return run(ctx, state)


def worker(spec: dict) -> None:
    ctx = spec
    flag = None
    if spec.get("flag"):
        fd = os.open(spec["flag"], os.O_RDWR)
        flag = mmap.mmap(fd, 8)
        os.close(fd)
    prepare, run, kind, leaf_fn = OPS[spec["op"]]
    res: dict = {}
    try:
        try:
            state = prepare(ctx)
        except Skip as exc:
            res["skip"] = str(exc)
            return
        gc.collect()
        res["base"] = status()
        reset_hwm()
        if flag is not None:
            flag[0] = 1  # the parent's sampler: "in the timed region"
        t0 = time.perf_counter()
        out = timed_region(run, ctx, state, spec.get("repeat", 1))
        t1 = time.perf_counter()
        res["t_op"] = t1 - t0
        if kind == "mmap":
            t2 = time.perf_counter()
            touch_numpy(leaf_fn(out))
            res["t_touch"] = time.perf_counter() - t2
        elif kind == "save":
            t2 = time.perf_counter()
            _fsync_path(ctx["scratch"])
            res["t_fsync"] = time.perf_counter() - t2
        res["end"] = status()
        if flag is not None:
            flag[0] = 2
    except Exception as exc:  # reported as the row's error, not a crash
        res["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        sys.stdout.flush()
        os._exit(0)  # skip tearing down a GiB of objects


def cli_code(op: str, path: str, touch_path: list, mmap_: bool, bf16: bool = False) -> str:
    """The whole program a command-line user runs: import, load, touch one tensor."""
    index = "".join(f"[{k!r}]" for k in touch_path)
    if op == "cli.safetensors":
        # numpy has no bfloat16: safe_open(framework="np") needs ml_dtypes imported for it
        # (imported only for a file that holds such a dtype, as pthfmt does)
        key = ".".join(touch_path)
        return (
            f"import numpy as np{', ml_dtypes' if bf16 else ''}\n"
            "from safetensors import safe_open\n"
            f"with safe_open({path!r}, framework='np') as f:\n"
            f"    x = f.get_tensor({key!r})\n"
            "np.bitwise_xor.reduce(x.reshape(-1).view(np.uint8))\n"
        )
    if op == "cli.pthfmt":
        return (
            f"import numpy as np, pthfmt\nsd = pthfmt.load({path!r}, mmap={mmap_})\n"
            f"x = sd{index}\nnp.bitwise_xor.reduce(x.reshape(-1).view(np.uint8))\n"
        )
    return (
        f"import torch\nsd = torch.load({path!r}, mmap={mmap_}, weights_only=True)\n"
        f"x = sd{index}\nint(x.reshape(-1).view(torch.uint8).sum())\n"
    )


# ============================================================================================
# The parent: sampling, scheduling, reporting
# ============================================================================================
class Sampler(threading.Thread):
    """Peak anonymous memory of a child, read from outside it.

    Method: a thread of this (parent) process reads /proc/PID/status of the child every
    SAMPLE_INTERVAL (2 ms) and keeps the largest RssAnon seen while the child's phase byte
    (a shared 8-byte mmap the child sets to 1 around its timed region) says "timed".  Sampling
    from outside needs no GIL of the child, so long C calls (a memcpy, torch's reader) cannot
    hide a transient peak from it, and it does not perturb the child's timing beyond the few
    microseconds a /proc read costs.  A peak shorter than 2 ms can still be missed, so the
    child's own RssAnon read at the end of the region is folded in as well.  VmHWM (reset
    with clear_refs at the start of the region) gives the exact peak of *total* RSS, which
    also counts file pages: mapped checkpoint pages are not memory the load allocated.
    """

    def __init__(self, pid: int, flag: mmap.mmap | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.flag = pid, flag
        self.stop = threading.Event()
        self.peak_timed = 0
        self.peak_all = 0
        self.samples = 0

    def run(self) -> None:
        try:
            fd = os.open(f"/proc/{self.pid}/status", os.O_RDONLY)
        except OSError:
            return
        try:
            while not self.stop.is_set():
                try:
                    data = os.pread(fd, 4096, 0)
                except OSError:
                    break
                i = data.find(b"RssAnon:")
                if i < 0:
                    break  # exited (a zombie has no memory lines)
                anon = int(data[i + 8 : data.index(b"kB", i)]) * 1024
                self.samples += 1
                self.peak_all = max(self.peak_all, anon)
                if self.flag is None or self.flag[0] == 1:
                    self.peak_timed = max(self.peak_timed, anon)
                time.sleep(SAMPLE_INTERVAL)
        finally:
            os.close(fd)


def child_env() -> dict:
    env = dict(os.environ)
    # a user's installed package has .pyc files: let the children write and use them
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def spawn(argv: list[str], flag: mmap.mmap | None, timeout: float) -> dict:
    """Run one child; return its wall time, rusage peak RSS, sampled anon peaks and stdout."""
    out_path = HERE / "out" / "child.stdout"
    err_path = HERE / "out" / "child.stderr"
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=child_env(), cwd=str(REPO)
        )
        sampler = Sampler(proc.pid, flag)
        sampler.start()
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, wstatus, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wstatus)
        sampler.stop.set()
        sampler.join()
    return {
        "wall": wall,
        "rc": proc.returncode,
        "maxrss": ru.ru_maxrss * 1024,
        "timeout": killed.is_set(),
        "peak_anon_timed": sampler.peak_timed,
        "peak_anon_all": sampler.peak_all,
        "samples": sampler.samples,
        "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace"),
    }


def measure(case: str, op: str, meta: dict, cache: Path, flag: mmap.mmap, timeout: float) -> dict:
    info = meta[case]
    path = str(cache / info["file"])
    scratch = str(HERE / "out" / "scratch.out")
    rec: dict = {"case": case, "op": op}
    if op in CLI_OPS:
        # Each side as its users would run it: mmap wherever the library offers it (pthfmt
        # maps both formats; torch.load(mmap=True) refuses legacy files).
        mm = info["format"] == "zip" or op == "cli.pthfmt"
        if op == "cli.safetensors":
            path = str(cache / info["safetensors"])
        code = cli_code(op, path, info["touch_path"], mm, case in ("large", "bf16"))
        r = spawn([sys.executable, "-c", code], None, timeout)
        rec.update(
            wall=r["wall"],
            t=r["wall"],
            maxrss=r["maxrss"],
            peak_anon=r["peak_anon_all"],
            samples=r["samples"],
            mmap=mm,
        )
        if r["timeout"]:
            rec["error"] = f"timeout: killed after {timeout:.0f} s"
        elif r["rc"] != 0:
            rec["error"] = r["stderr"].strip().splitlines()[-1][:300] if r["stderr"] else "rc"
        return rec
    spec = {
        "op": op,
        "case": case,
        "path": path,
        "scratch": scratch,
        "st_path": str(cache / info.get("safetensors", "")),
        "format": info["format"],
        "flag": str(HERE / "out" / "flag.bin"),
    }
    flag[:] = bytes(8)
    r = spawn(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], flag, timeout
    )
    for p in [scratch, *map(str, (HERE / "out").glob(".scratch.out*"))]:
        if os.path.exists(p):  # the output, or a temporary file a killed save left
            os.unlink(p)
    rec.update(wall=r["wall"], maxrss=r["maxrss"], samples=r["samples"])
    if r["timeout"]:
        rec["error"] = f"timeout: killed after {timeout:.0f} s"
        return rec
    line = next((ln for ln in r["stdout"].splitlines() if ln.startswith(RESULT_TAG)), None)
    if line is None:
        tail = r["stderr"].strip().splitlines()[-1:] or [f"exit {r['rc']}"]
        rec["error"] = f"worker died: {tail[0][:300]}"
        return rec
    res = json.loads(line[len(RESULT_TAG) :])
    if "skip" in res or "error" in res:
        rec.update({k: res[k] for k in ("skip", "error") if k in res})
        return rec
    t = res["t_op"] + res.get("t_touch", 0.0) + res.get("t_fsync", 0.0)
    base, end = res["base"], res["end"]
    peak = max(r["peak_anon_timed"], end["RssAnon"], base["RssAnon"])
    rec.update(
        t=t,
        t_op=res["t_op"],
        t_touch=res.get("t_touch"),
        t_fsync=res.get("t_fsync"),
        base_anon=base["RssAnon"],
        base_rss=base["VmRSS"],
        end_anon=end["RssAnon"],
        end_file=end["RssFile"],
        hwm=end["VmHWM"],
        peak_anon=peak,
        peak_anon_delta=peak - base["RssAnon"],
    )
    return rec


def ops_for(case: str) -> list[str]:
    if case in DTYPE_CASES:  # whole-process rows per dtype only
        return ["cli.pthfmt", "cli.torch", "cli.safetensors"]
    ops = [
        "pthfmt.load",
        "pthfmt.load_mmap",
        "pthfmt.open",
        "pthfmt.save",
        "torch.load",
        "torch.load_mmap",
        "torch.save",
        "safetensors.load",
        "safetensors.save",
        "safetensors_torch.load",
        "safetensors_torch.save",
        "floor.copy",
        "floor.touch",
        "floor.write",
        "cli.pthfmt",
        "cli.torch",
        "cli.safetensors",
    ]
    if case == "legacy":  # torch cannot mmap legacy files; safetensors rows = the large case
        ops = [o for o in ops if o != "torch.load_mmap" and "safetensors" not in o]
    return ops


# -- reporting -------------------------------------------------------------------------------
TORCH_PEER = {
    "pthfmt.load": "torch.load",
    "pthfmt.load_mmap": "torch.load_mmap",
    "pthfmt.save": "torch.save",
    "safetensors.load": "torch.load",
    "safetensors.save": "torch.save",
    "safetensors_torch.load": "torch.load_mmap",
    "safetensors_torch.save": "torch.save",
    "cli.pthfmt": "cli.torch",
    "cli.safetensors": "cli.torch",
}
FLOOR_PEER = {
    "pthfmt.load": "floor.copy",
    "torch.load": "floor.copy",
    "safetensors.load": "floor.copy",
    "pthfmt.load_mmap": "floor.touch",
    "torch.load_mmap": "floor.touch",
    "pthfmt.save": "floor.write",
    "torch.save": "floor.write",
    "safetensors.save": "floor.write",
    "safetensors_torch.load": "floor.touch",
    "safetensors_torch.save": "floor.write",
}
DESCRIBE = {
    "pthfmt.load": "pthfmt.load (copy)",
    "pthfmt.load_mmap": "pthfmt.load(mmap=True) + touch all",
    "pthfmt.open": "pthfmt.open + all metadata",
    "pthfmt.save": "pthfmt.save + fsync",
    "torch.load": "torch.load(weights_only=True)",
    "torch.load_mmap": "torch.load(mmap=True) + touch all",
    "torch.save": "torch.save + fsync",
    "safetensors.load": "safetensors.numpy.load_file",
    "safetensors.save": "safetensors.numpy.save_file + fsync",
    "safetensors_torch.load": "safetensors.torch.load_file (maps) + touch all",
    "safetensors_torch.save": "safetensors.torch.save_file + fsync",
    "floor.copy": "floor: mmap + one copy to a fresh buffer",
    "floor.touch": "floor: mmap + touch all",
    "floor.write": "floor: one write() + fsync",
    "cli.pthfmt": "whole process: python -c pthfmt",
    "cli.torch": "whole process: python -c torch",
    "cli.safetensors": "whole process: python -c safe_open(np)",
}


def summarize(samples: list[dict], meta: dict) -> dict:
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        groups.setdefault((s["case"], s["op"]), []).append(s)
    summary = {}
    for (case, op), recs in groups.items():
        good = [r for r in recs if "t" in r]
        row: dict = {"case": case, "op": op, "n": len(good)}
        if not good:
            bad = recs[0]
            row["note"] = bad.get("skip") or f"error: {bad.get('error', '?')}"
            summary[f"{case}/{op}"] = row
            continue
        ts = [r["t"] for r in good]
        row.update(median=statistics.median(ts), min=min(ts), max=max(ts))
        for key in (
            "peak_anon_delta",
            "peak_anon",
            "hwm",
            "maxrss",
            "base_anon",
            "t_touch",
            "t_fsync",
            "t_op",
        ):
            vals = [r[key] for r in good if r.get(key) is not None]
            if vals:
                row[key] = statistics.median(vals)
        if len(good) < len(recs):
            why = next(r.get("error") or r.get("skip") for r in recs if "t" not in r)
            row["note"] = f"{len(recs) - len(good)} of {len(recs)} runs failed: {why[:60]}"
        summary[f"{case}/{op}"] = row
    for row in summary.values():
        for peer_map, name in ((TORCH_PEER, "vs_torch"), (FLOOR_PEER, "vs_floor")):
            peer = summary.get(f"{row['case']}/{peer_map.get(row['op'], '')}")
            if peer and "median" in row and "median" in peer and peer["median"] > 0:
                row[name] = row["median"] / peer["median"]
        # paired ratios: each repetition's sample over the peer's sample of the same rep
        peer = summary.get(f"{row['case']}/{TORCH_PEER.get(row['op'], '')}")
        if peer and "median" in row and "median" in peer:
            mine = {s["rep"]: s["t"] for s in groups[(row["case"], row["op"])] if "t" in s}
            theirs = {s["rep"]: s["t"] for s in groups[(peer["case"], peer["op"])] if "t" in s}
            pairs = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k] > 0]
            if pairs:
                row["vs_torch_paired"] = statistics.median(pairs)
    return summary


def _slow_ml_dtypes(versions: dict) -> bool:
    """ml_dtypes >= 0.7 on numpy < 2.5: its ~39k ufunc loops take ~0.5 s to register."""

    def major_minor(v):
        try:
            return tuple(int(x) for x in (v or "").split(".")[:2])
        except ValueError:
            return None

    mld, npv = major_minor(versions.get("ml_dtypes")), major_minor(versions.get("numpy"))
    return bool(mld and npv and mld >= (0, 7) and npv < (2, 5))


def _get(summary: dict, case: str, op: str, key: str = "median"):
    return summary.get(f"{case}/{op}", {}).get(key)


def targets(
    summary: dict, meta: dict, huge: dict | None, scaling: dict | None = None
) -> list[dict]:
    """Each target of the issue: measured value, limit, PASS/FAIL (None: not measured)."""
    out = []

    def ratio(case, a, b, limit, tid, text, strict=False):
        x, y = _get(summary, case, a), _get(summary, case, b)
        v = x / y if x is not None and y else None
        ok = None if v is None else (v < limit if strict else v <= limit)
        out.append(
            {
                "id": tid,
                "case": case,
                "op": a,
                "target": text,
                "measured": None if v is None else f"{v:.2f}x",
                "limit": f"{'<' if strict else '<='} {limit}x",
                "pass": ok,
            }
        )

    def mem(case, op, limit_bytes, tid, text):
        v = _get(summary, case, op, "peak_anon_delta")
        ok = None if v is None else v <= limit_bytes
        out.append(
            {
                "id": tid,
                "case": case,
                "op": op,
                "target": text,
                "measured": None if v is None else f"{v / MiB:.1f} MiB",
                "limit": f"<= {limit_bytes / MiB:.1f} MiB",
                "pass": ok,
            }
        )

    ratio(
        "large",
        "pthfmt.load_mmap",
        "torch.load_mmap",
        1.0,
        "T1",
        "load(mmap=True)+touch no slower than torch.load(mmap=True)+touch",
    )
    v = _get(summary, "large", "pthfmt.open")
    out.append(
        {
            "id": "T2",
            "case": "large",
            "op": "pthfmt.open",
            "target": "open + all metadata under 50 ms",
            "measured": None if v is None else f"{v * 1e3:.1f} ms",
            "limit": "< 50 ms",
            "pass": None if v is None else v < 0.050,
        }
    )
    for case in ("large", "legacy"):
        ratio(
            case,
            "pthfmt.load",
            "floor.copy",
            1.3,
            "T3",
            "load (copy) at most 1.3x the mmap+copy floor",
        )
        ratio(
            case,
            "pthfmt.load",
            "torch.load",
            1.0,
            "T4",
            "load (copy) faster than torch.load",
            strict=True,
        )
    ratio(
        "small",
        "pthfmt.load",
        "torch.load",
        0.125,
        "T5",
        "many small: load at least 8x faster than torch.load",
    )
    ratio(
        "small",
        "pthfmt.save",
        "torch.save",
        1.0,
        "T8",
        "many small: save no slower than torch.save (both + fsync)",
    )
    ratio(
        "large",
        "pthfmt.save",
        "torch.save",
        1.0,
        "T6",
        "save faster than torch.save (both + fsync)",
        strict=True,
    )
    ratio(
        "large", "pthfmt.save", "floor.write", 1.5, "T7", "save within 1.5x of one write() + fsync"
    )
    for case in ("large", "legacy"):
        if case in meta:
            mem(
                case,
                "pthfmt.load",
                int(1.15 * meta[case]["data_bytes"]),
                "M1",
                "load (copy): peak anon over interpreter <= 1.15x data",
            )
        mem(case, "pthfmt.load_mmap", 50 * MiB, "M2", "load(mmap=True): peak anon +50 MiB max")
        mem(case, "pthfmt.open", 50 * MiB, "M3", "open: peak anon +50 MiB max")
        mem(case, "pthfmt.save", 64 * MiB, "M4", "save: peak anon +64 MiB over its inputs")
    for case in ("large", "small", "legacy", "f32", "bf16"):
        x, y = _get(summary, case, "cli.pthfmt"), _get(summary, case, "cli.torch")
        v = y / x if x and y else None
        out.append(
            {
                "id": "C1",
                "case": case,
                "op": "cli.pthfmt",
                "target": "whole process (import+load+touch one) >= 5x faster than torch",
                "measured": None if v is None else f"{v:.2f}x faster",
                "limit": ">= 5x",
                "pass": None if v is None else v >= 5.0,
            }
        )
    ratio(
        "f32",
        "cli.pthfmt",
        "cli.safetensors",
        2.0,
        "C2",
        'whole process within 2x of safe_open(framework="np")',
    )
    if huge is not None:
        hwm = huge.get("end", {}).get("VmHWM")
        size = huge.get("file", {}).get("apparent_bytes", 0)
        out.append(
            {
                "id": "S1",
                "case": "huge",
                "op": "pthfmt.open+numpy",
                "target": f"open + read one tensor of a {size / GiB:.0f} GiB file",
                "measured": (
                    f"{hwm / MiB:.0f} MiB peak RSS, "
                    f"{(huge['open_meta_s'] + huge['read_touch_s']) * 1e3:.0f} ms"
                    if hwm
                    else huge.get("error", "failed")[:80]
                ),
                "limit": "works, < 256 MiB",
                "pass": bool(huge.get("pass")),
            }
        )
    if scaling and scaling.get("samples"):
        out += scaling_targets(scaling)
    return [t for t in out if t["case"] in meta or t["case"] in SCRIPT_CASES]


def scaling_targets(scaling: dict) -> list[dict]:
    """L1: open + all metadata does linear work: callgrind's instructions per tensor at 1M
    vs 10k.  (Its wall clock per tensor is reported beside the pickle floor's, not judged:
    past the CPU's caches it grows for CPython's C unpickler building the same graph too.)"""
    own = {int(n): statistics.median(ts) / int(n) for n, ts in scaling["samples"].items()}
    instr = {int(n): v for n, v in (scaling.get("instructions") or {}).items()}
    ref = 10_000 if 10_000 in own else min(own)
    top = max(own)
    if top <= ref:
        return []
    if top in instr and ref in instr:
        v = instr[top] / instr[ref]
        measured = f"{v:.3f}x ({instr[top]:,.0f} vs {instr[ref]:,.0f})"
        ok: bool | None = v <= 1.10
    else:
        measured, ok = "not counted (valgrind)", None
    return [
        {
            "id": "L1",
            "case": "scaling",
            "op": "pthfmt.open",
            "target": f"open + all metadata linear: instructions per tensor at {top:,} "
            f"tensors vs {ref:,}",
            "measured": measured,
            "limit": "<= 1.10x",
            "pass": ok,
        }
    ]


def _fmt_t(v):
    if v is None:
        return ""
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_x(v):
    return "" if v is None else f"{v:.2f}x"


def _fmt_mib(v):
    return "" if v is None else f"{v / MiB:.0f}"


def render(
    summary: dict,
    tlist: list[dict],
    cases: list[str],
    machine: dict,
    reps: int,
    meta: dict,
    scaling: dict | None = None,
) -> str:
    verdicts: dict[tuple[str, str], list[str]] = {}
    for t in tlist:
        mark = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        verdicts.setdefault((t["case"], t["op"]), []).append(f"{t['id']} {mark}")
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_bytes'] / GiB:.1f} GiB RAM; Python {machine['python']}, numpy "
        f"{machine['versions'].get('numpy')}, ml_dtypes "
        f"{machine['versions'].get('ml_dtypes')}, torch {machine['versions'].get('torch')}, "
        f"safetensors {machine['versions'].get('safetensors')}; {reps} repetitions "
        f"interleaved; load average {machine['loadavg_start']} at start, "
        f"{machine.get('loadavg_end', '?')} at end.",
        "",
    ]
    try:
        load = float(machine["loadavg_start"].split()[0])
    except (ValueError, IndexError, KeyError):
        load = 0.0
    if _slow_ml_dtypes(machine["versions"]):
        lines[-1:-1] = [
            "",
            f"**ml_dtypes {machine['versions']['ml_dtypes']} with numpy "
            f"{machine['versions']['numpy']}**: importing it takes ~0.5 s, and "
            "pthfmt imports it inside the timed region of the first bfloat16 "
            "load of each process (the pthfmt.load rows of large and legacy, "
            "the whole-process rows of bfloat16 files); pthfmt asks for "
            "ml_dtypes<0.7 on Python < 3.12 (see the main README).",
        ]
    if load > 0.5 * machine["cores"]:
        lines[-1:-1] = [
            "",
            f"**Busy machine** (load average {load:.1f} on {machine['cores']} "
            "cores when the run started): these figures are noisy; compare "
            "ratios, not absolute times.",
        ]
    for case in cases:
        if case not in meta:
            continue
        m = meta[case]
        lines.append(
            f"- **{case}**: {m['tensors']} tensors, {m['data_bytes'] / MiB:.1f} MiB of "
            f"tensor data, file {m['file_bytes'] / MiB:.1f} MiB"
        )
    lines += [
        "",
        "| case | operation | median | min-max | vs torch | vs floor | peak anon "
        "+MiB | peak RSS MiB | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for op in ops_for(case) + (["torch.load_mmap"] if case == "legacy" else []):
            row = summary.get(f"{case}/{op}")
            if case == "legacy" and op == "torch.load_mmap":
                row = {"note": "n/a: torch.load(mmap=True) refuses legacy files"}
            if row is None:
                continue
            v = " ".join(verdicts.get((case, op), []))
            if "median" not in row:
                lines.append(f"| {case} | {DESCRIBE[op]} | {row.get('note', '')} | | | | | | {v} |")
                continue
            rss = row.get("hwm", row.get("maxrss"))
            anon = _fmt_mib(row.get("peak_anon_delta"))
            if op in CLI_OPS:  # whole process: absolute, not over a baseline
                anon = f"{_fmt_mib(row.get('peak_anon'))} (total)"
            floor = row.get("vs_floor") if case != "small" else None  # tiny data: no floor
            failed = f" ({row['note']})" if row.get("note") else ""
            lines.append(
                f"| {case} | {DESCRIBE[op]} | {_fmt_t(row['median'])}{failed} | "
                f"{_fmt_t(row['min'])}-{_fmt_t(row['max'])} | "
                f"{_fmt_x(row.get('vs_torch'))} | "
                f"{_fmt_x(floor)} | {anon} | "
                f"{_fmt_mib(rss)} | {v} |"
            )
    if scaling and scaling.get("table"):
        lines += [
            "",
            "`pthfmt.open` + all metadata by number of tensors (`scaling.py`, flat "
            "state dicts of 4-element float32 tensors written by pthfmt.save, "
            f"{len(next(iter(scaling['samples'].values())))} repetitions):",
            "",
            scaling["table"],
        ]
    lines += ["", "| id | case | target | measured | limit | result |", "|---|---|---|---|---|---|"]
    for t in tlist:
        mark = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "**FAIL**")
        lines.append(
            f"| {t['id']} | {t['case']} | {t['target']} | {t['measured'] or 'n/a'} | "
            f"{t['limit']} | {mark} |"
        )
    return "\n".join(lines)


# -- machine, cache --------------------------------------------------------------------------
def machine_info() -> dict:
    from importlib import metadata

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        ram = int(f.readline().split()[1]) * 1024
    versions = {}
    for pkg in ("numpy", "ml_dtypes", "torch", "safetensors"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        rev = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "git": rev,
        "loadavg_start": _loadavg(),
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
    }


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _loadavg() -> str:
    return " ".join((_read("/proc/loadavg") or "? ? ?").split()[:3])


def ensure_cases(cases: list[str], quick: bool, cache: Path) -> dict:
    from importlib import metadata

    specs = {"large": large_spec(quick), "small": small_spec(quick)}
    prints = {
        c: json.dumps(
            [specs["small" if c == "small" else "large"], metadata.version("torch"), c],
            sort_keys=True,
        )
        for c in CASES
    }
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    missing = [
        c
        for c in cases
        if meta.get(c, {}).get("fingerprint") != prints[c] or not (cache / meta[c]["file"]).exists()
    ]
    if missing:
        print(f"building {', '.join(missing)} in {cache} ...", flush=True)
        spec = {
            "dir": str(cache),
            "cases": missing,
            "large": specs["large"],
            "small": specs["small"],
            "fingerprints": prints,
        }
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--build", json.dumps(spec)],
            check=True,
            env=child_env(),
        )
        meta = json.loads(meta_path.read_text())
    return {c: meta[c] for c in cases}


def warm_cache(paths: list[Path]) -> None:
    """Read each file once so every run starts with it in the page cache (warm runs)."""
    buf = bytearray(16 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def compile_package() -> None:
    """Write pthfmt's .pyc files (as an installed package has) before timing imports."""
    import compileall

    compileall.compile_dir(str(REPO / "pthfmt"), quiet=1)


def save_available() -> str | None:
    code = "import pthfmt\nif not hasattr(pthfmt, 'save'):\n    from pthfmt.writer import save"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=str(REPO)
    )
    return None if r.returncode == 0 else "n/a: pthfmt.save missing"


def profile(target: str, quick: bool, repeat: int) -> None:
    """py-spy the timed region of one operation; print the top self-time functions."""
    case, op = target.split(":")
    cache = HERE / "out" / ("cache-quick" if quick else "cache")
    meta = ensure_cases([case], quick, cache)
    info = meta[case]
    raw = HERE / "out" / f"profile-{case}-{op}.txt"
    spec = {
        "op": op,
        "case": case,
        "path": str(cache / info["file"]),
        "scratch": str(HERE / "out" / "scratch.out"),
        "st_path": str(cache / info.get("safetensors", "")),
        "format": info["format"],
        "repeat": repeat,
    }
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run(
        [
            str(spy) if spy.exists() else "py-spy",
            "record",
            "-r",
            "1000",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            json.dumps(spec),
        ],
        check=True,
        env=child_env(),
        cwd=str(REPO),
        stdout=subprocess.DEVNULL,
    )
    Path(spec["scratch"]).unlink(missing_ok=True)
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("timed_region ") for f in frames):
            continue  # imports, input building: not the operation
        n = int(count)
        total += n
        names = [_frame_name(f) for f in frames]
        self_t[names[-1]] = self_t.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
    print(f"{total} samples in the timed region of {op} on {case} (x{repeat}); raw: {raw}")
    print(f"{'self %':>7} {'incl %':>7}  function")
    for name, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{100 * n / total:7.1f} {100 * incl[name] / total:7.1f}  {name}")


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``."""
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    for prefix in (str(REPO) + "/", "/work/venv/lib/"):
        loc = loc.replace(prefix, "")
    return f"{func} ({loc})" if loc else func


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pthfmt benchmark (see benchmarks/README.md)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small cases (~80 MiB, 5,000 tensors), 3 reps, no huge file, no scaling",
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 3)")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON results (default benchmarks/out/results.json, quick: results-quick.json)",
    )
    ap.add_argument(
        "--cases",
        default=None,
        help="comma list of large,small,legacy,f32,bf16,huge,scaling (default "
        "all; quick: no huge, no scaling)",
    )
    ap.add_argument("--ops", default=None, help="comma list of operations to run (default all)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds before one measurement is killed (then skipped in later "
        "repetitions); default 300",
    )
    ap.add_argument(
        "--readme", action="store_true", help="write the table into benchmarks/README.md"
    )
    ap.add_argument(
        "--report",
        metavar="JSON",
        help="only re-render the table of an earlier run's JSON (with --readme: into the README)",
    )
    ap.add_argument("--profile", metavar="CASE:OP", help="py-spy one operation and stop")
    ap.add_argument("--profile-repeat", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.build:
        build_cases(json.loads(args.build))
        return 0
    if args.profile:
        compile_package()
        profile(args.profile, args.quick, args.profile_repeat)
        return 0
    if args.report:
        data = json.loads(Path(args.report).read_text())
        meta = data["cases"]
        summary = summarize(data["samples"], meta)
        scaling = data.get("scaling")
        table = render(
            summary,
            targets(summary, meta, data.get("huge"), scaling),
            list(meta),
            data["machine"],
            data["reps"],
            meta,
            scaling,
        )
        print(table)
        if args.readme:
            when = data["machine"].get("date") or time.strftime(
                "%Y-%m-%d %H:%M", time.localtime(Path(args.report).stat().st_mtime)
            )
            update_readme(table, data.get("quick", False), when)
        return 0

    reps = args.reps or (3 if args.quick else 5)
    default_cases = ",".join(CASES) + ("" if args.quick else ",huge,scaling")
    cases = [c.strip() for c in (args.cases or default_cases).split(",") if c.strip()]
    bad = [c for c in cases if c not in (*CASES, *SCRIPT_CASES)]
    if bad:
        ap.error(f"unknown cases: {bad}")
    run_huge, run_scaling = "huge" in cases, "scaling" in cases
    cases = [c for c in cases if c not in SCRIPT_CASES]
    out_json = Path(
        args.out or HERE / "out" / ("results-quick.json" if args.quick else "results.json")
    )
    (HERE / "out").mkdir(parents=True, exist_ok=True)
    cache = HERE / "out" / ("cache-quick" if args.quick else "cache")
    machine = machine_info()
    machine["date"] = time.strftime("%Y-%m-%d %H:%M")
    compile_package()
    meta = ensure_cases(cases, args.quick, cache) if cases else {}
    warm_cache(sorted({cache / m[k] for m in meta.values() for k in ("file", "safetensors")}))
    save_note = save_available()
    if save_note:
        print(save_note, "- the save rows are skipped", flush=True)

    flag_path = HERE / "out" / "flag.bin"
    flag_path.write_bytes(bytes(8))
    fd = os.open(flag_path, os.O_RDWR)
    flag = mmap.mmap(fd, 8)
    os.close(fd)

    only = set(args.ops.split(",")) if args.ops else None
    jobs = [(c, op) for c in cases for op in ops_for(c) if only is None or op in only]
    samples: list[dict] = []
    timed_out: dict[tuple[str, str], int] = {}
    t_start = time.perf_counter()
    for rep in range(reps):
        order = jobs[:]
        random.Random(rep).shuffle(order)  # interleaved, a different order each rep
        for k, (case, op) in enumerate(order):
            if op == "pthfmt.save" and save_note:
                rec = {"case": case, "op": op, "skip": save_note}
            elif (case, op) in timed_out:
                rec = {
                    "case": case,
                    "op": op,
                    "error": f"timeout: killed after "
                    f"{args.timeout:.0f} s in repetition {timed_out[case, op] + 1}",
                }
            else:
                rec = measure(case, op, meta, cache, flag, args.timeout)
                if rec.get("error", "").startswith("timeout"):
                    timed_out[case, op] = rep
            rec.update(rep=rep, order=k)
            samples.append(rec)
            shown = rec.get("skip") or rec.get("error") or _fmt_t(rec.get("t"))
            print(
                f"[rep {rep + 1}/{reps} {k + 1:2d}/{len(order)}] {case:6s} {op:18s} {shown}",
                flush=True,
            )
    huge = None
    if run_huge:
        hj = HERE / "out" / "huge.json"
        subprocess.run([sys.executable, str(HERE / "huge.py"), "--json", str(hj)], env=child_env())
        huge = json.loads(hj.read_text()) if hj.exists() else {"error": "huge.py failed"}
    scaling = run_scaling_script(args.quick, min(reps, 3)) if run_scaling else None
    machine["loadavg_end"] = _loadavg()
    machine["elapsed_s"] = time.perf_counter() - t_start
    summary = summarize(samples, meta)
    tlist = targets(summary, meta, huge, scaling)
    table = render(summary, tlist, cases, machine, reps, meta, scaling)
    print("\n" + table)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps(
            {
                "machine": machine,
                "quick": args.quick,
                "reps": reps,
                "cases": meta,
                "sample_interval_s": SAMPLE_INTERVAL,
                "summary": summary,
                "targets": tlist,
                "huge": huge,
                "scaling": scaling,
                "samples": samples,
                "table_markdown": table,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out_json}")
    if args.readme:
        update_readme(table, args.quick, machine["date"])
    return 0


def run_scaling_script(quick: bool, reps: int) -> dict:
    """``scaling.py``: open + all metadata of 1k..1M tensors (quick: 1k and 10k)."""
    sj = HERE / "out" / "scaling.json"
    sj.unlink(missing_ok=True)
    sizes = "1000,10000" if quick else "1000,10000,100000,1000000"
    counted = [] if quick or not shutil.which("valgrind") else ["--instructions", "10000,1000000"]
    subprocess.run(
        [
            sys.executable,
            str(HERE / "scaling.py"),
            "--reps",
            str(reps),
            "--sizes",
            sizes,
            *counted,
            "--json",
            str(sj),
        ],
        env=child_env(),
        cwd=str(REPO),
    )
    return json.loads(sj.read_text()) if sj.exists() else {"error": "scaling.py failed"}


def update_readme(table: str, quick: bool, when: str | None) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if begin not in text or end not in text:
        print("README has no results markers; not updated")
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    note = f"Latest run ({when or '?'}{', --quick' if quick else ''}):\n\n"
    readme.write_text(f"{head}{begin}\n{note}{table}\n{end}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    sys.exit(main())
