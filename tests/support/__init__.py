"""Helpers shared by the test packages, imported as ``tests.support.<module>``.

Only ``torch_helpers``, ``torch_models`` and ``writer_torch`` import torch; every other
module here is safe to import from ``tests/unit`` and ``tests/adversarial``.
"""

from __future__ import annotations

from pathlib import Path

#: the repository root (holds ``pthfmt/``, ``examples/``, ``spec/``, ``fuzz/``)
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
