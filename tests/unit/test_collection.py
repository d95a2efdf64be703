"""The suite's layout holds: ``tests/unit`` and ``tests/adversarial`` are collected without
importing torch or safetensors (run in a child, where nothing else imported them first).
That they also *run* without them is what CI's torch-less venv checks."""

from __future__ import annotations

import json

from tests.support import ROOT
from tests.support.host import child_env, run_python

COLLECT = """
import json, sys
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/unit",
                    "tests/adversarial"])
interop = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "safetensors"))
print(json.dumps({"exit": int(code), "interop": interop[:10]}))
"""


def test_unit_and_adversarial_tests_collect_without_torch() -> None:
    env = child_env()
    env.pop("PTHFMT_REQUIRE_INTEROP", None)  # under it the conftest imports torch
    out = run_python(COLLECT, cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["exit"] == 0, out.stdout[-3000:]
    assert result["interop"] == [], "collecting unit/adversarial tests imported torch"
