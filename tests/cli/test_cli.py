"""The ``pthfmt`` command line, driven in subprocesses on torch-written and broken files:
exit codes, problem codes, JSON output, and one-line errors without tracebacks.

Tests that build their files with torch carry the ``torch`` marker; the others read the
bundled examples only.  Children run with an explicit UTF-8 environment (``child_env``).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pthfmt
from pthfmt.cli import main
from pthfmt.validation import CHECKS
from tests.support import EXAMPLES, ROOT
from tests.support.host import child_env

EXAMPLE = EXAMPLES / "civilnet_checkpoint.pth"
STATE_DICT = EXAMPLES / "civilnet.pth"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pthfmt", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=300,
        env=child_env(),
        cwd=ROOT,
    )


def run_json(*args: object) -> tuple[int, dict]:
    out = run(*args, "--json")
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


@pytest.fixture(scope="session")
def files(
    broken_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """``broken_files`` plus state dicts for ``diff`` and ``inspect`` (needs torch)."""
    import torch

    d = tmp_path_factory.mktemp("cli")
    f = dict(broken_files)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(net.state_dict(), d / "plain.pt")
    torch.save(torch.nn.DataParallel(net).state_dict(), d / "dataparallel.pt")
    changed = torch.nn.DataParallel(net).state_dict()
    changed["module.0.weight"] = changed["module.0.weight"] + 0.5
    changed["module.2.bias"] = torch.zeros(3)
    changed["module.extra"] = torch.ones(1)
    changed["module.0.bias"] = changed["module.0.bias"].double()
    torch.save(changed, d / "changed.pt")
    torch.save(net, d / "whole_model.pt")
    x = torch.arange(6.0)
    torch.save(
        {"x": x, "tail": x[2:], "p": torch.nn.Parameter(torch.ones(2)), "step": 7, "lr": 0.1},
        d / "shared.pt",
    )
    f.update(
        {n: d / f"{n}.pt" for n in ("plain", "dataparallel", "changed", "whole_model", "shared")}
    )
    return f


# -- general ---------------------------------------------------------------------------------


def test_help_on_every_command():
    out = run("--help")
    assert out.returncode == 0
    from pthfmt.cli import COMMANDS

    assert {c.name for c in COMMANDS} == {"inspect", "validate", "diff", "convert"}
    for command in (c.name for c in COMMANDS):
        assert command in out.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "example" in sub.stdout, command
    assert run("--version").stdout.startswith("pthfmt ")


def test_console_script():
    script = Path(sys.executable).parent / "pthfmt"
    if not script.exists():
        pytest.skip("pthfmt is not installed as a console script in this environment")
    out = subprocess.run(
        [str(script), "validate", STATE_DICT],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=child_env(),
    )
    assert out.returncode == 0 and "ok" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("bogus",),
        ("validate",),
        ("diff", "only-one"),
        ("inspect",),
        ("validate", "-j", "-1", "x.pt"),
    ],
)
def test_usage_errors_exit_2(args):
    out = run(*args)
    assert out.returncode == 2
    assert "usage" in out.stderr and "Traceback" not in out.stderr


# -- validate --------------------------------------------------------------------------------


@pytest.mark.torch
def test_validate_sound_files(files):
    out = run("validate", files["good"], files["legacy"], EXAMPLE, STATE_DICT)
    assert out.returncode == 0, out.stdout
    assert out.stdout.count(": ok (") == 4 and "4 files: 4 sound" in out.stdout


BROKEN = {
    "truncated": {"zip.eocd_missing"},
    "bitflip": {"zip.crc_mismatch"},
    "nocrc": {"zip.crc_zero"},
    "deflated": {"zip.compressed_data", "record.format_version"},
    "evil": {"pickle.global"},
    "torchscript": {"format.torchscript"},  # an info note: the file is ok
    "prepended": {"zip.prepended_data"},
    "duplicate": {"zip.duplicate_name", "record.format_version"},
    "case_collision": {"zip.case_collision", "record.extra_pickle", "record.format_version"},
    "legacy_truncated": {"file.truncated", "legacy.no_checksum"},
    "redeclared": {"storage.redeclared"},
    "empty": {"file.empty"},
}


@pytest.mark.torch
def test_validate_broken_files(files):
    """One process for all of them: each report has exactly its codes, each exits 1."""
    names = list(BROKEN)
    status, doc = run_json("validate", *(files[n] for n in names))
    assert status == 1 and not doc["ok"]
    for name, report in zip(names, doc["files"]):
        assert Path(report["path"]).stem == name and report["ok"] == (name == "torchscript")
        assert {p["code"] for p in report["problems"]} == BROKEN[name], name
    text = run("validate", *(files[n] for n in names))
    assert text.returncode == 1
    blocks = text.stdout.split(f"{files[names[0]].parent}/")[1:]
    for name, block in zip(names, blocks):
        assert block.startswith(f"{name}.pt: ") and all(c in block for c in BROKEN[name])
    for name in ("bitflip", "evil"):
        assert run("validate", files[name]).returncode == 1


@pytest.mark.torch
def test_validate_json_locations(files):
    _, doc = run_json("validate", files["evil"])
    problems = doc["files"][0]["problems"]
    assert [(p["record"], p["key_path"]) for p in problems] == [
        ("evil/data.pkl", "x"),
        ("evil/data.pkl", "e"),
    ]
    assert all(isinstance(p["offset"], int) and p["severity"] == "error" for p in problems)


@pytest.mark.torch
def test_validate_strict(files):
    assert run("validate", files["partial"]).returncode == 0
    status, doc = run_json("validate", "--strict", files["partial"])
    assert status == 1 and doc["strict"]
    assert [p["code"] for p in doc["files"][0]["problems"]] == ["storage.unviewed"]


@pytest.mark.torch
def test_validate_many_files_in_parallel(files):
    names = ["good", "bitflip", "evil", "legacy", "truncated"]
    status, doc = run_json("validate", "-j", "3", *(files[n] for n in names))
    assert status == 1
    assert [Path(r["path"]).stem for r in doc["files"]] == names
    assert [r["ok"] for r in doc["files"]] == [True, False, False, True, False]


@pytest.mark.torch
def test_validate_unreadable_file_exits_2(files, tmp_path):
    missing = tmp_path / "missing.pt"
    out = run("validate", "-j", "2", files["bitflip"], missing, files["good"])
    assert out.returncode == 2
    assert out.stderr.strip() == f"pthfmt: {missing}: No such file or directory"
    assert "zip.crc_mismatch" in out.stdout and "1 unreadable" in out.stdout


@pytest.mark.torch
def test_validate_quiet_and_codes(files):
    out = run("validate", "-q", files["good"], files["bitflip"])
    assert out.returncode == 1 and "good.pt" not in out.stdout and "bitflip.pt" in out.stdout
    table = run("validate", "--codes")
    assert table.returncode == 0
    assert all(f"`{c.code}`" in table.stdout for c in CHECKS)


# -- inspect ---------------------------------------------------------------------------------


def test_inspect_text():
    out = run("inspect", EXAMPLE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{EXAMPLE}: zip checkpoint, version 3, little-endian")
    header = next(i for i, line in enumerate(lines) if line.startswith("key "))
    assert lines[header].split() == ["key", "dtype", "shape", "device", "size", "flags"]
    row = lines[header + 1].split()
    assert row == ["model_state_dict.conv1.weight", "float32", "6x3x5x5", "cpu", "1.8", "KiB"]
    # columns line up
    col = lines[header].index("dtype")
    assert all(line[col - 2 : col] == "  " for line in lines[header : header + 21])
    assert "20 tensors, 124,012 elements; 20 storages, 484.4 KiB (float32 484.4 KiB)" in out.stdout
    assert any(line.split() == ["epoch", "=", "5"] for line in lines)
    assert any(
        line.startswith("optimizer_state_dict.param_groups.0.params ")
        and line.endswith("= [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
        for line in lines
    )


@pytest.mark.torch
def test_inspect_json_is_complete(files):
    import torch

    status, doc = run_json("inspect", files["shared"])
    assert status == 0
    tensors = {t["key"]: t for t in doc["tensors"]}
    assert list(tensors) == ["x", "tail", "p"]
    assert tensors["tail"]["shared"] and tensors["x"]["shared"] and not tensors["p"]["shared"]
    assert tensors["tail"]["storage_offset"] == 2 and tensors["tail"]["shape"] == [4]
    assert tensors["p"]["parameter"] and tensors["p"]["requires_grad"]
    assert doc["values"] == {"step": 7, "lr": 0.1}
    assert doc["totals"]["tensors"] == 3 and doc["totals"]["parameters"] == 1
    assert doc["totals"]["bytes_per_dtype"] == {"float32": 24 + 8}
    x = tensors["x"]
    raw = files["shared"].read_bytes()
    assert raw[x["file_offset"] : x["file_offset"] + 24] == torch.arange(6.0).numpy().tobytes()
    text = run("inspect", files["shared"]).stdout
    assert "shared:0" in text and "param grad" in text


@pytest.mark.torch
def test_inspect_whole_model_and_torchscript(files):
    out = run("inspect", files["whole_model"])
    assert out.returncode == 0 and "note: pickles 3 classes outside the allowlist" in out.stdout
    assert "0.weight" in out.stdout and "4 tensors (4 parameters)" in out.stdout
    _, doc = run_json("inspect", files["torchscript"])
    assert doc["format"] == "torchscript"
    assert [t["key"] for t in doc["tensors"]] == ["weight", "bias"]


@pytest.mark.torch
@pytest.mark.parametrize("name", ["truncated", "empty", "random", "view", "prepended"])
def test_inspect_bad_file_is_one_line(files, name):
    out = run("inspect", files[name])
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"pthfmt: {files[name]}: ")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_inspect_missing_file_exits_2(tmp_path):
    out = run("inspect", tmp_path / "nope.pt")
    assert out.returncode == 2 and out.stderr.count("\n") == 1


@pytest.mark.torch
def test_no_traceback_on_any_broken_file(files):
    """In-process sweep over every test file: each command ends with an exit code."""
    for path in files.values():
        for argv in (
            ["inspect", str(path)],
            ["inspect", "--json", str(path)],
            ["validate", "--strict", str(path)],
            ["diff", str(path), str(path)],
        ):
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                status = main(argv)
            assert status in (0, 1), (argv, err.getvalue())
            assert err.getvalue().count("\n") <= 1, (argv, err.getvalue())


# -- diff ------------------------------------------------------------------------------------


@pytest.mark.torch
def test_diff_identical_after_stripping_dataparallel_prefix(files):
    out = run("diff", "--strip-b", "module.", files["plain"], files["dataparallel"])
    assert out.returncode == 0, out.stdout
    assert "load_state_dict(strict=True) would accept B; all values equal" in out.stdout
    plain = run("diff", files["plain"], files["dataparallel"])
    assert plain.returncode == 1 and "try --strip-b module." in plain.stdout


@pytest.mark.torch
def test_diff_reports_like_load_state_dict(files):
    status, d = run_json("diff", "--strip", "module.", files["plain"], files["changed"])
    assert status == 1
    assert d["only_a"] == [] and d["only_b"] == ["extra"]
    assert d["mismatched"] == [
        {"key": "0.bias", "what": "dtype", "a": "float32", "b": "float64"},
        {"key": "2.bias", "what": "shape", "a": [2], "b": [3]},
    ]
    (diff,) = d["different"]
    assert diff["key"] == "0.weight" and abs(diff["max_abs_diff"] - 0.5) < 1e-6
    assert d["equal"] == 2 and not d["load_state_dict_strict_ok"] and not d["identical"]
    text = run("diff", "--strip-b", "module.", files["plain"], files["changed"]).stdout
    assert "2.bias  2  vs  3" in text and "max |a-b| = 0.5" in text


@pytest.mark.torch
def test_diff_subtree_and_whole_model(files):
    out = run("diff", "--key-b", "model_state_dict", STATE_DICT, EXAMPLE)
    assert out.returncode == 0 and "10 entries equal" in out.stdout
    hint = run("diff", STATE_DICT, EXAMPLE)
    assert hint.returncode == 1 and "try --key-b model_state_dict" in hint.stdout
    assert run("diff", files["plain"], files["whole_model"]).returncode == 0
    status, d = run_json(
        "diff", "--no-values", files["plain"], files["changed"], "--strip-b", "module."
    )
    assert status == 1 and not d["values_compared"] and d["different"] == []


@pytest.mark.torch
def test_diff_bad_input(files, tmp_path):
    out = run("diff", files["plain"], tmp_path / "nope.pt")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    out = run("diff", files["truncated"], files["plain"])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    out = run("diff", "--key-a", "no.such.key", files["plain"], files["plain"])
    assert out.returncode == 1 and "no key 'no.such.key'" in out.stderr


@pytest.mark.torch
def test_diff_values_nan_and_equal_bits(tmp_path):
    import torch

    a = collections.OrderedDict(
        f=torch.tensor([1.0, float("nan"), 3.0]),
        h=torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
        b=torch.tensor([True, False]),
    )
    b = collections.OrderedDict(
        f=torch.tensor([1.0, float("nan"), 3.0]),
        h=torch.tensor([1.0, 2.5], dtype=torch.bfloat16),
        b=torch.tensor([True, True]),
    )
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    status, d = run_json("diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert status == 1 and d["equal"] == 1
    got = {m["key"]: m["max_abs_diff"] for m in d["different"]}
    assert got == {"h": 0.5, "b": 1.0}


# -- sharded checkpoints ----------------------------------------------------------------


@pytest.mark.torch
def test_cli_inspect_and_validate_accept_a_shard_index(tmp_path):
    import torch

    from tests.support.torch_helpers import write_shards

    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    index = write_shards(tmp_path, state, [["a"], ["b"]])

    out = run("inspect", "--json", str(tmp_path))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["key"] for r in doc["tensors"]] == ["a", "b"] and len(doc["shards"]) == 2
    assert run("validate", str(index)).returncode == 0
    report = pthfmt.validate(index)
    assert report.ok and report.format == "sharded"
    os.remove(tmp_path / json.loads(index.read_text(encoding="utf-8"))["weight_map"]["b"])
    out = run("validate", str(tmp_path))
    assert out.returncode == 1 and "index.inconsistent" in out.stdout
    assert run("inspect", str(index)).returncode == 1
