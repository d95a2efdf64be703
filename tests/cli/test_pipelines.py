"""``pthfmt validate``, ``inspect`` and ``convert`` as CI jobs use them, in subprocesses:
folders and ``--files-from``, severities and ``--fail-on``, one JSON schema for every file
(unreadable ones and FIFOs too), ``-j``; code-execution gadgets named by ``inspect`` and
refused by ``convert`` (``--salvage``); stub fields; ``--filter``; the same-file refusal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.host import child_env

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

ENTRY_KEYS = {"path", "status", "ok", "format", "strict", "counts", "problems", "load_error"}
PROBLEM_KEYS = {"code", "severity", "message", "record", "offset", "key_path"}
SUMMARY_KEYS = {"files", "ok", "errors", "warnings", "unreadable"}


def run(
    *args: object, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
        env=child_env(),
        cwd=ROOT,
        input=stdin,
    )


def run_json(*args: object, stdin: str | None = None) -> tuple[int, dict]:
    out = run(*args, "--json", stdin=stdin)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def assert_schema(doc: dict) -> None:
    """Every entry has the same keys, whatever happened to its file."""
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert doc["summary"]["files"] == len(doc["files"])
    for entry in doc["files"]:
        assert set(entry) == ENTRY_KEYS, entry
        assert set(entry["counts"]) == {"error", "warning", "info"}
        for p in entry["problems"]:
            assert set(p) == PROBLEM_KEYS
        assert entry["counts"]["error"] == sum(p["severity"] == "error" for p in entry["problems"])
    s = doc["summary"]
    assert s["ok"] + s["errors"] + s["warnings"] + s["unreadable"] == s["files"]


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pthfmt-canary-14\x1b[31m",))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder as CI meets it: sound, truncated, bit-flipped, a payload, a TorchScript
    archive, a file without CRCs, files to skip, nested folders."""
    d = tmp_path_factory.mktemp("ckpts")
    (d / "sub" / "deeper").mkdir(parents=True)
    f = {
        "good": d / "a-good.pt",
        "legacy": d / "b-legacy.pth",
        "truncated": d / "sub" / "c-truncated.bin",
        "bitflip": d / "sub" / "deeper" / "d-bitflip.ckpt",
        "evil": d / "e-evil.pt",
        "script": d / "f-script.pt",
        "nocrc": d / "g-nocrc.tar",
    }
    torch.manual_seed(0)
    sd = {"w": torch.randn(8, 8), "b": torch.randn(8)}
    torch.save(sd, f["good"])
    torch.save(sd, f["legacy"], _use_new_zipfile_serialization=False)
    raw = f["good"].read_bytes()
    f["truncated"].write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[raw.index(b"data/0") + 100] ^= 0xFF
    f["bitflip"].write_bytes(bytes(flipped))
    torch.save({"w": torch.ones(2), "hook": Payload()}, f["evil"])
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), f["script"])
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(sd, f["nocrc"])
    finally:
        torch.serialization.set_crc32_options(True)
    (d / "notes.txt").write_text("not a checkpoint")
    (d / "sub" / "config.json").write_text("{}")
    return f


# -- validate: folders, lists, severities --------------------------------------------------


def test_validate_folder_recurses_by_extension(tree):
    folder = tree["good"].parent
    status, doc = run_json("validate", folder)
    assert status == 1
    assert_schema(doc)
    assert [Path(e["path"]) for e in doc["files"]] == [
        tree[n] for n in ("good", "legacy", "evil", "script", "nocrc", "truncated", "bitflip")
    ]
    statuses = {Path(e["path"]): e["status"] for e in doc["files"]}
    assert statuses == {
        tree["good"]: "ok",
        tree["legacy"]: "info",
        tree["evil"]: "error",
        tree["script"]: "info",
        tree["nocrc"]: "warning",
        tree["truncated"]: "error",
        tree["bitflip"]: "error",
    }
    assert doc["summary"] == {"files": 7, "ok": 3, "errors": 3, "warnings": 1, "unreadable": 0}
    text = run("validate", folder)
    assert text.stdout.splitlines()[-1] == "7 files: 3 sound, 3 with errors, 1 with warnings"


def test_torchscript_is_an_info_note_and_exits_0(tree):
    out = run("validate", tree["script"])
    assert out.returncode == 0, out.stdout
    lines = out.stdout.splitlines()
    assert lines[0] == f"{tree['script']}: ok (torchscript, 1 note)"
    assert lines[1].split()[:2] == ["info", "format.torchscript"]


@pytest.mark.parametrize(
    ("fail_on", "files", "status"),
    [
        ("warning", ["nocrc"], 1),
        ("error", ["nocrc"], 0),
        ("error", ["nocrc", "bitflip"], 1),
        ("never", ["nocrc", "bitflip", "evil"], 0),
        ("never", ["script"], 0),
    ],
)
def test_fail_on(tree, fail_on, files, status):
    out = run("validate", "--fail-on", fail_on, *(tree[n] for n in files))
    assert out.returncode == status, out.stdout


def test_files_from_file_and_stdin(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tree['good']}\n\n{tree['bitflip']}\n", encoding="utf-8")
    status, doc = run_json("validate", "--files-from", listing)
    assert status == 1 and [Path(e["path"]) for e in doc["files"]] == [
        tree["good"],
        tree["bitflip"],
    ]
    status, doc = run_json(
        "validate", tree["legacy"], "--files-from", "-", stdin=f"{tree['good']}\n"
    )
    assert status == 0 and [Path(e["path"]) for e in doc["files"]] == [tree["legacy"], tree["good"]]
    out = run("validate", "--files-from", tmp_path / "none.txt")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        f"pthfmt: validate: --files-from {tmp_path / 'none.txt'}: No such file or directory"
    )


def test_unreadable_and_fifo_have_the_same_schema(tree, tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.pt"
    start = time.monotonic()
    for jobs in ("1", "2"):
        out = run("validate", "-j", jobs, "--json", tree["good"], fifo, missing, timeout=60)
        assert out.returncode == 2, out.stderr
        doc = json.loads(out.stdout)
        assert_schema(doc)
        good, pipe, gone = doc["files"]
        assert good["status"] == "ok"
        assert pipe["status"] == gone["status"] == "unreadable" and not pipe["ok"]
        assert [p["code"] for p in pipe["problems"]] == ["file.not_regular"]
        assert pipe["problems"][0]["message"] == "a FIFO: skipped, not opened"
        assert [p["code"] for p in gone["problems"]] == ["file.unreadable"]
        assert gone["problems"][0]["message"] == "No such file or directory"
        assert doc["summary"] == {"files": 3, "ok": 1, "errors": 0, "warnings": 0, "unreadable": 2}
        assert out.stderr.splitlines() == [
            f"pthfmt: {fifo}: a FIFO: skipped, not opened",
            f"pthfmt: {missing}: No such file or directory",
        ]
    assert time.monotonic() - start < 60  # the FIFO was never opened (that would block)


def test_parallel_matches_serial(tree):
    files = sorted(tree.values()) * 3
    _, serial = run_json("validate", *files)
    status, parallel = run_json("validate", "-j", "2", *files)
    assert status == 1 and parallel == serial
    _, every_cpu = run_json("validate", "-j", "0", *files)
    assert every_cpu == serial


def test_shard_index_naming_itself_or_nesting_deeply(tmp_path):
    (tmp_path / "self.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "self.bin.index.json"}})
    )
    (tmp_path / "deep.bin.index.json").write_text(
        '{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    for jobs in ("1", "2"):
        status, doc = run_json("validate", "-j", jobs, tmp_path)
        assert status == 1
        assert_schema(doc)
        deep, itself = doc["files"]
        assert [p["code"] for p in deep["problems"]] == ["index.inconsistent"]
        assert deep["problems"][0]["message"].endswith(": not a JSON index (nested too deeply)")
        assert {p["code"] for p in itself["problems"]} == {"index.inconsistent"}
        assert any(
            p["message"] == "shard 'self.bin.index.json' is a shard index, not a checkpoint"
            for p in itself["problems"]
        )


def test_validate_usage_errors():
    out = run("validate")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        "pthfmt: validate: give at least one PATH (or --files-from, or --codes)"
    )
    assert run("validate", "--fail-on", "sometimes", "x.pt").returncode == 2


def test_codes_table_has_the_new_codes():
    table = run("validate", "--codes").stdout
    assert "| `format.torchscript` | info |" in table
    assert "| `file.not_regular` | error |" in table and "| `file.unreadable` | error |" in table


# -- inspect on files of unknown origin ----------------------------------------------------


def test_inspect_names_gadgets_with_their_arguments(tree):
    out = run("inspect", tree["evil"])
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1:3] == [
        "SECURITY: the file calls 1 known code-execution gadget; "
        "torch.load(weights_only=False) would run it (pthfmt never does):",
        "  hook: posix.system('touch /tmp/pthfmt-canary-14\\x1b[31m')",
    ]
    assert (
        "hook = <code-execution gadget posix.system('touch /tmp/pthfmt-canary-14\\x1b[31m')>"
        in lines
    )
    assert "\x1b" not in out.stdout
    status, doc = run_json("inspect", tree["evil"])
    assert status == 1
    assert doc["gadgets"] == [
        {
            "key": "hook",
            "qualname": "posix.system",
            "args": "'touch /tmp/pthfmt-canary-14\\x1b[31m'",
        }
    ]
    assert [t["key"] for t in doc["tensors"]] == ["w"]


def test_inspect_ordinary_classes_exit_0(tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "model.pt")
    status, doc = run_json("inspect", tmp_path / "model.pt")
    assert status == 0 and doc["gadgets"] == []
    assert [t["key"] for t in doc["tensors"]] == ["weight", "bias"]


def test_inspect_shows_namespace_and_stub_fields(tmp_path):
    hp = argparse.Namespace(lr=0.1, layers=[64, 32], name="run-1")
    torch.save({"w": torch.ones(2), "hparams": hp}, tmp_path / "ns.pt")
    status, doc = run_json("inspect", tmp_path / "ns.pt")
    assert status == 0
    assert doc["values"] == {"hparams.lr": 0.1, "hparams.layers": [64, 32], "hparams.name": "run-1"}
    text = run("inspect", tmp_path / "ns.pt").stdout.splitlines()
    assert "hparams.lr     = 0.1" in text and "hparams.name   = 'run-1'" in text


def test_inspect_filter(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    status, doc = run_json("inspect", "--filter", "*.weight", tmp_path / "ck.pt")
    assert status == 0 and doc["filter"] == "*.weight"
    assert [t["key"] for t in doc["tensors"]] == ["model.0.weight", "model.2.weight"]
    assert doc["values"] == {} and doc["totals"]["tensors"] == 2
    _, doc = run_json("inspect", "--filter", "epoch", tmp_path / "ck.pt")
    assert doc["tensors"] == [] and doc["values"] == {"epoch": 3}
    out = run("inspect", "--filter", "model.0.*", tmp_path / "ck.pt")
    assert "filter: model.0.*" in out.stdout and "2 tensors, 9 elements" in out.stdout


def test_inspect_deep_nesting_then_evil_is_linear(tmp_path):
    from tests.support.adversarial import cases

    case = next(c for c in cases() if c.name == "deep-nesting-then-evil")
    path = tmp_path / "deep.pt"
    path.write_bytes(case.data)
    start = time.monotonic()
    status, doc = run_json("inspect", path)
    assert time.monotonic() - start < 60
    assert status == 1
    (found,) = doc["gadgets"]
    assert found["qualname"] == "os.system" and found["key"].startswith("<999936 levels>.0.0")


# -- convert of untrusted files ------------------------------------------------------------


def test_convert_refuses_gadgets_and_salvages(tree, tmp_path):
    out_file = tmp_path / "out.safetensors"
    out = run("convert", tree["evil"], out_file)
    assert out.returncode == 1 and not out_file.exists()
    assert out.stderr.splitlines() == [
        f"pthfmt: {tree['evil']}: the file calls 1 known code-execution gadget: "
        "posix.system('touch /tmp/pthfmt-canary-14\\x1b[31m') at hook; refusing to convert it "
        "(--salvage extracts the tensors only)"
    ]
    out = run("convert", "--salvage", tree["evil"], out_file)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "pthfmt: warning: salvage: left out the code-execution gadget "
        "posix.system('touch /tmp/pthfmt-canary-14\\x1b[31m') at hook"
    ]
    from safetensors.numpy import load_file

    assert list(load_file(str(out_file))) == ["w"]


def test_convert_library_raises_gadget_error(tree, tmp_path):
    import pthfmt
    from pthfmt.engines.convert import GadgetError

    with pytest.raises(GadgetError) as info:
        pthfmt.convert(tree["evil"], tmp_path / "o.npz")
    assert isinstance(info.value, pthfmt.UnsafePickleError)
    assert [g.qualname for g in info.value.gadgets] == ["posix.system"]
    warnings = pthfmt.convert(tree["evil"], tmp_path / "o.npz", salvage=True)
    assert warnings == [
        "salvage: left out the code-execution gadget "
        "posix.system('touch /tmp/pthfmt-canary-14\\x1b[31m') at hook"
    ]


def test_convert_whole_model_with_ordinary_classes(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    torch.save(net, tmp_path / "model.pt")
    out = run("convert", tmp_path / "model.pt", tmp_path / "model.safetensors")
    assert out.returncode == 0, out.stderr
    from safetensors.numpy import load_file

    assert sorted(load_file(str(tmp_path / "model.safetensors"))) == ["0.bias", "0.weight"]


def test_convert_refuses_the_same_file(tree, tmp_path):
    src = tmp_path / "in.pt"
    src.write_bytes(tree["good"].read_bytes())
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    before = src.read_bytes()
    for dst in (src, link):
        out = run("convert", src, dst)
        assert out.returncode == 2
        assert out.stderr.splitlines() == [
            f"pthfmt: {src}: is the same file as OUT {dst} (refused, as cp does)"
        ]
    assert src.read_bytes() == before
    import shutil

    import pthfmt

    with pytest.raises(shutil.SameFileError):
        pthfmt.convert(src, link)


def test_unknown_format_wording(tree, tmp_path):
    import pthfmt

    out = run("convert", tree["good"], tmp_path / "out.xyz")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"pthfmt: {tmp_path / 'out.xyz'}: cannot tell the output format from the extension "
        "'.xyz': use .pth/.pt/.bin/.ckpt, .safetensors or .npz (or --format)"
    ]
    with pytest.raises(pthfmt.UnknownFormatError) as info:
        pthfmt.convert(tree["good"], tmp_path / "out.xyz")
    assert isinstance(info.value, pthfmt.PthError)
    assert str(info.value) == (
        "cannot tell the output format from the extension '.xyz': name the file "
        ".pth/.pt/.bin/.ckpt, .safetensors or .npz, or pass format="
    )
    with pytest.raises(pthfmt.UnknownFormatError, match="format= must be one of"):
        pthfmt.convert(tree["good"], tmp_path / "o.pt", format="onnx")


def test_convert_leaves_out_an_int_json_cannot_print(tmp_path):
    """Python refuses to print an int of over 4300 digits: safetensors metadata drops it."""
    src, out = tmp_path / "big.pt", tmp_path / "big.safetensors"
    torch.save({"w": torch.ones(2), "n": 1 << 20_000, "m": 7}, src)
    done = run("convert", src, out)
    assert done.returncode == 0, done.stderr
    assert "left out 1 value that safetensors metadata cannot carry: n (int)" in done.stderr
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        assert f.metadata() == {"format": "pt", "pthfmt:m": "7"}
