"""What the tests need from the host, stated explicitly instead of assumed.

* Child processes get an explicit environment: UTF-8 for their standard streams and file
  names whatever the host's locale, the source tree first on ``PYTHONPATH``, and nothing from
  the caller that changes what Python prints (startup files, warning filters, colours).
* Address-space caps (``RLIMIT_AS``) are relative to what the child has already mapped (its
  ``VmSize``, read after its imports), never absolute: numpy, ml_dtypes and their BLAS map
  very different amounts on different machines (one thread buffer per core, for one).
* Tests that write large files check the free space first and skip with the reason.
* Time bounds ("never time the file's size does not justify") are CPU seconds of the process
  doing the work (``time.process_time()``), never wall-clock time: a CI machine busy with
  other jobs stretches the wall clock, not the work.
* A child's peak memory is its own (``VmHWM``), not ``ru_maxrss``, which Linux carries over
  ``exec`` from the forked copy of the parent: a test runner grown to 1 GiB would make every
  child report 1 GiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import ROOT

__all__ = [
    "CAP_ADDRESS_SPACE",
    "LINUX_PROC",
    "child_env",
    "require_free_disk",
    "run_python",
    "sparse_files",
]

#: ``/proc/self/status`` (VmSize, RssAnon) and ``resource`` are what the memory tests read
LINUX_PROC = pytest.mark.skipif(
    not os.path.exists("/proc/self/status") or sys.platform != "linux",
    reason="needs Linux's /proc/self/status and RLIMIT_AS",
)

_DROP = (
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "PYTHONWARNINGS",
    "PYTHONDEVMODE",
    "LANGUAGE",
    "FORCE_COLOR",
    "PYTHON_COLORS",
)


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child Python whose output a test reads."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUTF8="1",
        PYTHONIOENCODING="utf-8",
        LC_ALL="C.UTF-8",
        NO_COLOR="1",
    )
    env.update(extra)
    return env


def run_python(
    code: str,
    *args: object,
    timeout: float = 120,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` with :func:`child_env`, output decoded as UTF-8."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
        cwd=cwd,
        env=child_env() if env is None else env,
    )


#: Source for a child: ``cap_address_space(headroom)`` sets ``RLIMIT_AS`` to what the process
#: maps right now plus ``headroom`` bytes, and returns that ``VmSize``.  Call it after the
#: child's imports, so that the cap is the same distance from the child's needs on every host.
CAP_ADDRESS_SPACE = """
def cap_address_space(headroom):
    import resource
    with open("/proc/self/status", encoding="ascii") as status:
        vm_size = next(int(line.split()[1]) * 1024 for line in status
                       if line.startswith("VmSize:"))
    limit = vm_size + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return vm_size
"""


def require_free_disk(path: Path, nbytes: int) -> None:
    """Skip the test (with the reason) unless ``path``'s file system has ``nbytes`` free,
    plus a 256 MiB margin for everyone else."""
    free = shutil.disk_usage(path).free
    if free < nbytes + (256 << 20):
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB free in {path}, has {free / 2**30:.1f} GiB")


def sparse_files(path: Path) -> bool:
    """Whether a file with a 64 MiB hole in ``path`` takes (almost) no disk blocks."""
    probe = path / ".sparse-probe"
    try:
        with open(probe, "wb") as f:
            f.seek(64 << 20)
            f.write(b"x")
        return probe.stat().st_blocks * 512 < (1 << 20)
    finally:
        probe.unlink(missing_ok=True)


def peak_memory() -> int:
    """This process's peak resident memory in bytes since its last ``exec`` (``VmHWM``;
    ``ru_maxrss`` where there is no ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
