"""pthfmt.validate on files torch wrote, and on broken, ambiguous and hostile variants of them.

Every case asserts the exact set of problem codes, with and without ``strict``.  The files
(``tests.support.broken_files``) are built once per session by the root conftest's
``broken_files`` fixture and shared with ``tests/cli/test_cli.py``.
"""

from __future__ import annotations

import io
import json
import pickletools
import random
import subprocess
import sys
import zipfile

import pytest

from pthfmt.validation import MAX_PER_CODE, Report
from pthfmt.validation import validate as validate_file
from pthfmt.validation.codes import CODES
from tests.support.broken_files import EXPECTED, Thing
from tests.support.host import child_env

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_codes(broken_files, name, strict):
    report = validate_file(broken_files[name], strict=strict)
    codes, added = EXPECTED[name]
    want = codes | added if strict else codes
    got = set(report.codes)
    assert got == want, "\n".join(map(str, report.problems))
    assert report.ok == all(CODES[c].severity == "info" for c in want)
    assert report.strict is strict
    assert "internal.error" not in got
    if report.load_error is not None:
        assert not report.ok, "a file pthfmt cannot read must not validate as ok"
    json.dumps(report.to_dict(), allow_nan=False)


# -- locations -------------------------------------------------------------------------------


def _global_offsets(data: bytes) -> dict[str, int]:
    """``module.name -> offset`` of every GLOBAL/STACK_GLOBAL, from pickletools."""
    out: dict[str, int] = {}
    strings: list[str] = []
    memo: list[str] = []
    last: str = ""
    for op, arg, pos in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
            last = arg
            continue
        if op.name == "MEMOIZE":
            memo.append(last)
            continue
        if op.name == "BINGET":
            strings.append(memo[arg])
            last = memo[arg]
            continue
        if op.name == "GLOBAL":
            out[arg.replace(" ", ".")] = pos
        elif op.name == "STACK_GLOBAL":
            out[f"{strings[-2]}.{strings[-1]}"] = pos
        last = ""
    return out


def test_every_global_with_its_offset_and_key_path(broken_files):
    report = validate_file(broken_files["evil"])
    with zipfile.ZipFile(broken_files["evil"]) as z:
        want = _global_offsets(z.read("evil/data.pkl"))
    found = {p.message.split()[1]: p for p in report.problems}
    thing = f"{Thing.__module__}.Thing"
    assert set(found) == {thing, "posix.system"}
    assert found[thing].offset == want[thing] and found[thing].key_path == "x"
    assert found["posix.system"].offset == want["posix.system"]
    assert found["posix.system"].key_path == "e"
    assert all(p.record == "evil/data.pkl" and p.severity == "error" for p in report.problems)
    assert "code-execution" in found["posix.system"].message
    assert report.load_error is not None  # the reader refuses it too (reported once)


def test_stack_globals_all_reported(broken_files):
    report = validate_file(broken_files["many_globals"])
    with zipfile.ZipFile(broken_files["many_globals"]) as z:
        want = _global_offsets(z.read("archive/data.pkl"))
    bad = {k: v for k, v in want.items() if not k.startswith("collections.")}
    got = {p.message.split()[1]: p.offset for p in report.problems if p.code == "pickle.global"}
    assert got == bad and len(got) == 3


def test_problems_per_code_are_capped(broken_files):
    report = validate_file(broken_files["hundreds_of_globals"])
    assert len(report.problems) == MAX_PER_CODE + 1
    assert "and 50 more" in report.problems[-1].message


def test_storage_problems_name_the_tensor(broken_files):
    (p,) = validate_file(broken_files["redeclared"]).problems
    assert (p.record, p.key_path) == ("archive/data.pkl", "b")
    (p,) = validate_file(broken_files["view"]).problems
    assert p.key_path == "a" and "needs 24 bytes of a 16-byte storage" in p.message
    (p,) = validate_file(broken_files["size_mismatch"]).problems
    assert (p.record, p.key_path) == ("archive/data/0", "a")
    (p,) = validate_file(broken_files["missing_record"]).problems
    assert p.key_path == "a" and "data/0" in p.message


def test_zip_problems_name_the_record(broken_files):
    (p,) = validate_file(broken_files["bitflip"]).problems
    assert p.record == "good/data/0"
    (p,) = validate_file(broken_files["appended"]).problems
    assert p.offset == broken_files["good"].stat().st_size and "10 bytes" in p.message
    (p,) = validate_file(broken_files["hidden_member"]).problems
    assert p.offset > 0 and "unlisted local header" in p.message
    (p,) = validate_file(broken_files["prepended"]).problems
    assert "4 other bytes" in p.message


def test_legacy_problems(broken_files):
    found = {q.code: q for q in validate_file(broken_files["legacy_truncated"]).problems}
    assert found.keys() == {"file.truncated", "legacy.no_checksum"}
    assert found["legacy.no_checksum"].severity == "info"
    p = found["file.truncated"]
    assert p.record.startswith("storage ") and "runs past the end" in p.message
    report = validate_file(broken_files["plain_pickle"])
    assert report.format == "pickle"
    assert any("posix.system" in p.message for p in report.problems)


# -- the API -------------------------------------------------------------------------------------


def test_streams_and_errors(broken_files):
    data = broken_files["bitflip"].read_bytes()
    report = validate_file(io.BytesIO(data))
    assert report.path is None and report.codes == ["zip.crc_mismatch"]
    with pytest.raises(FileNotFoundError):
        validate_file(broken_files["good"].parent / "no-such-file.pt")
    assert isinstance(validate_file(broken_files["good"]), Report)


@pytest.mark.safetensors
def test_safetensors_is_named(tmp_path):
    import numpy as np
    from safetensors import numpy as st

    path = tmp_path / "w.safetensors"
    st.save_file({"w": np.zeros(3, np.float32)}, str(path))
    report = validate_file(path)
    assert report.ok and report.format == "safetensors" and report.problems == []


def test_report_json_shape(broken_files):
    d = validate_file(broken_files["evil"]).to_dict()
    assert set(d) == {"path", "format", "ok", "strict", "counts", "problems", "load_error"}
    assert d["counts"] == {"error": 2, "warning": 0, "info": 0}
    assert set(d["problems"][0]) == {"code", "severity", "message", "record", "offset", "key_path"}


# -- robustness: damaged files never raise -----------------------------------------------------


@pytest.mark.parametrize("name", ["good", "legacy", "torchscript", "protocol4"])
def test_random_damage_never_raises(broken_files, name):
    raw = broken_files[name].read_bytes()
    rng = random.Random(name)
    for _ in range(120):
        b = bytearray(raw)
        r = rng.random()
        if r < 0.3:
            b = b[: rng.randrange(1, len(b))]
        elif r < 0.85:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            at = rng.randrange(len(b))
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        report = validate_file(io.BytesIO(bytes(b)), strict=rng.random() < 0.5)
        assert "internal.error" not in report.codes, [str(p) for p in report.problems]
        if report.load_error is not None:
            assert not report.ok
        json.dumps(report.to_dict(), allow_nan=False)


def test_validation_runs_nothing(broken_files, tmp_path):
    """The payloads call os.system("echo pwned") / id: validating must not run them."""
    marker = tmp_path / "ran"
    files = [str(broken_files[n]) for n in ("evil", "extra", "plain_pickle", "tar")]
    code = (
        f"import os, pthfmt; os.system = lambda *a: open({str(marker)!r}, 'w').close(); "
        f"[pthfmt.validate(p) for p in {files!r}]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=child_env())
    assert not marker.exists()
