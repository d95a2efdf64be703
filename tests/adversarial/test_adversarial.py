"""The hostile corpus (tests/support/adversarial.py): refused precisely, nothing runs, bounded cost.

Proves SECURITY.md: every case raises the PthError subclass it names, in a child process
whose address space is capped (RLIMIT_AS, relative to what the child maps after its imports)
and whose time is bounded, with a canary file that any executed payload would create.  Each
case also goes through ``pthfmt.open``.
"""

from __future__ import annotations

import io
import json

import pytest

import pthfmt
from tests.support import ROOT, adversarial
from tests.support.host import CAP_ADDRESS_SPACE, LINUX_PROC, run_python

CASES = adversarial.cases()
#: Address space the child may map beyond what it holds after importing pthfmt, numpy and
#: ml_dtypes: the whole corpus peaked at about 440 MiB more than that (Python 3.11, numpy 2.4).
HEADROOM = 1 << 30
#: A bound on each case's time, not a benchmark: the slowest case (``deep-nesting-then-evil``,
#: a million nested lists) takes about 3.5 s on a 2-core VM.
SECONDS_PER_CASE = 20

CHILD = (
    CAP_ADDRESS_SPACE
    + r"""
import io, json, sys, time
from pathlib import Path
import ml_dtypes, numpy, pthfmt
cap_address_space(int(sys.argv[2]))
results = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    data = path.read_bytes()
    row = {}
    for how in ("load", "open"):
        start = time.process_time()
        try:
            if how == "load":
                pthfmt.load(io.BytesIO(data))
            else:
                with pthfmt.open(io.BytesIO(data)) as ck:
                    for _, ref in ck.tensors():
                        ref.numpy()
            outcome = "loaded"
        except pthfmt.PthError as exc:
            outcome = type(exc).__name__
        except BaseException as exc:
            outcome = "RAW " + type(exc).__name__ + ": " + str(exc)[:200]
        row[how] = [outcome, time.process_time() - start]
    results[path.stem] = row
print(json.dumps(results))
"""
)


@pytest.fixture(scope="module")
def child_results(tmp_path_factory):
    """Runs the corpus (built here, its payloads aimed at a fresh canary) in a capped child."""
    canary = tmp_path_factory.mktemp("canary") / "ran"
    folder = tmp_path_factory.mktemp("corpus")
    assert len({c.name for c in CASES}) == len(CASES), "case names name the child's files"
    for case in adversarial.cases(str(canary)):
        (folder / f"{case.name}.pt").write_bytes(case.data)
    out = run_python(CHILD, folder, HEADROOM, timeout=SECONDS_PER_CASE * len(CASES))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), canary


@LINUX_PROC
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_refused_with_its_error_class(child_results, case):
    results, _ = child_results
    for how in ("load", "open"):
        outcome, seconds = results[case.name][how]
        assert outcome == case.error.__name__ or (
            outcome != "loaded"
            and not outcome.startswith("RAW")
            and issubclass(getattr(pthfmt, outcome), case.error)
        ), (how, outcome)
        assert seconds < SECONDS_PER_CASE


@LINUX_PROC
def test_no_payload_ran(child_results):
    _, canary = child_results
    assert not canary.exists()


def test_every_case_cites_a_security_section():
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for case in CASES:
        assert (
            f"{{#{case.section}}}" in text
            or f"(#{case.section})" in text
            or f'id="{case.section}"' in text
        ), case.section


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
