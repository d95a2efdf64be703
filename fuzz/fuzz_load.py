"""Coverage-guided fuzzing of pthfmt's reader with atheris (libFuzzer for Python).

    mkdir -p fuzz/work
    python fuzz/fuzz_load.py fuzz/work fuzz/corpus -runs=1000000 -timeout=10   # a million
    python fuzz/fuzz_load.py fuzz/work fuzz/corpus -max_total_time=60          # a minute
    FUZZ_TARGET=state_dict python fuzz/fuzz_load.py fuzz/work-sd fuzz/corpus -max_total_time=1800

``FUZZ_TARGET`` picks the entry point (``fuzz/exercise.py``, ``TARGETS``): ``load`` (the
default: load, open, validate), ``state_dict``, ``convert-safetensors``, ``convert-npz``
(the bytes as that input of ``convert``, to every output format) and ``load-sharded`` (the
bytes as a ``model.safetensors.index.json`` beside a valid shard).

``fuzz/corpus`` holds the seeds (regenerate with ``fuzz/make_seeds.py``); libFuzzer adds
the inputs it finds interesting to the first directory, ``fuzz/work`` (not committed).

Each input goes through ``pthfmt.load``, ``pthfmt.open`` (every tensor read, key paths
walked, stubs allowed) and ``pthfmt.validate`` when it exists.  Anything but a
``pthfmt.PthError`` is a crash: libFuzzer stops and writes the input to ``crash-<sha1>``,
which then becomes a regression test in ``tests/unit/test_fuzz_regressions.py`` (copy it into
``fuzz/regressions/``).  ``-rss_limit_mb`` (default 2048) catches memory blow-ups and
``-timeout`` (default 1200 s, set it to e.g. 10) catches hangs.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Instrument every pthfmt module the exercise reaches, the lazily imported ones included.
with atheris.instrument_imports(include=["pthfmt"]):
    import pthfmt
    import pthfmt.conversion
    import pthfmt.engines.convert
    import pthfmt.formats.npz
    import pthfmt.formats.safetensors
    import pthfmt.formats.sharding
    import pthfmt.model.modules
    import pthfmt.validation

INSTRUMENTED = (pthfmt, pthfmt.conversion, pthfmt.model.modules, pthfmt.validation)

from exercise import TARGETS  # noqa: E402 - fuzz/exercise.py, shared with the tests


def main() -> None:
    target = os.environ.get("FUZZ_TARGET", "load")
    if target not in TARGETS:
        sys.exit(f"FUZZ_TARGET must be one of {', '.join(TARGETS)}, not {target!r}")
    atheris.Setup(sys.argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
