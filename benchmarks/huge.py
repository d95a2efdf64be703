"""Scale check: ``pthfmt.open`` + reading one tensor of a checkpoint larger than RAM.

Usage::

    python benchmarks/huge.py [--size-gib N] [--dir benchmarks/out] [--keep] [--json PATH]
                              [--verify-torch]

How the file is built without writing N GiB
-------------------------------------------
The checkpoint is a torch zip checkpoint (what ``torch.save`` writes: ``archive/data.pkl``,
``archive/byteorder``, ``archive/data/<key>``, ``archive/version``), written by hand here:

- every record is *stored* (uncompressed), its payload 64-byte aligned with the same ``FB``
  padding extra field torch uses, with zip64 extra fields wherever a size or an offset passes
  4 GiB, and a zip64 end-of-central-directory record;
- the big records (one 4 GiB ``embed.weight``, then 1 GiB ``layers.<i>.weight`` tensors, all
  bfloat16) are *holes*: after its local header the writer seeks over the payload, so the
  file system (ext4, xfs, btrfs, tmpfs) allocates nothing for it and reads it back as zeros;
  the file takes a few tens of MiB on disk whatever its size;
- their CRC-32 is still correct: the CRC of n zero bytes is computed in O(log n) with the
  GF(2) polynomial arithmetic of zlib's ``crc32_combine`` (checked against ``zlib.crc32`` at
  start-up), so any zip reader that checks CRCs accepts the file;
- the last record, ``probe.weight`` (32 MiB of random bfloat16 bits), lies past the N GiB
  mark and holds real bytes, so reading it proves that zip64 offsets are followed;
- ``data.pkl`` is a protocol-2 pickle emitted opcode by opcode (``collections.OrderedDict``,
  ``torch._utils._rebuild_tensor_v2``, ``torch.BFloat16Storage`` persistent ids), exactly the
  shape of torch's own, so no torch is needed to build it.

The default size is the larger of 32 GiB and 1.3x this machine's RAM.

What is measured
----------------
A fresh child process, with ``RLIMIT_DATA`` set to 1 GiB (the limit on private writable
memory: heap and anonymous mappings, but not a read-only mapping of a file, so mapping the
whole N GiB file is allowed while allocating it is not), runs ``pthfmt.open`` and reads the
metadata of every tensor, then ``.numpy()`` of ``probe.weight`` and touches every byte of it
(``np.bitwise_xor.reduce`` over a ``uint8`` view), checks its SHA-256 against the bytes that
were written, and reads the last element of the 4 GiB hole tensor (must be 0).  It reports
the time of each step and, from ``/proc/self/status``, the peak resident set ``VmHWM`` (an
upper bound of the anonymous memory: it also counts the file pages touched), ``RssAnon`` and
``RssFile`` at the end.  PASS: the child succeeds and ``VmHWM`` stays under 256 MiB.

``--verify-torch`` also loads the file with ``torch.load(mmap=True, weights_only=True)`` in
another child and compares the probe tensor, to show the hand-made file is what torch reads.
The file is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from run import child_env  # benchmarks/run.py, beside this script

GiB = 1 << 30
MiB = 1 << 20
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALIGN = 64
DATA_LIMIT = 1 * GiB  # RLIMIT_DATA of the child
PASS_HWM = 256 * MiB

# --------------------------------------------------------------------------------------------
# CRC-32 of n zero bytes in O(log n): zlib's crc32_combine (multmodp / x2nmodp), reflected.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (bit-reflected, as in zlib)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


_X2N = [1 << 30]  # x^1, then x^(2^k)
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the CRC polynomial."""
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and len(B)."""
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ crc2


def crc32_zeros(n: int) -> int:
    """``zlib.crc32(bytes(n))`` without the bytes."""
    crc, block, size = 0, zlib.crc32(b"\0"), 1  # block = crc of `size` zeros
    while n:
        if n & 1:
            crc = crc32_combine(crc, block, size)
        block = crc32_combine(block, block, size)
        size *= 2
        n >>= 1
    return crc


def _self_test_crc() -> None:
    for n in (0, 1, 2, 3, 63, 64, 1000, 4097, 1 << 16, 123457):
        assert crc32_zeros(n) == zlib.crc32(bytes(n)), n


# --------------------------------------------------------------------------------------------
# A torch-shaped protocol-2 pickle, opcode by opcode.
def _p_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _p_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])  # BININT1
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)  # BININT
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _p_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_p_int(v) for v in values) + b"t"


_ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE


def torch_pickle(tensors: list[tuple[str, str, tuple[int, ...]]]) -> bytes:
    """``OrderedDict(name -> bfloat16 tensor)``; ``tensors`` = (name, storage key, shape)."""
    out = [b"\x80\x02", _ORDERED_DICT, b"("]
    for name, key, shape in tensors:
        numel = 1
        for n in shape:
            numel *= n
        stride = tuple(int(s) for s in _contiguous_strides(shape))
        out += [
            _p_str(name),
            b"ctorch._utils\n_rebuild_tensor_v2\n",
            b"(",  # args of the rebuild
            b"(",
            _p_str("storage"),
            b"ctorch\nBFloat16Storage\n",
            _p_str(key),
            _p_str("cpu"),
            _p_int(numel),
            b"t",
            b"Q",  # BINPERSID
            _p_int(0),
            _p_tuple(shape),
            _p_tuple(stride),
            b"\x89",  # offset, size, stride, False
            _ORDERED_DICT,  # backward hooks
            b"t",
            b"R",
        ]
    out += [b"u", b"."]  # SETITEMS, STOP
    return b"".join(out)


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


# --------------------------------------------------------------------------------------------
# A zip writer for stored records, some of them holes.
class SparseZip:
    def __init__(self, path: Path, prefix: str = "archive") -> None:
        self.f = open(path, "wb")
        self.prefix = prefix
        self.central: list[bytes] = []

    def add(self, rel: str, data: bytes | None = None, hole: int = 0) -> None:
        """A stored record: ``data``, or ``hole`` zero bytes skipped over (not written)."""
        name = f"{self.prefix}/{rel}".encode()
        size = len(data) if data is not None else hole
        crc = zlib.crc32(data) if data is not None else crc32_zeros(hole)
        offset = self.f.tell()
        big = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        start = offset + 30 + len(name) + len(extra) + 4  # after an FB field's own header
        pad = -start % ALIGN
        extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB": torch's alignment padding
        small = 0xFFFFFFFF if big else size
        self.f.write(
            struct.pack(
                "<4sHHHHHIIIHH",
                b"PK\x03\x04",
                45 if big else 20,
                0,
                0,
                0,
                0x21,
                crc,
                small,
                small,
                len(name),
                len(extra),
            )
        )
        self.f.write(name + extra)
        assert self.f.tell() % ALIGN == 0
        if data is not None:
            self.f.write(data)
        else:
            self.f.seek(hole, os.SEEK_CUR)  # the hole
        z64 = b""
        usize = csize = size
        lho = offset
        if size >= 0xFFFFFFFF:
            z64 += struct.pack("<QQ", size, size)
            usize = csize = 0xFFFFFFFF
        if offset >= 0xFFFFFFFF:
            z64 += struct.pack("<Q", offset)
            lho = 0xFFFFFFFF
        cextra = struct.pack("<HH", 1, len(z64)) + z64 if z64 else b""
        self.central.append(
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                45,
                45 if z64 else 20,
                0,
                0,
                0,
                0x21,
                crc,
                csize,
                usize,
                len(name),
                len(cextra),
                0,
                0,
                0,
                0,
                lho,
            )
            + name
            + cextra
        )

    def close(self) -> None:
        cd_offset = self.f.tell()
        for entry in self.central:
            self.f.write(entry)
        cd_size = self.f.tell() - cd_offset
        n = len(self.central)
        z64_offset = self.f.tell()
        self.f.write(
            struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
        )
        self.f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_offset, 1))
        self.f.write(
            struct.pack(
                "<4sHHHHIIH",
                b"PK\x05\x06",
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(cd_size, 0xFFFFFFFF),
                min(cd_offset, 0xFFFFFFFF),
                0,
            )
        )
        self.f.close()


PROBE_SHAPE = (4096, 4096)  # bfloat16: 32 MiB of real bytes at the end of the file


def build(path: Path, size_gib: int) -> dict:
    """Write the sparse checkpoint; return what the reader should find."""
    _self_test_crc()
    embed = (131072, 16384)  # 4 GiB of bfloat16: a zip64-sized record
    layer = (16384, 32768)  # 1 GiB each
    n_layers = max(1, size_gib - 4)
    tensors = [("embed.weight", "0", embed)]
    tensors += [(f"layers.{i}.weight", str(i + 1), layer) for i in range(n_layers)]
    tensors.append(("probe.weight", str(n_layers + 1), PROBE_SHAPE))
    probe = os.urandom(PROBE_SHAPE[0] * PROBE_SHAPE[1] * 2)
    t0 = time.perf_counter()
    z = SparseZip(path)
    z.add("data.pkl", torch_pickle(tensors))
    z.add(".format_version", b"1")
    z.add(".storage_alignment", b"64")
    z.add("byteorder", b"little")
    for name, key, shape in tensors:
        if name == "probe.weight":
            z.add(f"data/{key}", probe)
        else:
            z.add(f"data/{key}", hole=shape[0] * shape[1] * 2)
    z.add("version", b"3\n")
    z.close()
    st = path.stat()
    return {
        "path": str(path),
        "apparent_bytes": st.st_size,
        "allocated_bytes": st.st_blocks * 512,
        "tensors": len(tensors),
        "data_bytes": sum(s[0] * s[1] * 2 for _, _, s in tensors),
        "probe_sha256": hashlib.sha256(probe).hexdigest(),
        "build_s": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
_CHILD = r"""
import hashlib, json, sys, time
t0 = time.perf_counter()
import numpy as np, pthfmt
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmSize")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out
base = status()
t1 = time.perf_counter()
ck = pthfmt.open(sys.argv[1])
meta = [(k, r.dtype, r.shape, r.nbytes, r.storage_key) for k, r in ck.tensors()]
t2 = time.perf_counter()
refs = dict(ck.tensors())
arr = refs["probe.weight"].numpy()
x = int(np.bitwise_xor.reduce(arr.reshape(-1).view(np.uint8)))
t3 = time.perf_counter()
ok = hashlib.sha256(arr.reshape(-1).view(np.uint8)).hexdigest() == sys.argv[2]  # no copy
last = refs["embed.weight"].numpy()[-1, -1]
end = status()
print(json.dumps({"import_s": t1 - t0, "open_meta_s": t2 - t1, "read_touch_s": t3 - t2,
                  "tensors": len(meta), "probe_ok": ok, "hole_zero": float(last) == 0.0,
                  "base": base, "end": end}))
"""

_TORCH_CHILD = r"""
import hashlib, sys, torch
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
p = sd["probe.weight"]
ok = hashlib.sha256(p.view(torch.uint8).numpy().tobytes()).hexdigest() == sys.argv[2]
print(len(sd), ok, float(sd["embed.weight"][-1, -1]) == 0.0, flush=True)
"""


def _limit_data() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))


def measure(info: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, info["path"], info["probe_sha256"]],
        capture_output=True,
        text=True,
        env=child_env(),
        preexec_fn=_limit_data,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip()[-2000:], "wall_s": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["ok"] = bool(res["probe_ok"] and res["hole_zero"])
    return res


def verify_torch(info: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_CHILD, info["path"], info["probe_sha256"]],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return "torch failed: " + proc.stderr.strip()[-500:]
    return "torch.load(mmap=True): " + proc.stdout.strip()


def _default_size_gib() -> int:
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return max(32, -(-int(total * 1.3) // GiB))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--size-gib",
        type=int,
        default=None,
        help="apparent file size (default: max(32, 1.3 x RAM))",
    )
    ap.add_argument("--dir", default=str(HERE / "out"))
    ap.add_argument("--keep", action="store_true", help="keep the file")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument(
        "--verify-torch", action="store_true", help="also check the file with torch.load(mmap=True)"
    )
    args = ap.parse_args(argv)
    size = args.size_gib or _default_size_gib()
    os.makedirs(args.dir, exist_ok=True)
    path = Path(args.dir) / f"huge-{size}GiB.pt"
    try:
        info = build(path, size)
        print(
            f"built {path}: {info['apparent_bytes'] / GiB:.1f} GiB apparent, "
            f"{info['allocated_bytes'] / MiB:.1f} MiB on disk, {info['tensors']} tensors, "
            f"in {info['build_s']:.2f} s"
        )
        if info["allocated_bytes"] > 4 * GiB:
            print("warning: the file system did not keep the holes sparse", file=sys.stderr)
        res = measure(info)
        if args.verify_torch:
            res["torch"] = verify_torch(info)
            print(res["torch"])
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    res["file"] = info
    with open("/proc/meminfo") as f:
        res["mem_total"] = int(f.readline().split()[1]) * 1024
    if res.get("ok"):
        hwm = res["end"]["VmHWM"]
        res["pass"] = hwm < PASS_HWM
        print(
            f"open + metadata of {res['tensors']} tensors: {res['open_meta_s'] * 1e3:.1f} ms; "
            f"read + touch 32 MiB probe: {res['read_touch_s'] * 1e3:.1f} ms; "
            f"whole process {res['wall_s']:.2f} s"
        )
        print(
            f"peak RSS (VmHWM) {hwm / MiB:.1f} MiB, RssAnon {res['end']['RssAnon'] / MiB:.1f} "
            f"MiB, RssFile {res['end']['RssFile'] / MiB:.1f} MiB, mapped "
            f"{res['end']['VmSize'] / GiB:.1f} GiB of address space, RLIMIT_DATA "
            f"{DATA_LIMIT // MiB} MiB; file {info['apparent_bytes'] / GiB:.1f} GiB vs RAM "
            f"{res['mem_total'] / GiB:.1f} GiB"
        )
        print("scale:", "PASS" if res["pass"] else f"FAIL (VmHWM >= {PASS_HWM // MiB} MiB)")
    else:
        res["pass"] = False
        print("scale: FAIL\n" + res.get("error", "wrong data read back"), file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
