"""Adversarial review of the newer entry points: each test is the reproducer of one finding
(the input, what happened before the fix, the PthError or result it gives now)."""

from __future__ import annotations

import numpy as np

import pthfmt
from pthfmt.formats.sharding import save_sharded


def _safetensors_with_header_low_byte(tmp_path, low: int):
    """A valid safetensors file (pthfmt's writer) whose header length's low byte is ``low``."""
    for n in range(1, 400):
        folder = tmp_path / f"n{n}"
        save_sharded({"w" * n: np.arange(3, dtype=np.float32)}, folder, format="safetensors")
        path = folder / "model.safetensors"
        if path.read_bytes()[0] == low:
            return path, "w" * n
    raise AssertionError("no name length gives that header length")


def test_safetensors_whose_header_length_starts_with_a_pickle_proto_byte(tmp_path):
    # A header length of 0x80 mod 256 (one in 32 files) made the first byte a pickle PROTO:
    # load, open and validate read the file as a legacy pickle and failed on it.
    path, key = _safetensors_with_header_low_byte(tmp_path, 0x80)
    assert pthfmt.load(path)[key].tolist() == [0.0, 1.0, 2.0]
    with pthfmt.open(path) as ck:
        assert ck.format == "safetensors"
    report = pthfmt.validate(str(path))
    assert (report.format, report.ok, report.problems) == ("safetensors", True, [])


def _cli(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from pthfmt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_inspect_of_an_index_with_no_tensors(tmp_path):
    # `pthfmt inspect` of an index whose weight_map is empty was an internal error
    # (KeyError: 'parameters'): the merged totals of zero shards had no counts.
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weight_map": {}}')
    status, out, err = _cli("inspect", str(index))
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == "0 tensors, 0 elements; 0 storages, 0 B"
    status, out, err = _cli("inspect", "--json", str(index))
    import json

    totals = json.loads(out)["totals"]
    assert totals == {
        "tensors": 0,
        "parameters": 0,
        "elements": 0,
        "parameter_elements": 0,
        "storages": 0,
        "storage_bytes": 0,
        "bytes_per_dtype": {},
    }
