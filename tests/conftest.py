"""The suite's policy: what each directory needs, and what happens when it is missing.

* ``unit/`` and ``adversarial/`` need numpy, ml_dtypes, hypothesis and pytest: never torch
  (an autouse fixture fails a test there that imports torch or safetensors).
* ``interop/`` runs against real torch (marker ``torch``) and the real ``safetensors`` package
  (marker ``safetensors``); every test there carries at least one of the two.
* ``cli/`` runs the command line in subprocesses; its tests that build files with torch carry
  the ``torch`` marker.
* Helpers live in ``tests.support`` (``tests`` is a package: no ``sys.path`` edits).

A marked test whose package is missing is skipped, with the reason.  A module that needs
torch to be collected at all (it parametrizes over torch dtypes, say) skips itself with
``pytest.importorskip``.  With ``PTHFMT_REQUIRE_INTEROP=1`` (CI's full pass) a missing or
broken torch or safetensors is a hard failure instead: the session stops before collecting.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent
AREAS = ("unit", "adversarial", "interop", "cli")

#: marker -> the requirement that provides its package (pyproject's ``test`` extra)
INTEROP = {"torch": "torch==2.13.0", "safetensors": "safetensors"}
REQUIRE_INTEROP = os.environ.get("PTHFMT_REQUIRE_INTEROP", "") not in ("", "0")

# Hypothesis' deadline and its "too slow" health check are wall-clock limits: on a loaded
# 2-core VM they fail for reasons that have nothing to do with pthfmt.  Tests that need a
# bound on time say so themselves.
settings.register_profile("pthfmt", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pthfmt")


def _unavailable(package: str) -> str | None:
    """Why ``package`` cannot be used here, or None.  Under PTHFMT_REQUIRE_INTEROP it is
    imported (a broken install counts as missing); otherwise only looked up."""
    try:
        if REQUIRE_INTEROP:
            importlib.import_module(package)
        elif importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    except Exception as exc:  # ImportError, or whatever a broken install raises
        return f"{package} cannot be imported ({type(exc).__name__}: {exc})"
    return None


UNAVAILABLE = {marker: why for marker in INTEROP if (why := _unavailable(marker)) is not None}


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE_INTEROP and UNAVAILABLE:
        raise pytest.UsageError(
            "PTHFMT_REQUIRE_INTEROP=1: the interop tests must run, but "
            + "; ".join(UNAVAILABLE.values())
            + f" (install {', '.join(INTEROP[m] for m in UNAVAILABLE)}: "
            "pip install -e '.[test]')"
        )


def area(node: Any) -> str | None:
    """``unit``, ``adversarial``, ``interop`` or ``cli``: the directory under ``tests/`` a
    test lives in (a file name if it lies in ``tests/`` itself; None outside ``tests/``)."""
    try:
        return Path(node.path).resolve().relative_to(HERE).parts[0]
    except (ValueError, IndexError):
        return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        where = area(item)
        needs = [m for m in INTEROP if item.get_closest_marker(m)]
        if where is None:  # not one of ours (a doctest of the package, say)
            pass
        elif where not in AREAS:
            misplaced.append(f"{item.nodeid}: tests live in tests/{{{','.join(AREAS)}}}/")
        elif where == "interop" and not needs:
            misplaced.append(
                f"{item.nodeid}: an interop test must carry the marker of what "
                f"it needs ({' or '.join(INTEROP)})"
            )
        elif where in ("unit", "adversarial") and needs:
            misplaced.append(f"{item.nodeid}: needs {needs[0]}: it belongs in tests/interop/")
        missing = [m for m in needs if m in UNAVAILABLE]
        if missing:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs {INTEROP[missing[0]]}: {UNAVAILABLE[missing[0]]} "
                    "(PTHFMT_REQUIRE_INTEROP=1 makes this a failure)"
                )
            )
    if misplaced:
        raise pytest.UsageError("misplaced tests:\n  " + "\n  ".join(misplaced))


@pytest.fixture(autouse=True)
def _unit_tests_never_import_torch(request: pytest.FixtureRequest) -> Iterator[None]:
    """A unit or adversarial test that imports torch or safetensors fails (seen only when
    nothing imported them earlier in the session, e.g. ``pytest tests/unit``)."""
    if area(request.node) not in ("unit", "adversarial"):
        yield
        return
    before = {name for name in INTEROP if name in sys.modules}
    yield
    new = {name for name in INTEROP if name in sys.modules} - before
    if new:
        pytest.fail(
            f"imported {', '.join(sorted(new))}: unit and adversarial tests must run "
            "without it (move the test to tests/interop/)"
        )


@pytest.fixture(scope="session")
def torch_mod() -> Any:
    """The torch module, for tests marked ``torch`` that import it lazily."""
    return importlib.import_module("torch")


@pytest.fixture(scope="session")
def broken_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Torch-written checkpoints and broken variants of them, by name (built once, shared
    by ``interop/test_validate.py`` and ``cli/test_cli.py``; needs torch)."""
    from tests.support.broken_files import build_files

    return build_files(tmp_path_factory.mktemp("validate"))
