"""Torch-written checkpoints and broken, ambiguous and hostile variants of them, with the
exact problem codes ``pthfmt.validate`` must report for each (``EXPECTED``).

``build_files`` needs torch (imported when it runs); the module itself does not, so that
the code table (``EXPECTED``) can be checked in ``tests/unit``.  The root conftest's
``broken_files`` fixture builds the files once per session.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

from pthfmt.validation import MAX_PER_CODE

__all__ = ["EXPECTED", "FV", "Payload", "Thing", "build_files"]

FV = "record.format_version"  # every Python-zipfile rewrite of a torch file loses miniz's layout


class Thing:
    """A plain class: torch.save pickles it by reference (a global outside the allowlist)."""

    def __init__(self) -> None:
        self.n = 1


class Payload:
    """Pickles as a call of os.system -- never called: validation runs nothing."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


# -- building files --------------------------------------------------------------------------


def _data_offset(raw: bytes, header_offset: int) -> int:
    nlen, xlen = struct.unpack_from("<HH", raw, header_offset + 26)
    return header_offset + 30 + nlen + xlen


def _eocd(raw: bytes) -> tuple[int, int, int, int]:
    """(eocd position, entry count, directory size, directory offset) of a plain zip."""
    pos = raw.rfind(b"PK\x05\x06")
    _, _, _, _, count, size, offset, _ = struct.unpack_from("<4sHHHHIIH", raw, pos)
    return pos, count, size, offset


def _central_entries(raw: bytes) -> list[tuple[str, bytes]]:
    _, count, _, offset = _eocd(raw)
    out, p = [], offset
    for _ in range(count):
        nlen, xlen, clen = struct.unpack_from("<HHH", raw, p + 28)
        end = p + 46 + nlen + xlen + clen
        out.append((raw[p + 46 : p + 46 + nlen].decode(), raw[p:end]))
        p = end
    return out


def _with_directory(raw: bytes, entries: list[bytes]) -> bytes:
    """Replace a plain (non-zip64) zip's central directory by ``entries``."""
    pos, _, _, offset = _eocd(raw)
    cd = b"".join(entries)
    eocd = bytearray(raw[pos:])
    struct.pack_into("<HHII", eocd, 8, len(entries), len(entries), len(cd), offset)
    return raw[:offset] + cd + bytes(eocd)


def _crafted(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A valid hand-made checkpoint (Python zipfile, no alignment, no .format_version)."""
    import torch

    from tests.support.torch_helpers import FakeStorage, FakeTensor, craft_checkpoint, craft_pickle

    fs = FakeStorage("0", torch.FloatStorage, 4)
    pk = craft_pickle({"a": FakeTensor(fs, 0, (4,), (1,))})
    craft_checkpoint(path, pk, {"0": struct.pack("<4f", 1, 2, 3, 4)})
    if extra:
        with zipfile.ZipFile(path, "a") as z:
            for name, data in extra.items():
                z.writestr(name, data)
    return path


def build_files(d: Path) -> dict[str, Path]:
    """Every test file, by name (torch-written, then broken copies of them)."""
    import warnings

    import torch

    from tests.support.torch_helpers import (
        FakeStorage,
        FakeTensor,
        craft_checkpoint,
        craft_pickle,
        rezip,
        to_big_endian,
    )

    torch.manual_seed(0)
    f: dict[str, Path] = {}

    def p(name: str) -> Path:
        f[name] = d / f"{name}.pt"
        return f[name]

    sd = collections.OrderedDict(
        w=torch.randn(4, 3),
        b=torch.randn(4),
        i=torch.arange(5),
        u=torch.tensor([1, 2], dtype=torch.uint16),
        e=torch.empty(0),
    )
    torch.save(sd, p("good"))
    raw = f["good"].read_bytes()
    plain = collections.OrderedDict((k, v) for k, v in sd.items() if k != "u")
    torch.save(plain, p("legacy"), _use_new_zipfile_serialization=False)
    # torch writes uint16 into legacy files but cannot load them back (format notes §5)
    torch.save(sd, p("legacy_v3"), _use_new_zipfile_serialization=False)
    torch.save({"v": torch.arange(10.0)[2:4]}, p("partial"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p("torchscript"))
    torch.save(sd, p("protocol4"), pickle_protocol=4)
    torch.save({"w": torch.ones(2), "x": Thing(), "e": Payload()}, p("evil"))
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(sd, p("nocrc"))
    finally:
        torch.serialization.set_crc32_options(True)

    # damage
    p("truncated").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(f["good"]) as z:
        info = z.getinfo("good/data/0")
        data_pkl = z.read("good/data.pkl")
    flipped = bytearray(raw)
    flipped[_data_offset(raw, info.header_offset) + 3] ^= 0x10
    p("bitflip").write_bytes(bytes(flipped))
    p("prepended").write_bytes(b"JUNK" + raw)
    p("appended").write_bytes(raw + b"tail bytes")
    legacy = f["legacy"].read_bytes()
    p("legacy_truncated").write_bytes(legacy[:-10])
    p("legacy_appended").write_bytes(legacy + b"xyz")

    # rewritten with Python's zipfile
    rezip(f["good"], p("deflated"), compression=zipfile.ZIP_DEFLATED)
    rezip(
        f["good"],
        p("extra"),
        extra={
            "good/data/99": b"xxxx",
            "good/junk.txt": b"hello",
            "good/evil.pkl": b"cos\nsystem\n(S'echo hi'\ntR.",
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        rezip(f["good"], p("duplicate"), extra={"good/data/0": b"\0" * 48})
    rezip(f["good"], p("case_collision"), extra={"good/DATA.PKL": data_pkl})
    rezip(
        f["good"],
        p("case_only"),
        extra={"good/DATA.PKL": data_pkl},
        transform=lambda n, b: None if n == "good/data.pkl" else b,
    )
    rezip(
        f["good"],
        p("byteorder"),
        transform=lambda n, b: b"little\n" if n == "good/byteorder" else b,
    )
    rezip(f["good"], p("version"), transform=lambda n, b: b"abc" if n == "good/version" else b)
    rezip(
        f["good"], p("version_3abc"), transform=lambda n, b: b"3abc" if n == "good/version" else b
    )
    torch.save({"u": torch.tensor([1, 2], dtype=torch.uint16), "f": torch.ones(2)}, d / "u16.pt")
    to_big_endian(d / "u16.pt", p("big_endian_v3"))

    # hand-made pickles
    fs = FakeStorage("0", torch.FloatStorage, 4)
    craft_checkpoint(
        p("redeclared"),
        craft_pickle(
            {
                "a": FakeTensor(fs, 0, (4,), (1,)),
                "b": FakeTensor(FakeStorage("0", torch.LongStorage, 2), 0, (2,), (1,)),
            }
        ),
        {"0": b"\0" * 16},
    )
    craft_checkpoint(
        p("size_mismatch"), craft_pickle({"a": FakeTensor(fs, 0, (4,), (1,))}), {"0": b"\0" * 12}
    )
    craft_checkpoint(
        p("view"),
        craft_pickle({"a": FakeTensor(fs, 2, (4,), (1,)), "c": FakeTensor(fs, 0, (2, 2), (2, 1))}),
        {"0": b"\0" * 16},
    )
    craft_checkpoint(p("missing_record"), craft_pickle({"a": FakeTensor(fs, 0, (4,), (1,))}), {})
    craft_checkpoint(
        p("device"),
        craft_pickle(
            {
                "a": FakeTensor(FakeStorage("0", torch.FloatStorage, 4, "bogus"), 0, (4,), (1,)),
                "b": FakeTensor(FakeStorage("1", torch.FloatStorage, 1, "cuda:1"), 0, (1,), (1,)),
            }
        ),
        {"0": b"\0" * 16, "1": b"\0" * 4},
    )
    import subprocess as sp  # a module pickled by reference: never imported by pthfmt

    craft_checkpoint(
        p("many_globals"),
        pickle.dumps(
            {"x": collections.OrderedDict(), "y": [os.system, sp.Popen, sp.call]}, protocol=4
        ),
        {},
    )
    craft_checkpoint(
        p("hundreds_of_globals"),
        b"\x80\x02](" + b"".join(b"cos\nf%d\n" % i for i in range(MAX_PER_CODE + 50)) + b"e.",
        {},
    )

    # zip surgery on a hand-made archive (no zip64, no data descriptors)
    _crafted(p("outside_folder"), {"other/x.txt": b"x"})
    _crafted(p("unsafe_name"), {"archive/../evil.sh": b"#!/bin/sh\n"})
    base = _crafted(d / "base.pt").read_bytes()
    entries = _central_entries(base)
    copy = next(e for n, e in entries if n == "archive/data/0")
    p("overlap").write_bytes(_with_directory(base, [e for _, e in entries] + [copy]))
    hidden = _crafted(d / "hidden_src.pt", {"archive/hidden.pkl": b"cos\nsystem\n."})
    raw_h = hidden.read_bytes()
    p("hidden_member").write_bytes(
        _with_directory(raw_h, [e for n, e in _central_entries(raw_h) if n != "archive/hidden.pkl"])
    )
    renamed = bytearray(base)
    with zipfile.ZipFile(d / "base.pt") as z:
        lho = z.getinfo("archive/version").header_offset
    renamed[lho + 30 + len("archive/versio")] = ord("X")
    p("local_name").write_bytes(bytes(renamed))
    # a deflated record whose headers claim fewer bytes than it inflates to
    rezip(d / "base.pt", d / "deflated_base.pt", compression=zipfile.ZIP_DEFLATED)
    bomb = bytearray((d / "deflated_base.pt").read_bytes())
    with zipfile.ZipFile(d / "deflated_base.pt") as z:
        info = z.getinfo("archive/data/0")
    struct.pack_into("<I", bomb, info.header_offset + 22, 8)
    cd = next(e for n, e in _central_entries(bytes(bomb)) if n == "archive/data/0")
    struct.pack_into("<I", bomb, bytes(bomb).find(cd) + 24, 8)
    p("inflate_size").write_bytes(bytes(bomb))

    # not zip at all
    p("plain_pickle").write_bytes(pickle.dumps({"cmd": os.system}, protocol=2))
    p("empty").write_bytes(b"")
    p("random").write_bytes(bytes(range(256)) * 4)
    tar_path = p("tar")
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (
            ("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
            ("tensors", pickle.dumps(0, 2)),
            ("pickle", b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R."),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return f


NC = "legacy.no_checksum"  # the note every legacy-format file gets

#: file -> (codes without strict, codes added by strict)
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "good": (set(), set()),
    "legacy": ({NC}, set()),
    "legacy_v3": ({"legacy.v3_dtype", NC}, set()),
    "partial": (set(), {"storage.unviewed"}),
    "torchscript": ({"format.torchscript"}, set()),
    "protocol4": ({"pickle.weights_only"}, {"pickle.protocol"}),
    "evil": ({"pickle.global"}, set()),
    "nocrc": ({"zip.crc_zero"}, set()),
    "truncated": ({"zip.eocd_missing"}, set()),
    "bitflip": ({"zip.crc_mismatch"}, set()),
    "prepended": ({"zip.prepended_data"}, set()),
    "appended": ({"zip.trailing_data"}, set()),
    "legacy_truncated": ({"file.truncated", NC}, set()),
    "legacy_appended": ({"legacy.trailing_data", NC}, set()),
    "deflated": ({"zip.compressed_data", FV}, {"zip.compressed"}),
    "extra": (
        {"record.extra_pickle", "pickle.global", FV},
        {"storage.unreferenced", "record.extra", "zip.unaligned"},
    ),
    "duplicate": ({"zip.duplicate_name", FV}, {"zip.unaligned"}),
    "case_collision": ({"zip.case_collision", "record.extra_pickle", FV}, {"zip.unaligned"}),
    "case_only": ({"record.case_mismatch", FV}, {"zip.unaligned"}),
    "byteorder": ({"record.byteorder", FV}, {"zip.unaligned"}),
    "version": ({"record.version", FV}, {"zip.unaligned"}),
    "version_3abc": ({"record.version_text", FV}, {"zip.unaligned"}),
    "big_endian_v3": ({"record.big_endian_v3", FV}, {"zip.unaligned"}),
    "redeclared": ({"storage.redeclared"}, {"zip.unaligned"}),
    "size_mismatch": ({"storage.size_mismatch"}, {"zip.unaligned"}),
    "view": ({"tensor.view"}, {"zip.unaligned"}),
    "missing_record": ({"storage.missing_record"}, set()),
    "device": ({"device.unknown"}, {"zip.unaligned"}),
    "many_globals": ({"pickle.global", "pickle.weights_only"}, {"pickle.protocol"}),
    "hundreds_of_globals": ({"pickle.global"}, set()),
    "outside_folder": ({"zip.outside_folder"}, {"zip.unaligned"}),
    "unsafe_name": ({"zip.unsafe_name"}, {"zip.unaligned", "record.extra"}),
    "overlap": ({"zip.duplicate_name", "zip.overlap"}, {"zip.unaligned"}),
    "hidden_member": ({"zip.gap"}, {"zip.unaligned"}),
    "local_name": ({"zip.header_mismatch"}, {"zip.unaligned"}),
    "inflate_size": (
        {"zip.bad_deflate", "zip.compressed_data", "storage.size_mismatch"},
        {"zip.compressed"},
    ),
    "plain_pickle": ({"legacy.header", "pickle.global"}, set()),
    "empty": ({"file.empty"}, set()),
    "random": ({"file.unknown_format"}, set()),
    "tar": ({"format.tar", "pickle.global"}, set()),
}
