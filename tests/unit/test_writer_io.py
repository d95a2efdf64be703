"""pthfmt.save's memory use, without torch: saving streams, so anonymous memory stays at a few
``CHUNK``s whatever the size of the checkpoint (outputs, atomicity and re-saving torch's files
are in ``tests/interop/test_writer_io.py``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pthfmt import writer
from tests.support.host import LINUX_PROC, require_free_disk, run_python

PEAK = """
    import os, sys, threading, time
    import numpy as np, pthfmt
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    peak, done = [0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], anon()); time.sleep(0.002)
    {setup}
    before = anon()
    thread = threading.Thread(target=sample); thread.start()
    pthfmt.save(obj, sys.argv[1] + "/out.pt")
    done.append(1); thread.join()
    print((peak[0] - before) >> 20)
"""


NUMPY_SETUP = """
obj = {"a": np.ones((8192, 8192), np.float32)[:4096], "t": np.ones((2048, 4096)).T,
       "be": np.ones(1 << 24, ">f4")}
obj["view"] = obj["a"][::3]
"""
REF_SETUP = """
np.save(sys.argv[1] + "/src.npy", np.ones((8192, 16384), np.float32))
src = np.load(sys.argv[1] + "/src.npy", mmap_mode="r")
pthfmt.save({"w": src}, sys.argv[1] + "/src.pt")
del src
obj = pthfmt.open(sys.argv[1] + "/src.pt").obj
"""


@LINUX_PROC
@pytest.mark.parametrize(
    ("setup", "disk"),
    [(NUMPY_SETUP, 256 << 20), (REF_SETUP, 1536 << 20)],
    ids=["numpy", "tensorref"],
)
def test_peak_memory_is_a_few_chunks(setup: str, disk: int, tmp_path: Path) -> None:
    """Streaming: 256 MiB of arrays (views, transposes, big-endian) or a 512 MiB mapped
    checkpoint saved with at most a few CHUNKs of anonymous memory (mapped file pages, which
    the kernel can drop, are not counted).  ``disk``: the files the child writes."""
    require_free_disk(tmp_path, disk)
    code = textwrap.dedent(PEAK).replace("{setup}", setup)
    result = run_python(code, str(tmp_path), timeout=300)
    for path in tmp_path.iterdir():
        path.unlink()  # pytest keeps tmp dirs: drop 1 GiB of files
    assert result.returncode == 0, result.stderr
    grown = int(result.stdout.split()[-1])
    assert grown < 4 * writer.CHUNK >> 20, f"anonymous memory grew by {grown} MiB"
