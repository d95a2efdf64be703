"""The zip layer against torch: records found under another ASCII case, as torch's miniz finds
them (the zip layer against CPython's ``zipfile`` is in ``tests/unit/test_ziparchive.py``)."""

from __future__ import annotations

import zipfile

import pytest

import pthfmt

pytestmark = pytest.mark.torch


def test_torch_and_pthfmt_find_records_under_another_case(tmp_path):
    import torch

    src, dst = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.arange(6.0)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename.replace("/data/", "/DATA/"), zin.read(info))
    expected = torch.load(dst, weights_only=True)["w"].numpy()
    assert (pthfmt.load(dst)["w"] == expected).all()
