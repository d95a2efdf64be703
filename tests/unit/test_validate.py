"""pthfmt.validate without torch: the code table, the pickle scanner, and the files in the
repository (the bundled examples and the spec's conformance vectors).

The torch-written files and their exact codes are checked in ``tests/interop/test_validate.py``.
"""

from __future__ import annotations

import collections
import json
import os
import pickle

import pytest

from pthfmt.validation import CHECKS, CODES, codes_markdown, scan_pickle
from pthfmt.validation import validate as validate_file
from tests.support import EXAMPLES, ROOT
from tests.support.broken_files import EXPECTED


def test_examples_are_sound():
    for path in sorted(EXAMPLES.glob("*.pth")):
        report = validate_file(path, strict=True)
        assert report.ok and not report.problems, [str(p) for p in report.problems]


def test_code_table():
    assert len(CODES) == len(CHECKS)
    table = codes_markdown()
    for c in CHECKS:
        assert c.severity in ("error", "warning", "info")
        assert f"`{c.code}`" in table
        assert not c.strict or c.severity == "warning"
    used = {code for codes, added in EXPECTED.values() for code in codes | added}
    assert used <= set(CODES)


def test_scan_pickle_matches_pickletools():
    import subprocess as sp

    for proto in range(6):
        data = pickle.dumps([collections.OrderedDict, sp.Popen, {"k": os.getcwd}], proto)
        scan = scan_pickle(data)
        assert scan.error is None and scan.end == len(data)
        names = {f"{m}.{n}" for _, m, n, _ in scan.globals}
        popen = "subprocess.Popen" if proto >= 3 else "commands.Popen"  # Python 2 name
        assert names == {"collections.OrderedDict", popen, "posix.getcwd"}, proto
    scan = scan_pickle(b"\x80\x02cos\nsystem\n")
    assert scan.error is not None and scan.globals


def test_spec_vectors_agree():
    """The format spec's test vectors: every invalid one fails validation; a valid one may
    carry warnings (torch-accepted ambiguities) but no error, except torch's own bug."""
    vectors = ROOT / "spec" / "vectors"
    metas = sorted(vectors.glob("*.json")) if vectors.is_dir() else []
    metas = [m for m in metas if m.name != "MANIFEST.json"]
    if not metas:
        pytest.skip("no spec/vectors")
    for meta_path in metas:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        report = validate_file(vectors / meta["file"])
        assert "internal.error" not in report.codes, meta["name"]
        if not meta["valid"]:
            assert not report.ok, meta["name"]
        else:
            errors = {p.code for p in report.errors} - {"legacy.v3_dtype"}
            assert not errors, (meta["name"], [str(p) for p in report.problems])
