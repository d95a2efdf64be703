"""The hostile corpus (tests/adversarial.py): refused precisely, nothing runs, bounded cost.

Proves SECURITY.md: every case raises the PthError subclass it names, in a child process
whose address space is capped (RLIMIT_AS) and whose time is bounded, with a canary file that
any executed payload would create.  Each case also goes through ``pthfmt.open``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import adversarial
import pytest

import pthfmt

CASES = adversarial.cases()
MEMORY_CAP = 3 << 30          # bytes of address space for the child (numpy alone maps ~1 GiB)
SECONDS_PER_CASE = 20

CHILD = r"""
import io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
sys.path.insert(0, {tests!r})
import adversarial, pthfmt
results = {{}}
for case in adversarial.cases():
    row = {{}}
    for how in ("load", "open"):
        start = time.perf_counter()
        try:
            if how == "load":
                pthfmt.load(io.BytesIO(case.data))
            else:
                with pthfmt.open(io.BytesIO(case.data)) as ck:
                    for _, ref in ck.tensors():
                        ref.numpy()
            outcome = "loaded"
        except pthfmt.PthError as exc:
            outcome = type(exc).__name__
        except BaseException as exc:
            outcome = "RAW " + type(exc).__name__ + ": " + str(exc)[:200]
        row[how] = [outcome, time.perf_counter() - start]
    results[case.name] = row
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def child_results(tmp_path_factory):
    canary = tmp_path_factory.mktemp("canary") / "ran"
    env = dict(os.environ, PTHFMT_CANARY=str(canary))
    code = CHILD.format(cap=MEMORY_CAP, tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=SECONDS_PER_CASE * len(CASES))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), canary


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_refused_with_its_error_class(child_results, case):
    results, _ = child_results
    for how in ("load", "open"):
        outcome, seconds = results[case.name][how]
        assert outcome == case.error.__name__ or (
            outcome != "loaded" and not outcome.startswith("RAW")
            and issubclass(getattr(pthfmt, outcome), case.error)), (how, outcome)
        assert seconds < SECONDS_PER_CASE


def test_no_payload_ran(child_results):
    _, canary = child_results
    assert not canary.exists()


def test_every_case_cites_a_security_section():
    text = open(os.path.join(os.path.dirname(__file__), "..", "SECURITY.md")).read()
    for case in CASES:
        assert f"{{#{case.section}}}" in text or f"(#{case.section})" in text or \
            f'id="{case.section}"' in text, case.section


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_reports_case_with_a_code(case):
    validate = getattr(pthfmt, "validate", None)
    if validate is None:
        pytest.skip("pthfmt.validate is not built yet")
    report = validate(io.BytesIO(case.data))
    assert not report.ok
    assert all(p.code for p in report.problems)


def test_corpus_is_json_describable():
    assert json.dumps([(c.name, c.error.__name__, c.section, len(c.data)) for c in CASES])


def test_running_out_of_memory_is_a_limit_error(tmp_path):
    """A genuine checkpoint bigger than the address space left: LimitError, not OSError."""
    np = pytest.importorskip("numpy")
    path = tmp_path / "big.pt"
    pthfmt.save({f"w{i}": np.ones(1 << 20, np.float32) for i in range(64)}, path)  # 256 MiB
    code = (f"import resource, pthfmt\n"
            f"resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))\n"
            f"try:\n    pthfmt.load({str(path)!r})\n    print('loaded')\n"
            f"except pthfmt.PthError as e:\n    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "LimitError", out.stderr[-2000:]
