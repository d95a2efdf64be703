"""TorchScript code records are scanned as text for class names and parameter lists: the
scan is linear in the code's size and the code inflated in all is bounded by the file's size."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

import pthfmt
from pthfmt.errors import LimitError
from pthfmt.formats.torchscript import script_classes
from tests.support.adversarial import zip_file


def _archive(code: dict[str, bytes]) -> bytes:
    records = {"data.pkl": b"\x80\x02}.", "constants.pkl": b"\x80\x02).", "version": b"3\n"}
    records.update({f"code/__torch__/{name}": text for name, text in code.items()})
    return zip_file(records, method=zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize(
    "line",
    [b"class A(", b"class A(Module):\n  __parameters__ = [", b'  __buffers__ = ["'],
    ids=["class", "parameters", "buffers"],
)
def test_unclosed_lines_are_scanned_in_linear_time(line: bytes) -> None:
    text = (line + b"\n") * (1 << 17)  # ~1 MiB of code, 2 KiB deflated
    data = _archive({"m.py": text})
    start = time.process_time()
    assert pthfmt.load(io.BytesIO(data)) == {}
    assert time.process_time() - start < 2.0


def test_many_inflating_code_records_are_a_limit() -> None:
    text = b"#" * (2 << 20)
    data = _archive({f"m{i}.py": text for i in range(64)})  # 128 MiB from ~130 KiB
    assert len(data) < 1 << 20
    with pytest.raises(LimitError, match="TorchScript code records inflate to more than"):
        pthfmt.load(io.BytesIO(data))


def test_names_are_read_as_before() -> None:
    code = (
        b'class Linear(Module):\n  __parameters__ = ["weight", "bias", ]\n'
        b"  __buffers__ = []\n  training : bool\nclass Other(object):\n  x : int\n"
    )
    assert script_classes({"__torch__/m.py": code}) == {
        "__torch__.m.Linear": (("weight", "bias"), (), True),
        "__torch__.m.Other": ((), (), False),
    }
