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

import io
import sys

import atheris

with atheris.instrument_imports(include=["pthfmt"]):
    import pthfmt
    import pthfmt.modules
    import pthfmt.validation  # imported lazily by pthfmt; instrument it too


def exercise(data: bytes) -> None:
    """Everything a reader of an untrusted file might do; only PthError may escape."""
    try:
        pthfmt.load(io.BytesIO(data))
    except pthfmt.PthError:
        pass
    try:
        with pthfmt.open(io.BytesIO(data), unknown="stub") as ck:
            for _, ref in ck.tensors():
                ref.numpy()
            if pthfmt.modules.is_module(ck.obj):
                pthfmt.state_dict(ck.obj)
    except pthfmt.PthError:
        pass
    validate = getattr(pthfmt, "validate", None)
    if validate is not None:
        validate(io.BytesIO(data))


def main() -> None:
    atheris.Setup(sys.argv, exercise)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
