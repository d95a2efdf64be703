"""``pthfmt.conversion`` without torch: importing the converter and the command line loads
neither torch nor safetensors (the conversions themselves are checked against both in
``tests/interop/test_convert.py``)."""

from __future__ import annotations

import subprocess
import sys

import pthfmt
from pthfmt.conversion import convert
from tests.support import ROOT
from tests.support.host import child_env


def test_library_is_importable_without_torch_at_runtime() -> None:
    code = (
        "import sys, pthfmt.conversion, pthfmt.cli; "
        "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=child_env())
    assert pthfmt.convert is convert
