"""validate() of a shard index: an index listed as a shard (itself or another) is never
followed; every missing or unfetchable shard is reported, not only the first."""

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


def _three_shard_index(folder) -> str:
    """An index over three one-tensor shards ``s1.bin`` .. ``s3.bin`` (all written)."""
    for i in (1, 2, 3):
        pthfmt.save({f"k{i}": np.full(2, i, np.float32)}, folder / f"s{i}.bin")
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {f"k{i}": f"s{i}.bin" for i in (1, 2, 3)}}))
    return str(index)


def test_every_missing_shard_of_a_local_index_is_reported(tmp_path):
    index = _three_shard_index(tmp_path)
    (tmp_path / "s1.bin").unlink()
    (tmp_path / "s3.bin").unlink()
    report = validate(index)
    assert [(p.code, p.message, p.record) for p in report.problems] == [
        (
            "index.inconsistent",
            f"shard 's{i}.bin' named by the index is missing",
            "pytorch_model.bin.index.json",
        )
        for i in (1, 3)
    ]
    assert not report.ok


def test_every_unfetchable_shard_of_a_remote_index_is_reported(tmp_path):
    import pytest

    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    from tests.support.static_server import serve_static

    _three_shard_index(tmp_path)
    with serve_static() as s:
        for name in ("pytorch_model.bin.index.json", "s2.bin"):
            s.put(name, tmp_path / name)
        report = validate(s.url("pytorch_model.bin.index.json"))
    problems = [(p.code, p.message.split(" (")[0], p.record) for p in report.problems]
    assert problems == [
        (
            "index.inconsistent",
            f"shard 's{i}.bin' named by the index cannot be fetched",
            "pytorch_model.bin.index.json",
        )
        for i in (1, 3)
    ]
    assert not report.ok
