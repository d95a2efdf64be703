"""A corpus of hostile checkpoints: each case is bytes plus the PthError a reader must raise.

Every case names the SECURITY.md section it exercises.  Payloads that would run code try to
create a canary file: ``cases(canary)`` names it (by default ``CANARY``, from the environment
variable ``PTHFMT_CANARY``), so that a test can check afterwards that nothing ran.  Built with
the standard library only: no torch needed.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

from pthfmt.errors import (
    CorruptError,
    FormatError,
    LimitError,
    PthError,
    UnsafePickleError,
    UnsupportedError,
)

CANARY = os.environ.get("PTHFMT_CANARY", os.path.join(tempfile.gettempdir(), "pthfmt-canary"))


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    error: type[PthError]
    section: str


# -- pickle opcodes, by hand ----------------------------------------------------------------
def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def ustr(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def uint(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def pid(cls: str = "FloatStorage", key: str = "0", loc: str = "cpu", numel: int = 4) -> bytes:
    module = "torch.storage" if cls == "UntypedStorage" else "torch"
    return tup(ustr("storage"), glob(module, cls), ustr(key), ustr(loc), uint(numel)) + b"Q"


def tensor(
    storage: bytes | None = None, offset: int = 0, size: tuple = (4,), stride: tuple = (1,)
) -> bytes:
    storage = pid() if storage is None else storage
    return (
        glob("torch._utils", "_rebuild_tensor_v2")
        + tup(
            storage,
            uint(offset),
            tup(*map(uint, size)),
            tup(*map(uint, stride)),
            b"\x89",
            glob("collections", "OrderedDict") + b")R",
        )
        + b"R"
    )


def state(value: bytes, key: str = "w") -> bytes:
    return b"\x80\x02}" + ustr(key) + value + b"s."


def system_call(canary: str = CANARY) -> bytes:
    return glob("os", "system") + tup(ustr(f"touch {canary}")) + b"R"


# -- containers ----------------------------------------------------------------------------
def zip_file(
    records: dict[str, bytes], prefix: str = "archive", method: int = zipfile.ZIP_STORED
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in records.items():
            z.writestr(f"{prefix}/{name}" if prefix else name, data)
    return buf.getvalue()


def checkpoint(pkl: bytes, storages: dict[str, bytes] | None = None, **extra: bytes) -> bytes:
    records = {"data.pkl": pkl, "version": b"3\n", "byteorder": b"little"}
    for key, data in (storages if storages is not None else {"0": bytes(16)}).items():
        records[f"data/{key}"] = data
    records.update(extra)
    return zip_file(records)


def legacy(main: bytes, keys: list[str], blobs: list[bytes]) -> bytes:
    magic = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
    proto = b"\x80\x02M\xe9\x03."
    sysinfo = b"\x80\x02}" + ustr("little_endian") + b"\x88s."
    keylist = b"\x80\x02(" + b"".join(ustr(k) for k in keys) + b"l."
    body = b"".join(struct.pack("<q", len(b) // 4) + b for b in blobs)
    return magic + proto + sysinfo + main + keylist + body


def _zip_patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1, old
    return data.replace(old, new)


# -- the corpus ------------------------------------------------------------------------------
def cases(canary: str = CANARY) -> list[Case]:
    """The corpus; payloads that would run code target the file ``canary``."""
    out: list[Case] = []

    def add(name: str, data: bytes, error: type[PthError], section: str) -> None:
        out.append(Case(name, data, error, section))

    u = UnsafePickleError
    s = "allowlist"
    # Dangerous globals through every opcode that can name or call one.
    add("global-os-system", checkpoint(state(system_call(canary))), u, s)
    add(
        "stack-global",
        checkpoint(
            b"\x80\x04}"
            + ustr("w")
            + b"\x8c\x02os\x8c\x06system\x93"
            + tup(ustr(f"touch {canary}"))
            + b"Rs."
        ),
        u,
        s,
    )
    add(
        "inst",
        checkpoint(b"\x80\x02}" + ustr("w") + b"(" + ustr(f"touch {canary}") + b"ios\nsystem\ns."),
        u,
        s,
    )
    add(
        "obj",
        checkpoint(
            b"\x80\x02}"
            + ustr("w")
            + b"("
            + glob("os", "system")
            + ustr(f"touch {canary}")
            + b"os."
        ),
        u,
        s,
    )
    add(
        "newobj", checkpoint(state(glob("subprocess", "Popen") + tup(ustr("true")) + b"\x81")), u, s
    )
    add(
        "newobj-ex",
        checkpoint(b"\x80\x04}" + ustr("w") + glob("runpy", "run_path") + b")}\x92s."),
        u,
        s,
    )
    add(
        "reduce-eval",
        checkpoint(state(glob("builtins", "eval") + tup(ustr(f"open({canary!r},'w')")) + b"R")),
        u,
        s,
    )
    add(
        "reduce-exec",
        checkpoint(state(glob("__builtin__", "exec") + tup(ustr(f"open({canary!r},'w')")) + b"R")),
        u,
        s,
    )
    add(
        "getattr",
        checkpoint(
            state(
                glob("builtins", "getattr")
                + tup(glob("collections", "OrderedDict"), ustr("fromkeys"))
                + b"R"
            )
        ),
        u,
        s,
    )
    add(
        "importlib",
        checkpoint(state(glob("importlib", "import_module") + tup(ustr("os")) + b"R")),
        u,
        s,
    )
    add(
        "functools-partial",
        checkpoint(state(glob("functools", "partial") + tup(glob("os", "system")) + b"R")),
        u,
        s,
    )
    add(
        "operator-attrgetter",
        checkpoint(state(glob("operator", "attrgetter") + tup(ustr("system")) + b"R")),
        u,
        s,
    )
    add("numpy-load", checkpoint(state(glob("numpy", "load") + tup(ustr(canary)) + b"R")), u, s)
    add(
        "torch-load-nested",
        checkpoint(state(glob("torch", "load") + tup(ustr(canary)) + b"R")),
        u,
        s,
    )
    add("ext-code", checkpoint(state(b"\x82\x01")), u, s)
    add(
        "build-setstate-on-ordereddict",
        checkpoint(
            state(
                glob("collections", "OrderedDict")
                + b")R"
                + b"("
                + glob("os", "system")
                + b"o"
                + b"b"
            )
        ),
        u,
        s,
    )
    add(
        "build-on-list",
        checkpoint(state(b"]}" + ustr("append") + system_call(canary) + b"sb")),
        u,
        s,
    )
    add("legacy-os-system", legacy(state(system_call(canary)), [], []), u, s)
    add(
        "rebuild-from-type-evil-class",
        checkpoint(
            state(
                glob("torch._tensor", "_rebuild_from_type_v2")
                + tup(glob("torch._utils", "_rebuild_tensor_v2"), glob("os", "system"), b")", b"N")
                + b"R"
            )
        ),
        u,
        s,
    )

    # Allowed globals with hostile arguments.
    s = "handlers"
    add(
        "codecs-rot13",
        checkpoint(state(glob("_codecs", "encode") + tup(ustr("x"), ustr("rot13")) + b"R")),
        u,
        s,
    )
    add(
        "numpy-object-dtype",
        checkpoint(state(glob("numpy", "dtype") + tup(ustr("O8"), b"\x89", b"\x88") + b"R")),
        u,
        s,
    )
    add(
        "size-of-strings",
        checkpoint(state(glob("torch", "Size") + tup(tup(ustr("x"))) + b"R")),
        FormatError,
        s,
    )
    add("rebuild-non-storage", checkpoint(state(tensor(storage=ustr("0")))), FormatError, s)
    add(
        "device-not-string",
        checkpoint(state(glob("torch", "device") + tup(uint(3)) + b"R")),
        FormatError,
        s,
    )
    add("reduce-non-callable", checkpoint(state(glob("torch", "float32") + b")R")), u, s)

    # Persistent ids.
    s = "persistent-ids"
    add("pid-not-tuple", checkpoint(state(ustr("0") + b"Q")), FormatError, s)
    add(
        "pid-module",
        checkpoint(state(tup(ustr("module"), glob("os", "system"), ustr("x"), ustr("y")) + b"Q")),
        u,
        s,
    )
    add("pid-short", checkpoint(state(tup(ustr("storage"), ustr("x")) + b"Q")), FormatError, s)
    add("pid-bad-numel", checkpoint(state(tensor(storage=pid(numel=-4)))), FormatError, s)
    add(
        "pid-key-not-str",
        checkpoint(
            state(
                tensor(
                    storage=tup(
                        ustr("storage"),
                        glob("torch", "FloatStorage"),
                        uint(0),
                        ustr("cpu"),
                        uint(4),
                    )
                    + b"Q"
                )
            )
        ),
        FormatError,
        s,
    )
    add(
        "pid-class-not-storage",
        checkpoint(state(tensor(storage=pid(cls="float32")))),
        FormatError,
        s,
    )
    add(
        "pid-two-types-one-key",
        checkpoint(b"\x80\x02(" + tensor() + tensor(storage=pid(cls="IntStorage")) + b"l."),
        FormatError,
        s,
    )
    add("pid-bad-location", checkpoint(state(tensor(storage=pid(loc="cuda:x")))), FormatError, s)

    # The pickle stream itself.
    s = "pickle-stream"
    add("memo-missing", checkpoint(b"\x80\x02h\x05."), CorruptError, s)
    add(
        "memo-amplification",
        checkpoint(
            b"\x80\x02"
            + glob("builtins", "bytearray")
            + b"q\x00"
            + b"C\xff"
            + b"a" * 255
            + b"q\x01"
            + b"("
            + b"h\x00(h\x01tR" * 400_000
            + b"l."
        ),
        LimitError,
        s,
    )
    add(
        "binbytes8-huge",
        checkpoint(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x."),
        CorruptError,
        s,
    )
    add(
        "binunicode8-huge",
        checkpoint(b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"x."),
        CorruptError,
        s,
    )
    add("binunicode-lies", checkpoint(b"\x80\x02X\xff\xff\xff\x7fab."), CorruptError, s)
    add(
        "frame-huge",
        checkpoint(b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"N."),
        CorruptError,
        s,
    )
    add("long4-huge", checkpoint(b"\x80\x02\x8b\xff\xff\xff\x7f."), CorruptError, s)
    add("protocol-6", checkpoint(b"\x80\x06N."), UnsupportedError, s)
    add("truncated-pickle", checkpoint(state(tensor())[:-20]), CorruptError, s)
    add("no-stop", checkpoint(b"\x80\x02N"), CorruptError, s)
    add("stack-underflow", checkpoint(b"\x80\x02R."), CorruptError, s)
    add("unknown-opcode", checkpoint(b"\x80\x02\xfe."), CorruptError, s)
    add("setitem-on-list", checkpoint(b"\x80\x02]K\x01K\x02s."), FormatError, s)
    add(
        "hash-flood",
        checkpoint(
            b"\x80\x02}("
            + b"".join(uint((2**61 - 1) * (i + 1)) + b"N" for i in range(2000))
            + b"u."
        ),
        LimitError,
        s,
    )
    deep = b"K\x01" + b"\x85" * 1_000_000  # ((((1,),),)...) a million deep
    add("deep-tuple-dict-key", checkpoint(b"\x80\x02}" + deep + b"Ns."), LimitError, s)
    add("deep-tuple-set-item", checkpoint(b"\x80\x04\x8f(" + deep + b"\x90."), LimitError, s)
    add("deep-tuple-frozenset", checkpoint(b"\x80\x04(" + deep + b"\x91."), LimitError, s)
    add(
        "deep-tuple-ordereddict",
        checkpoint(b"\x80\x02" + glob("collections", "OrderedDict") + b"](" + deep + b"Nta\x85R."),
        LimitError,
        s,
    )
    shared = b"K\x01\x85" + b"q\x000h\x00h\x00\x86" * 80  # t[k] = (t[k-1], t[k-1]): 2**80
    add("shared-tuple-dict-key", checkpoint(b"\x80\x02}" + shared + b"Ns."), LimitError, s)
    big = b"K\x01\x85" + b"q\x000h\x00h\x00\x86" * 15 + b"q\x010"  # memo 1: 2**16 items
    add(
        "many-big-keys",
        checkpoint(
            b"\x80\x02"
            + big
            + b"}("
            + b"".join(b"h\x01" + uint(i) + b"\x86N" for i in range(5000))
            + b"u."
        ),
        LimitError,
        s,
    )
    huge = b"\x8b" + struct.pack("<I", 200_001) + b"\x01" * 200_000 + b"\x00"  # LONG4
    sizes = b"(" + b"h\x01" * 30 + b"t"  # the same 1.6-Mbit int, 30 times
    add(
        "huge-int-sizes",
        checkpoint(
            b"\x80\x02"
            + huge
            + b"q\x010}"
            + ustr("w")
            + glob("torch._utils", "_rebuild_tensor_v2")
            + tup(
                pid(),
                uint(0),
                sizes,
                tup(*[uint(1)] * 30),
                b"\x89",
                glob("collections", "OrderedDict") + b")R",
            )
            + b"Rs."
        ),
        FormatError,
        s,
    )
    add(
        "huge-int-key-repeated",
        checkpoint(b"\x80\x02" + huge + b"q\x010(" + (b"}h\x01Ns" * 20_000) + b"l."),
        LimitError,
        s,
    )  # one 1.6-Mbit int, 20,000 keys
    add(
        "tuple-hash-flood",
        checkpoint(
            b"\x80\x02}("
            + b"".join(uint((2**61 - 1) * (i + 1)) + b"\x85N" for i in range(2000))
            + b"u."
        ),
        LimitError,
        s,
    )
    add(
        "deep-nesting-then-evil",
        checkpoint(b"\x80\x02" + b"](" * 1_000_000 + system_call(canary) + b"e" * 1_000_000 + b"."),
        u,
        s,
    )
    add("deep-nesting-unclosed", checkpoint(b"\x80\x02" + b"(" * 1_000_000 + b"."), CorruptError, s)

    # Storages, views and records.
    s = "storages"
    add("record-missing", checkpoint(state(tensor()), storages={}), FormatError, s)
    add("record-size-lies", checkpoint(state(tensor()), storages={"0": bytes(12)}), CorruptError, s)
    add("view-outside", checkpoint(state(tensor(offset=2, size=(4,)))), CorruptError, s)
    add("stride-outside", checkpoint(state(tensor(size=(2, 2), stride=(3, 1)))), CorruptError, s)
    add(
        "size-overflow",
        checkpoint(state(tensor(size=(2**40, 2**40), stride=(0, 0)))),
        UnsupportedError,
        s,
    )
    add(
        "negative-offset",
        checkpoint(
            state(
                glob("torch._utils", "_rebuild_tensor_v2")
                + tup(
                    pid(),
                    b"J\xff\xff\xff\xff",
                    tup(uint(1)),
                    tup(uint(1)),
                    b"\x89",
                    glob("collections", "OrderedDict") + b")R",
                )
                + b"R"
            )
        ),
        FormatError,
        s,
    )
    add(
        "too-many-dims",
        checkpoint(state(tensor(size=(1,) * 65, stride=(1,) * 65))),
        UnsupportedError,
        s,
    )
    add("size-stride-mismatch", checkpoint(state(tensor(size=(2, 2), stride=(1,)))), FormatError, s)
    add(
        "legacy-count-lies",
        legacy(
            state(
                tensor(
                    storage=tup(
                        ustr("storage"),
                        glob("torch", "FloatStorage"),
                        ustr("k"),
                        ustr("cpu"),
                        uint(4),
                        b"N",
                    )
                    + b"Q"
                )
            ),
            ["k"],
            [bytes(8)],
        ),
        CorruptError,
        s,
    )
    add(
        "legacy-storage-past-end",
        legacy(
            state(
                tensor(
                    storage=tup(
                        ustr("storage"),
                        glob("torch", "FloatStorage"),
                        ustr("k"),
                        ustr("cpu"),
                        uint(2**40),
                        b"N",
                    )
                    + b"Q",
                    size=(1,),
                )
            ),
            ["k"],
            [],
        ),
        CorruptError,
        s,
    )

    # Zip containers.
    s = "zip"
    good = checkpoint(state(tensor()))
    add("no-eocd", good[:-22], CorruptError, s)
    add("truncated-zip", good[: len(good) // 2], CorruptError, s)
    add(
        "no-folder", zip_file({"data.pkl": state(b"N"), "version": b"3"}, prefix=""), FormatError, s
    )
    add(
        "mixed-folders",
        zip_file(
            {
                "archive/data.pkl": state(b"N"),
                "archive/version": b"3",
                "other/data.pkl": state(system_call(canary)),
            },
            prefix="",
        ),
        FormatError,
        s,
    )
    add("missing-version", zip_file({"data.pkl": state(b"N")}), FormatError, s)
    add("version-11", checkpoint(state(b"N"), version=b"11"), FormatError, s)
    add("bad-byteorder", checkpoint(state(b"N"), byteorder=b"middle"), FormatError, s)
    add(
        "duplicate-record",
        _zip_patch(
            checkpoint(state(tensor()), storages={"0": bytes(16), "1": bytes(16)}),
            b"archive/data/1",
            b"archive/data/0",
        ),
        FormatError,
        s,
    )
    add(
        "case-duplicate",
        zip_file(
            {"data.pkl": state(b"N"), "DATA.PKL": state(system_call(canary)), "version": b"3"}
        ),
        FormatError,
        s,
    )
    cd = good.rfind(b"PK\x01\x02")
    add(
        "lho-past-end",
        good[: cd + 42] + struct.pack("<I", 2**31) + good[cd + 46 :],
        CorruptError,
        s,
    )
    add("encrypted", _flag(good, 0x1), UnsupportedError, s)
    add("bzip2", _method(good, 12), UnsupportedError, s)
    add("deflate-ratio-lies", _deflate_bomb_header(), CorruptError, s)
    add("deflate-bomb-pickle", _deflate_pickle_bomb(), LimitError, s)
    add("deflate-garbage", _deflate_garbage(), CorruptError, s)
    add("deflate-many-small-records", many_deflated(40), LimitError, s)
    add("aliased-records", aliased_records(64), CorruptError, s)
    add("prepended-bytes", b"MZ" + good, FormatError, s)
    add("empty-file", b"", FormatError, s)
    add("safetensors-entry-not-an-object", struct.pack("<Q", 8) + b'{"a":1} ', FormatError, s)
    add(
        "safetensors-9000-digit-number",
        struct.pack("<Q", 9032) + b'{"__metadata__":{"x":' + b"9" * 9000 + b"}}" + b" " * 9,
        FormatError,
        s,
    )
    add(
        "safetensors-zero-and-2**61-dims",
        struct.pack("<Q", 80)
        + b'{"w":{"dtype":"F32","shape":[0,2305843009213693952],"data_offsets":[0,0]}}      ',
        FormatError,
        s,
    )
    add("polyglot-legacy-pickle-plus-zip", legacy(state(system_call(canary)), [], []) + good, u, s)
    return out


def _central_entries(data: bytes) -> list[int]:
    pos, out = 0, []
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        out.append(pos)
        pos += 4
    return out


def _flag(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    for pos in _central_entries(data):
        flags = struct.unpack_from("<H", out, pos + 8)[0] | bit
        struct.pack_into("<H", out, pos + 8, flags)
    return bytes(out)


def _method(data: bytes, method: int) -> bytes:
    out = bytearray(data)
    for pos in _central_entries(data):
        struct.pack_into("<H", out, pos + 10, method)
    return bytes(out)


def _deflate_bomb_header() -> bytes:
    data = (
        checkpoint(state(b"N"), method=zipfile.ZIP_DEFLATED)
        if False
        else zip_file({"data.pkl": state(b"N"), "version": b"3\n"}, method=zipfile.ZIP_DEFLATED)
    )
    out = bytearray(data)
    pos = _central_entries(data)[0]
    struct.pack_into("<I", out, pos + 24, 0xFFFFFFF0)  # uncompressed size lies
    return bytes(out)


def _deflate_pickle_bomb() -> bytes:
    """A data.pkl that really inflates to 64 MiB from well under 1 MiB."""
    size = 64 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = b"\x80\x02" + b"N0" * (size // 2 - 2) + b"N."
    raw = comp.compress(body) + comp.flush()
    crc = zlib.crc32(body)
    name = b"archive/data.pkl"
    local = (
        struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(raw), len(body), len(name), 0
        )
        + name
    )
    version = b"3\n"
    vname = b"archive/version"
    vlocal_at = len(local) + len(raw)
    vlocal = (
        struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(version), 2, 2, len(vname), 0
        )
        + vname
        + version
    )
    cd_at = vlocal_at + len(vlocal)
    cd = (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            0,
            8,
            0,
            0,
            crc,
            len(raw),
            len(body),
            len(name),
            0,
            0,
            0,
            0,
            0,
            0,
        )
        + name
    )
    cd += (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            0,
            0,
            0,
            0,
            zlib.crc32(version),
            2,
            2,
            len(vname),
            0,
            0,
            0,
            0,
            0,
            vlocal_at,
        )
        + vname
    )
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(cd), cd_at, 0)
    return local + raw + vlocal + cd + eocd


def _deflate_garbage() -> bytes:
    data = zip_file({"data.pkl": state(b"N") * 50, "version": b"3\n"}, method=zipfile.ZIP_DEFLATED)
    pos = data.find(b"archive/data.pkl") + len("archive/data.pkl")
    out = bytearray(data)
    for i in range(pos + 2, pos + 12):
        out[i] ^= 0xFF
    return bytes(out)


def byte_tensors(keys: list[str], numel: int) -> bytes:
    items = b"".join(
        ustr(f"t{k}") + tensor(pid("ByteStorage", k, numel=numel), size=(numel,)) for k in keys
    )
    return b"\x80\x02}(" + items + b"u."


def many_deflated(n: int, numel: int = 1 << 20) -> bytes:
    """``n`` storages of zeros, each deflated about 1000:1: each record within its own bound
    (ratio + 1 MiB), the archive not (256:1 of the file + 1 MiB, all records together)."""
    keys = [str(i) for i in range(n)]
    records = {"data.pkl": byte_tensors(keys, numel), "version": b"3\n", "byteorder": b"little"}
    records.update({f"data/{k}": bytes(numel) for k in keys})
    return zip_file(records, method=zipfile.ZIP_DEFLATED)


def aliased_records(n: int, numel: int = 1 << 20) -> bytes:
    """One stored record, and ``n - 1`` more directory entries pointing at its bytes (each
    would be read, and copied, once per entry)."""
    keys = [f"{i:02d}" for i in range(n)]
    records = {"data.pkl": byte_tensors(keys, numel), "version": b"3\n", "byteorder": b"little"}
    good = zip_file({**records, "data/00": bytes(numel)})
    cd, end = good.index(b"PK\x01\x02"), good.index(b"PK\x05\x06")
    last = good.rindex(b"PK\x01\x02", cd, end)  # data/00's entry, written last
    entry = good[last:end]
    name = b"archive/data/00"
    assert entry[46 : 46 + len(name)] == name
    more = b"".join(
        entry[:46] + f"archive/data/{k}".encode() + entry[46 + len(name) :] for k in keys[1:]
    )
    directory = good[cd:end] + more
    total = struct.unpack_from("<H", good, end + 10)[0] + n - 1
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, total, total, len(directory), cd, 0)
    return good[:cd] + directory + eocd
