"""Pausing Python's cyclic garbage collector while pthfmt makes many small objects.

Reading and writing a checkpoint builds and drops hundreds of thousands of tuples, lists and
arrays and no reference cycles that need collecting.  Each allocation burst would otherwise
start collections that traverse every live object (the whole state dict, for a save): about
a third of the time of a many-tensor load or save.

Re-enabling the collector after such a block would make its next collection traverse every
object the block made (they are all in the youngest generation: a tenth of a many-tensor
load).  pthfmt builds no reference cycles (``tests/unit/test_no_cycles.py``), so those objects
need no young collection.  Instead, the block starts with a collection of the two young
generations (the program's own young objects: a few thousand at most, its cyclic garbage
freed now rather than later) and ends by moving everything to the oldest generation
untraversed (``gc.freeze()`` + ``gc.unfreeze()``, which splice lists), where the rare full
collections still see it.  A block that raises ends as a plain pause does (its error's
traceback and frames may hold cycles that want the young collections).  Both are skipped
when the program has frozen objects of its own (a pre-fork server, say), whose permanent
generation ``unfreeze`` would release.
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
    age = enabled and gc.get_freeze_count() == 0
    if age:
        gc.collect(1)
    gc.disable()
    try:
        yield
    except BaseException:
        if enabled:  # (an error's traceback may hold cycles: young, as usual)
            gc.enable()
        raise
    if age:
        gc.freeze()
        gc.unfreeze()
    if enabled:
        gc.enable()
