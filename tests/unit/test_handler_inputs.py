"""File-controlled values that are not the type a handler expects: a PthError, never a raw one.

A numpy array compared with ``==`` is an array, whose truth value raises ``ValueError``; the
handlers check types before comparing."""

from __future__ import annotations

import io

import pytest

import pthfmt
from tests.support import ROOT


def test_bit_flip_that_makes_a_persistent_id_an_array_is_a_pth_error():
    data = bytearray((ROOT / "fuzz" / "corpus" / "checkpoint.pt").read_bytes())
    data[330] ^= 0x10  # found by test_fuzz_properties::test_bit_flips
    with pytest.raises(pthfmt.PthError):
        pthfmt.load(io.BytesIO(bytes(data)))


def test_rebuild_from_type_with_stubbed_class_is_a_pth_error():
    from tests.support import adversarial

    case = next(c for c in adversarial.cases() if c.name == "rebuild-from-type-evil-class")
    with pytest.raises(pthfmt.PthError):
        pthfmt.load(io.BytesIO(case.data), unknown="stub")
