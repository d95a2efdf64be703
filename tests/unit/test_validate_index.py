"""validate() of a shard index never follows an index listed as a shard (itself or another)."""

from __future__ import annotations

import json

import numpy as np

import pthfmt
from pthfmt.validation import validate


def test_an_index_naming_itself_or_another_index_is_reported_not_followed(tmp_path):
    pthfmt.save({"a": np.zeros(2, np.float32)}, tmp_path / "pytorch_model-00001-of-00001.bin")
    index = tmp_path / "pytorch_model.bin.index.json"
    other = tmp_path / "other.bin.index.json"
    weight_map = {
        "a": "pytorch_model-00001-of-00001.bin",
        "b": "pytorch_model.bin.index.json",
        "c": "other.bin.index.json",
    }
    index.write_text(json.dumps({"weight_map": weight_map}))
    other.write_text(json.dumps({"weight_map": {"d": "pytorch_model.bin.index.json"}}))
    report = validate(str(index))
    messages = [p.message for p in report.problems if p.code == "index.inconsistent"]
    assert "shard 'pytorch_model.bin.index.json' is a shard index, not a checkpoint" in messages
    assert "shard 'other.bin.index.json' is a shard index, not a checkpoint" in messages
    assert not report.ok
