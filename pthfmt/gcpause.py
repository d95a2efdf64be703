"""Pausing Python's cyclic garbage collector while pthfmt makes many small objects.

Reading and writing a checkpoint builds and drops hundreds of thousands of tuples, lists and
arrays and no reference cycles that need collecting.  Each allocation burst would otherwise
start collections that traverse every live object (the whole state dict, for a save): about
a third of the time of a many-tensor load or save.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic GC inside the block (restored after, even on errors)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
