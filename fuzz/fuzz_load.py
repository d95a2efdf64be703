"""Coverage-guided fuzzing of pthfmt's reader with atheris (libFuzzer for Python).

    mkdir -p fuzz/work
    python fuzz/fuzz_load.py fuzz/work fuzz/corpus -runs=1000000 -timeout=10   # a million
    python fuzz/fuzz_load.py fuzz/work fuzz/corpus -max_total_time=60          # a minute

``fuzz/corpus`` holds the seeds (regenerate with ``fuzz/make_seeds.py``); libFuzzer adds
the inputs it finds interesting to the first directory, ``fuzz/work`` (not committed).

Each input goes through ``pthfmt.load``, ``pthfmt.open`` (every tensor read, key paths
walked, stubs allowed) and ``pthfmt.validate`` when it exists.  Anything but a
``pthfmt.PthError`` is a crash: libFuzzer stops and writes the input to ``crash-<sha1>``,
which then becomes a regression test in ``tests/test_fuzz_regressions.py`` (copy it into
``fuzz/regressions/``).  ``-rss_limit_mb`` (default 2048) catches memory blow-ups and
``-timeout`` (default 1200 s, set it to e.g. 10) catches hangs.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["pthfmt"]):
    pass

from exercise import exercise


def main() -> None:
    atheris.Setup(sys.argv, exercise)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
