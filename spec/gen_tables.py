#!/usr/bin/env python3
"""Render the generated parts of ``spec/pth-format.md`` from pthfmt's own tables.

The spec's dtype table, opcode lists, allowlist and worked examples are not written by hand:
they live between marker comments ::

    <!-- BEGIN dtype-table -->
    ...generated...
    <!-- END dtype-table -->

and this script regenerates every such region from

* ``pthfmt.model.dtypes.DTYPES`` (the dtype table the reader and writer use),
* ``pthfmt.pickle.opcodes.OPCODES`` (the opcode table the unpickler dispatches on) and the
  spec's classification of each opcode (:data:`OPCODE_CLASSES` below, which must name every
  opcode of that table),
* ``pthfmt.torch.handlers.ALLOWLIST`` (every global a file may name, and its handler),
* the conformance vectors ``spec/vectors/zip_minimal.pt`` and ``legacy_minimal.pt`` (real
  ``torch.save`` output) for the hexdumps and ``pickletools`` disassemblies.

Usage::

    python spec/gen_tables.py           # rewrite spec/pth-format.md in place
    python spec/gen_tables.py --check   # exit 1 if it is stale (tests/test_spec_vectors.py)

No torch needed.
"""

from __future__ import annotations

import argparse
import inspect
import io
import pickletools
import re
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parent
SPEC = SPEC_DIR / "pth-format.md"
VECTORS = SPEC_DIR / "vectors"
sys.path.insert(0, str(SPEC_DIR.parent))

from pthfmt.model.dtypes import DTYPES, UNSAVABLE, DType  # noqa: E402
from pthfmt.model.storage import StorageType  # noqa: E402
from pthfmt.pickle.opcodes import OPCODES  # noqa: E402
from pthfmt.torch import allowlist as _allowlist  # noqa: E402
from pthfmt.torch.handlers import TorchHandlers  # noqa: E402

_REGION = re.compile(r"(<!-- BEGIN ([a-z0-9-]+) -->\n)(.*?)(<!-- END \2 -->)", re.S)

# -- opcodes ------------------------------------------------------------------------------------

#: The spec's classification of every pickle opcode (see "Opcodes" in the spec):
#:
#: * ``emit``: the protocol-2 opcodes a conforming writer emits (and only these); exactly what
#:   torch.save writes for checkpoint content (``NEWOBJ``: the ``_DimRange`` records in the
#:   dynamo marks of a jagged nested tensor's cached seqlens), and all of them are read by
#:   torch's ``weights_only`` unpickler.  A reader MUST accept them.
#: * ``accept``: opcodes a reader MUST also accept, because torch writes them into real
#:   checkpoints: Python 2 strings, other ``pickle_protocol`` values (3-5).
#: * ``may``: protocol 0/1 text and stack opcodes no torch.save output needs; a reader MAY
#:   accept them (with the same allowlist rules), a writer MUST NOT emit them.
#: * ``refuse``: a reader MUST refuse them: they reach outside the file (the copyreg
#:   extension registry, out-of-band buffers).
OPCODE_CLASSES: dict[str, str] = {
    **dict.fromkeys(
        (
            "PROTO STOP GLOBAL REDUCE BUILD MARK BINPERSID EMPTY_DICT SETITEM SETITEMS "
            "EMPTY_LIST APPEND APPENDS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWTRUE "
            "NEWFALSE BININT BININT1 BININT2 LONG1 BINFLOAT BINUNICODE BINPUT LONG_BINPUT "
            "BINGET LONG_BINGET NEWOBJ"
        ).split(),
        "emit",
    ),
    **dict.fromkeys(
        "EMPTY_SET SHORT_BINSTRING BINSTRING FRAME SHORT_BINUNICODE BINUNICODE8 "
        "STACK_GLOBAL MEMOIZE SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8 LONG4 ADDITEMS "
        "FROZENSET NEWOBJ_EX".split(),
        "accept",
    ),
    **dict.fromkeys(
        "INT LONG STRING UNICODE FLOAT LIST DICT POP DUP POP_MARK GET PUT INST OBJ PERSID".split(),
        "may",
    ),
    **dict.fromkeys("EXT1 EXT2 EXT4 NEXT_BUFFER READONLY_BUFFER".split(), "refuse"),
}

_CLASS_TITLES = {
    "emit": "opcodes-emit",
    "accept": "opcodes-accept",
    "may": "opcodes-may",
    "refuse": "opcodes-refuse",
}


def opcode_classes() -> dict[str, str]:
    """``OPCODE_CLASSES``, checked to cover exactly pthfmt's opcode table."""
    names = {op.name for op in OPCODES}
    missing = names - OPCODE_CLASSES.keys()
    extra = OPCODE_CLASSES.keys() - names
    if missing or extra:
        raise SystemExit(
            f"gen_tables.OPCODE_CLASSES is out of step with pthfmt's opcode table:"
            f" unclassified {sorted(missing)}, unknown {sorted(extra)}"
        )
    return dict(OPCODE_CLASSES)


def _byte(code: int) -> str:
    char = chr(code)
    shown = f"`{char}`" if char.isprintable() and char not in "`|" and code < 0x7F else ""
    if char == "|":
        shown = "`\\|`"
    return f"`0x{code:02X}` {shown}".rstrip()


def opcode_table(cls: str) -> str:
    classes = opcode_classes()
    rows = ["| opcode | byte | inline argument | protocol | effect |", "|---|---|---|---|---|"]
    for op in OPCODES:
        if classes[op.name] != cls:
            continue
        arg = "none" if op.arg.name == "none" else f"{op.arg.name}: {op.arg.doc}"
        rows.append(f"| `{op.name}` | {_byte(op.code)} | {arg} | {op.proto} | {op.doc} |")
    return "\n".join(rows)


# -- dtypes -------------------------------------------------------------------------------------


def _numpy_name(info: object) -> str:
    dt = info.numpy  # type: ignore[attr-defined]
    meta = dt.metadata or {}
    module = (
        "numpy"
        if type(dt).__module__.startswith("numpy") and dt.type.__module__ == "numpy"
        else "ml_dtypes"
    )
    name = f"`{module}.{dt.type.__name__}`"
    if "torch" in meta:
        return f"{name}, raw (tagged `{meta['torch']}`)"
    return name


def dtype_table() -> str:
    rows = [
        "| torch dtype | aliases | pickle: storage GLOBAL | rebuild function | pid `numel` "
        "counts | element size | swap unit (big-endian) | numpy equivalent | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for info in DTYPES:
        aliases = ", ".join(f"`{a}`" for a in info.aliases) or ""
        if info.storage:
            storage = f"`torch {info.storage}`"
            counts = "elements"
        else:
            storage = "`torch.storage UntypedStorage` + `torch " + info.name + "`"
            counts = "bytes"
        swap = "none" if info.swap <= 1 else f"{info.swap} bytes"
        rows.append(
            f"| `torch.{info.name}` | {aliases} | {storage} | `{info.rebuild}` | "
            f"{counts} | {info.itemsize} | {swap} | {_numpy_name(info)} | "
            f"{info.note} |"
        )
    return "\n".join(rows)


def unsavable() -> str:
    names = sorted(UNSAVABLE, key=lambda n: (n.rstrip("0123456789"), len(n), n))
    return (
        "torch 2.13 knows these dtypes but cannot save tensors of them "
        "(`KeyError: 'dtype torch.uint4 is not recognized'`); a reader MUST accept their "
        "names as `torch.<name>` globals and MAY refuse tensors of them: "
        + ", ".join(f"`torch.{n}`" for n in names)
        + "."
    )


# -- the allowlist ------------------------------------------------------------------------------


def _handler(handler: str) -> Any:
    """A handler method, or a kinds handler (its first parameter is the handlers object)."""
    from pthfmt.torch.kinds import KIND_HANDLERS

    return KIND_HANDLERS.get(handler) or getattr(TorchHandlers, handler)


def _signature(handler: str) -> str:
    fn = _handler(handler)
    sig = inspect.signature(fn)
    params = []
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
        elif p.default is p.empty:
            params.append(p.name)
        else:
            params.append(f"{p.name}={p.default!r}")
    return f"({', '.join(params)})"


def _doc(handler: str) -> str:
    fn = _handler(handler)
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0] if doc else ""


def allowlist_tables() -> str:
    table = _allowlist.ALLOWLIST
    unsupported = _allowlist.UNSUPPORTED_REBUILDS
    calls: list[tuple[str, str]] = []
    unsup: list[str] = []
    storages: dict[str, list[str]] = {}
    dtypes: list[str] = []
    inert: list[str] = []
    for name, entry in table.items():
        if entry == "unsupported_rebuild":
            unsup.append(name)
        elif isinstance(entry, str):
            calls.append((name, entry))
        elif isinstance(entry, StorageType):
            key = entry.dtype.name if entry.dtype else "(untyped: `numel` counts bytes)"
            storages.setdefault(key, []).append(name)
        elif isinstance(entry, DType):
            dtypes.append(name)
        else:
            inert.append(name)
    out = [
        f"{len(table)} names in all.",
        "",
        "**Callables** (the only globals `REDUCE`, `NEWOBJ`, `INST` and `OBJ` may call). "
        "The argument list is pthfmt's handler signature, which accepts exactly the "
        "argument tuples torch writes:",
        "",
        "| global | arguments | handler |",
        "|---|---|---|",
    ]
    for name, handler in sorted(calls):
        out.append(f"| `{name}` | `{_signature(handler)}` | `{handler}` |")
    out += [
        "",
        "**Recognised, not required** (a reader MAY decode them and MUST otherwise "
        "refuse them as unsupported, naming the feature):",
        "",
        "| global | content |",
        "|---|---|",
    ]
    for name in sorted(unsup):
        short = name.rsplit(".", 1)[1]
        out.append(f"| `{name}` | {unsupported.get(short, '')} |")
    out += [
        "",
        "**Storage classes** (values, used as the 2nd element of a persistent id):",
        "",
        "| dtype | globals |",
        "|---|---|",
    ]
    for key, names in storages.items():
        shown = key if key.startswith("(") else f"`torch.{key}`"
        out.append(f"| {shown} | {', '.join(f'`{n}`' for n in sorted(names))} |")
    out += [
        "",
        "**dtype objects** (values; the 7th argument of `_rebuild_tensor_v3`, or "
        "plain values): " + ", ".join(f"`{n}`" for n in sorted(dtypes)) + ".",
        "",
        "**Inert names** (values a file may name but never call: legacy tensor classes, "
        "quantization schemes, numpy's array class): "
        + ", ".join(f"`{n}`" for n in sorted(inert))
        + ".",
    ]
    return "\n".join(out)


def module_aliases() -> str:
    rows = ["| module written in the file | read as |", "|---|---|"]
    for old, new in _allowlist.MODULE_ALIASES.items():
        rows.append(f"| `{old}` | `{new}` |")
    return "\n".join(rows)


# -- worked examples from the vectors -----------------------------------------------------------


def hexdump(data: bytes, start: int = 0, width: int = 16) -> str:
    lines = []
    for i in range(0, len(data), width):
        chunk = data[i : i + width]
        hexes = " ".join(f"{b:02x}" for b in chunk).ljust(width * 3 - 1)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start + i:08x}  {hexes}  |{text}|")
    return "\n".join(lines)


def _zip_layout(data: bytes) -> list[dict[str, object]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    rows = []
    for info in zf.infolist():
        lho = info.header_offset
        nlen, xlen = struct.unpack_from("<HH", data, lho + 26)
        extra = data[lho + 30 + nlen : lho + 30 + nlen + xlen]
        fields, i = [], 0
        while i + 4 <= len(extra):
            tag, n = struct.unpack_from("<2sH", extra, i)
            fields.append(f"{tag.decode('latin-1')}:{n}")
            i += 4 + n
        start = lho + 30 + nlen + xlen
        rows.append(
            {
                "name": info.filename,
                "lho": lho,
                "data": start,
                "size": info.file_size,
                "method": info.compress_type,
                "crc": info.CRC,
                "flags": info.flag_bits,
                "extra": " ".join(fields),
                "nlen": nlen,
                "xlen": xlen,
            }
        )
    return rows


def example_zip_records() -> str:
    data = (VECTORS / "zip_minimal.pt").read_bytes()
    rows = [
        "| record | local header at | data at | data % 64 | size | method | flags | "
        "CRC-32 | local extra fields | content |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _zip_layout(data):
        raw = data[int(r["data"]) : int(r["data"]) + int(r["size"])]  # type: ignore[call-overload]
        content = repr(raw) if not r["name"].endswith(("data.pkl", "/0")) else f"{r['size']} bytes"  # type: ignore[union-attr]
        rows.append(
            f"| `{r['name']}` | {r['lho']} | {r['data']} | {int(r['data']) % 64} | "
            f"{r['size']} | {r['method']} | `0x{int(r['flags']):04x}` | "
            f"`{int(r['crc']):08x}` | `{r['extra']}` | `{content}` |"
        )
    return f"`zip_minimal.pt` ({len(data)} bytes):\n\n" + "\n".join(rows)


def example_zip_bytes() -> str:
    data = (VECTORS / "zip_minimal.pt").read_bytes()
    rows = {r["name"]: r for r in _zip_layout(data)}
    rec = rows["zip_minimal/data/0"]
    lho, start, size = int(rec["lho"]), int(rec["data"]), int(rec["size"])  # type: ignore
    end = start + size + 16
    z64 = data.rindex(b"PK\x06\x06")
    return "\n".join(
        [
            "```",
            "# local header of zip_minimal/data/0, its data and its data descriptor: "
            f"bytes {lho} to {end - 1} (0x{lho:x} to 0x{end - 1:x})",
            hexdump(data[lho:end], lho),
            "",
            f"# zip64 end of central directory, zip64 locator, end of central directory: from byte "
            f"{z64} (0x{z64:x})",
            hexdump(data[z64:], z64),
            "```",
        ]
    )


def example_data_pkl() -> str:
    data = (VECTORS / "zip_minimal.pt").read_bytes()
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("zip_minimal/data.pkl")
    out = io.StringIO()
    pickletools.dis(pkl, out)
    return "```\n" + out.getvalue().rstrip() + "\n```"


def example_legacy() -> str:
    data = (VECTORS / "legacy_minimal.pt").read_bytes()
    parts, pos = [], 0
    names = ["magic number", "protocol version", "sys_info", "object", "storage keys"]
    for name in names:
        ops = list(pickletools.genops(data[pos:]))
        end = pos + ops[-1][2] + 1
        parts.append((name, pos, end))
        pos = end
    lines = ["```"]
    for name, a, b in parts:
        lines.append(f"# {name} pickle: bytes {a} to {b - 1}")
        lines.append(
            hexdump(data[a:b], a) if name != "object" else hexdump(data[a : a + 32], a) + "\n  ..."
        )
    lines.append(
        f"# storage '0': int64 little-endian element count, then the elements: from byte {pos}"
    )
    lines.append(hexdump(data[pos:], pos))
    lines.append("```")
    out = io.StringIO()
    name, a, b = parts[3]
    pickletools.dis(data[a:b], out)
    lines += ["", "The object pickle:", "", "```", out.getvalue().rstrip(), "```"]
    return "\n".join(lines)


def example_metadata() -> str:
    data = (VECTORS / "zip_state_dict.pt").read_bytes()
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("zip_state_dict/data.pkl")
    out = io.StringIO()
    pickletools.dis(pkl, out)
    lines = out.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"^\s*\d+: \}    EMPTY_DICT", line))
    shown = [*lines[:6], "  ...  (the 7 tensors, SETITEMS)", *lines[first - 1 :]]
    return "```\n" + "\n".join(shown) + "\n```"


def vector_list() -> str:
    import json

    rows = ["| vector | expected | origin | container | what it holds |", "|---|---|---|---|---|"]
    docs = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(VECTORS.glob("*.json"))
        if p.name != "MANIFEST.json"
    ]
    docs.sort(key=lambda d: (not d["valid"], d["format"] == "unknown", d["name"]))
    for d in docs:
        if d["valid"]:
            expected = "decodes"
            if d.get("requires"):
                expected += f" (optional: {d['requires']})"
            if not d.get("torch", {}).get("agrees", True):
                expected += " (torch 2.13 misreads it)"
        else:
            expected = f"`{d['error']}`"
        description = d["description"].replace("|", "\\|")
        rows.append(
            f"| `{d['file']}` | {expected} | {d['origin']} | {d['format']} | {description} |"
        )
    return "\n".join(rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "dtype-table": dtype_table,
    "dtype-unsavable": unsavable,
    **{title: (lambda c=cls: opcode_table(c)) for cls, title in _CLASS_TITLES.items()},
    "allowlist": allowlist_tables,
    "module-aliases": module_aliases,
    "example-zip-records": example_zip_records,
    "example-zip-bytes": example_zip_bytes,
    "example-data-pkl": example_data_pkl,
    "example-legacy": example_legacy,
    "example-metadata": example_metadata,
    "vector-list": vector_list,
}


def regions(text: str) -> list[str]:
    return [m.group(2) for m in _REGION.finditer(text)]


def region(text: str, name: str) -> str | None:
    for m in _REGION.finditer(text):
        if m.group(2) == name:
            return m.group(3)
    return None


def render(text: str) -> str:
    """``text`` with every generated region rewritten; unknown region names are an error."""
    unknown = set(regions(text)) - GENERATORS.keys()
    if unknown:
        raise SystemExit(f"unknown generated regions in the spec: {sorted(unknown)}")

    def fill(m: re.Match[str]) -> str:
        body = GENERATORS[m.group(2)]().rstrip("\n") + "\n"
        return f"{m.group(1)}{body}{m.group(4)}"

    return _REGION.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render spec/pth-format.md's tables.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the spec is stale")
    args = parser.parse_args(argv)
    text = SPEC.read_text(encoding="utf-8")
    fresh = render(text)
    if args.check:
        if fresh != text:
            print("spec/pth-format.md is stale: run python spec/gen_tables.py")
            return 1
        print("spec/pth-format.md is up to date")
        return 0
    missing = GENERATORS.keys() - set(regions(text))
    if missing:
        print(f"warning: the spec has no region for {sorted(missing)}")
    if fresh != text:
        SPEC.write_text(fresh, encoding="utf-8")
        print("spec/pth-format.md updated")
    else:
        print("spec/pth-format.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
