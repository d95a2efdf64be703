"""validate() reports what torch does not check of sparse and quantized tensors on load."""

from __future__ import annotations

import pytest

from pthfmt.validation import validate

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def test_sparse_indices_out_of_bounds_are_an_error(tmp_path):
    bad = torch.sparse_coo_tensor(
        torch.tensor([[0, 5]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False
    )
    path = tmp_path / "sparse.pt"
    torch.save({"emb": {"s": bad}}, path)
    torch.load(path, weights_only=True)  # torch itself accepts the file
    report = validate(str(path))
    found = [p for p in report.problems if p.code == "sparse.indices"]
    assert found and found[0].key_path == "emb.s" and found[0].severity == "error"
    assert not report.ok


def test_a_valid_sparse_and_quantized_file_is_ok(tmp_path):
    path = tmp_path / "ok.pt"
    q = torch.quantize_per_tensor(torch.arange(6.0), 0.5, 3, torch.qint8)
    torch.save({"s": torch.eye(3).to_sparse(), "q": q}, path)
    report = validate(str(path))
    assert report.ok, report.problems
