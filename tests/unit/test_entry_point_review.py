"""Adversarial review of the newer entry points: each test is the reproducer of one finding
(the input, what happened before the fix, the PthError or result it gives now)."""

from __future__ import annotations

import numpy as np
import pytest

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


def _index(folder, shard: str = "model-00001-of-00001.safetensors") -> None:
    save_sharded({"w": np.zeros(2, np.float32)}, folder, format="safetensors")
    (folder / "model.safetensors").rename(folder / shard)
    (folder / "model.safetensors.index.json").write_text(f'{{"weight_map": {{"w": "{shard}"}}}}')


FIFO_INDEX = "model.safetensors.index.json: a FIFO, not a regular file: never read"


def test_an_index_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    # A model folder whose index is a FIFO (from an archive, say): load_sharded, validate,
    # inspect, diff and convert of the folder opened it and blocked forever.
    import os

    from pthfmt.engines.convert import convert
    from pthfmt.engines.diff import diff_summary
    from pthfmt.engines.inspect import inspect_summary
    from pthfmt.engines.tree import Failure
    from pthfmt.errors import FormatError

    os.mkfifo(tmp_path / "model.safetensors.index.json")
    expected = f"{tmp_path}/{FIFO_INDEX}"
    for call in (
        lambda: pthfmt.load_sharded(tmp_path),
        lambda: pthfmt.load_sharded(tmp_path / "model.safetensors.index.json"),
        lambda: inspect_summary(str(tmp_path)),
        lambda: convert(tmp_path, tmp_path / "out.safetensors"),
    ):
        with pytest.raises(FormatError) as caught:
            call()
        assert (caught.value.message, caught.value.code) == (expected, "file.not_regular")
    with pytest.raises(Failure) as caught:
        diff_summary(str(tmp_path), str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: {expected}"
    report = pthfmt.validate(str(tmp_path))
    assert [(p.code, p.message) for p in report.problems] == [("index.inconsistent", expected)]
    status, out, err = _cli("inspect", str(tmp_path))
    assert (status, out, err) == (1, "", f"pthfmt: {tmp_path}: {expected}\n")


def test_a_checkpoint_path_that_is_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    import os

    from pthfmt.errors import FormatError

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO"), ("/dev/zero", "a device")):
        for call in (pthfmt.load, pthfmt.open):
            with pytest.raises(FormatError) as caught:
                call(path)
            assert caught.value.message == f"{path}: {what}, not a regular file: never read"
        report = pthfmt.validate(str(path))
        assert [p.code for p in report.problems] == ["file.not_regular"]
    status, out, err = _cli("convert", str(fifo), str(tmp_path / "o.npz"))
    message = f"pthfmt: {fifo}: a FIFO, not a regular file: never read\n"
    assert (status, out, err) == (1, "", message)


def test_convert_leaves_out_names_the_output_cannot_hold(tmp_path):
    # A pickle's keys may hold lone surrogates, a safetensors name may be megabytes long.
    # convert to npz raised a raw UnicodeEncodeError (zip names are UTF-8) or struct.error (a
    # name over 65,535 bytes); to safetensors it wrote a header that no reader (pthfmt's
    # included) accepts.
    from pthfmt.engines.convert import convert

    src = tmp_path / "in.pth"
    pthfmt.save(
        {
            "ok": np.ones(2, np.float32),
            "x\udc80y": np.ones(1, np.float32),
            "v\ud800": "value",
            "plain": "bad \udfff value",
        },
        src,
    )
    for fmt, where in (("npz", "the npz sidecar"), ("safetensors", "safetensors metadata")):
        out = tmp_path / f"out.{fmt}"
        why = (
            "not valid Unicode, or longer than 65,531 bytes"
            if fmt == "npz"
            else "not valid Unicode"
        )
        assert convert(src, out) == [
            f"left out 2 entries whose name {fmt} cannot hold ({why}): x\\udc80y, v\\ud800",
            f"left out 1 value that {where} cannot carry: plain (str)",
        ]
        assert convert(out, tmp_path / f"back-{fmt}.pth") == []
        assert list(pthfmt.load(tmp_path / f"back-{fmt}.pth")) == ["ok"]
    long = "k" * 70_000
    save_sharded(
        {long: np.ones(1, np.float32), "ok": np.ones(1, np.float32)},
        tmp_path / "st",
        format="safetensors",
    )
    assert convert(tmp_path / "st" / "model.safetensors", tmp_path / "long.npz") == [
        "left out 1 entry whose name npz cannot hold (not valid Unicode, or longer than "
        f"65,531 bytes): {long}"
    ]
    assert list(pthfmt.load(tmp_path / "st" / "model.safetensors")) == [long, "ok"]


def test_an_npz_of_no_arrays_converts(tmp_path):
    # np.savez() of nothing (and a conversion that leaves every entry out) is a zip of no
    # members, which starts with the end record: convert refused it as "not an npz file".
    from pthfmt.engines.convert import convert

    np.savez(tmp_path / "empty.npz")
    assert convert(tmp_path / "empty.npz", tmp_path / "out.pth") == []
    assert pthfmt.load(tmp_path / "out.pth") == {}


def test_a_stub_repr_escapes_its_field_names_and_bounds_its_ints():
    # repr() of a stub (what a REPL shows for pthfmt.load(f, unknown="stub")) raised
    # ValueError for an int field over 4,300 digits, and wrote field names raw (ESC, bidi).
    import io
    import struct

    from tests.support.adversarial import checkpoint, glob, uint, ustr

    big = 10**5000
    raw = big.to_bytes((big.bit_length() + 8) // 8, "little", signed=True)
    long4 = b"\x8b" + struct.pack("<i", len(raw)) + raw
    fields = ustr("\x1b[2Jk\u202e") + uint(1) + ustr("n") + long4
    pkl = b"\x80\x02" + glob("mymod", "Net") + b")\x81}(" + fields + b"ub."
    stub = pthfmt.load(io.BytesIO(checkpoint(pkl, {})), unknown="stub")
    assert repr(stub) == "Stub(mymod.Net: \\x1b[2Jk\\u202e=1, n=<a 16610-bit int>)"


def test_convert_prints_its_paths_escaped(tmp_path):
    # The summary line of `pthfmt convert` (and its progress bar's label) wrote IN and OUT
    # raw: a file name's ESC, BEL and bidi override reached the terminal.
    src = tmp_path / "in\x1b[2J\u202e\udcff.pth"
    dst = tmp_path / "out\x07.npz"
    pthfmt.save({"w": np.ones(2, np.float32)}, src)
    status, out, err = _cli("convert", str(src), str(dst))
    assert (status, err) == (0, "")
    size = dst.stat().st_size
    assert out == (
        f"{tmp_path}/in\\x1b[2J\\u202e\\udcff.pth -> {tmp_path}/out\\x07.npz (npz): "
        f"1 tensor ({size} B)\n"
    )


def test_a_broken_shard_is_named_in_the_error(tmp_path):
    # load_sharded of an index whose shard is not a checkpoint said "not a torch checkpoint:
    # ..." without saying which of the shards it was.
    from pthfmt.errors import FormatError

    _index(tmp_path)
    (tmp_path / "model-00001-of-00001.safetensors").write_bytes(b"\x1b[2J not a checkpoint")
    with pytest.raises(FormatError) as caught:
        pthfmt.load_sharded(tmp_path)
    assert str(caught.value) == (
        "shard 'model-00001-of-00001.safetensors': not a torch checkpoint: no zip, legacy "
        "pickle, tar or safetensors signature at the start of the 21-byte file"
    )


def test_validate_of_a_folder_of_two_indexes_reports_them_escaped(tmp_path):
    # validate() raised a FormatError (it never raises on content) with the folder and the
    # index names raw.
    folder = tmp_path / "m\x1b"
    folder.mkdir()
    for name in ("a\x07.bin.index.json", "b.bin.index.json"):
        (folder / name).write_text('{"weight_map": {}}')
    report = pthfmt.validate(str(folder))
    message = (
        f"{tmp_path}/m\\x1b: expected one *.bin.index.json, found a\\x07.bin.index.json, "
        "b.bin.index.json"
    )
    assert (report.ok, report.format) == (False, "sharded")
    assert [(p.code, p.message) for p in report.problems] == [("index.inconsistent", message)]


def test_a_huge_storage_key_is_shown_bounded(tmp_path):
    # Storage keys were shown with repr(): a legacy file listing a 5 MB key printed a 5 MB
    # error line (validate's text, load's message).
    from tests.support.adversarial import glob, legacy, state, tensor, tup, uint, ustr

    key = "k" * 5_000_000 + "\x1b"
    pid = tup(ustr("storage"), glob("torch", "FloatStorage"), ustr("0"), ustr("cpu"), uint(4), b"N")
    path = tmp_path / "keys.pt"
    path.write_bytes(legacy(state(tensor(storage=pid + b"Q")), ["0", key], [bytes(16), bytes(4)]))
    shown = "'" + "k" * 37 + "..." + "k" * 38 + "'"  # 80 characters (reprlib's cut)
    message = f"storage {shown} is listed but no object uses it"
    with pytest.raises(pthfmt.FormatError) as caught:
        pthfmt.load(path)
    assert caught.value.message == message
    report = pthfmt.validate(str(path))
    keys = [p.message for p in report.problems if p.code == "legacy.keys"]
    assert keys == [f"{message} (torch: AssertionError)"]
    status, out, err = _cli("validate", str(path))
    [line] = [line for line in out.splitlines() if "legacy.keys" in line]
    assert (status, err) == (1, "")
    where = "  error    legacy.keys           legacy storage keys @182"
    assert line == f"{where}: {message} (torch: AssertionError)"


def test_a_remote_shard_name_that_is_not_unicode_is_refused(tmp_path):
    # A remote index's shard name with a lone surrogate was fetched under another name (the
    # URL drops the surrogate: '\ud800.safetensors' fetched '/.safetensors').
    import json

    import pytest

    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    from tests.support.static_server import serve_static

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "\ud800.safetensors"}}))
    save_sharded({"w": np.zeros(2, np.float32)}, tmp_path / "st", format="safetensors")
    with serve_static() as s:
        s.put(index.name, index)
        s.put(".safetensors", tmp_path / "st" / "model.safetensors")
        url = s.url(index.name)
        with pytest.raises(pthfmt.FormatError) as info:
            pthfmt.load_sharded(url)
    assert str(info.value) == f"{url}: shard name '\\ud800.safetensors' is not a plain name"


def test_a_remote_index_naming_a_missing_shard(tmp_path):
    # A remote index naming a shard the server does not have: load_sharded and validate()
    # (which never raises on content) raised a raw FileNotFoundError; a local index's missing
    # shard is a FormatError reported as index.inconsistent.
    import json

    import pytest

    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    from pthfmt.errors import RemoteError
    from tests.support.static_server import serve_static

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with serve_static() as s:
        s.put(index.name, index)
        url = s.url(index.name)
        with pytest.raises(RemoteError) as info:
            pthfmt.load_sharded(url)["w"]
        report = pthfmt.validate(url)
    assert str(info.value).startswith(
        "shard 'gone.safetensors' named by the index cannot be fetched (not found or unreachable"
    )
    assert [p.code for p in report.problems] == ["index.inconsistent"]
    assert report.problems[0].message == str(info.value)


def test_a_64_kib_member_name_is_shown_cut(tmp_path):
    # A zip's member names may be 64 KiB: messages quoted them whole (repr), so an archive
    # folder of 60,000 characters made load's error and each line of validate 60 KB long.
    from tests.support.adversarial import state, tensor, zip_file

    folder = "a" * 60_000 + "\x1b[2J"
    cut = "'" + "a" * 1024 + "'..."
    records = {folder + "/data.pkl": state(tensor()), "archive/version": b"3\n"}
    path = tmp_path / "long.pt"
    path.write_bytes(zip_file(records, prefix=""))
    with pytest.raises(pthfmt.FormatError) as caught:
        pthfmt.load(path)
    assert str(caught.value) == f"zip record 'archive/version' is outside the archive folder {cut}"
    status, out, err = _cli("validate", str(path))
    assert status == 1 and err == ""
    assert max(len(line) for line in out.splitlines()) < 2300
    assert f"  error    record.missing          record {'a' * 1021}.../version is missing" in out


def test_a_stride_0_view_of_terabytes_is_a_limit_for_what_reads_every_element(tmp_path):
    # A 600-byte file holding a view of 2**40 float32 with stride 0 over a 16-byte storage:
    # load, open and validate make views (fine), but diff compared 2**40 elements (hours) and
    # convert to safetensors or npz wrote 4 TiB.  A pth output keeps the view.
    from pthfmt.engines.convert import convert
    from pthfmt.engines.diff import diff_summary
    from pthfmt.engines.tree import Failure
    from pthfmt.errors import LimitError
    from tests.support.adversarial import checkpoint, state, tensor

    path = tmp_path / "expand.pt"
    path.write_bytes(checkpoint(state(tensor(size=(2**40,), stride=(0,)))))
    assert pthfmt.load(path)["w"].strides == (0,)
    message = (
        "a view of 1099511627776 elements (4398046511104 bytes) over a storage of 16 bytes "
        "(stride (0,)): reading every element is more than 256 times the storage (key 'w')"
    )
    for out in ("out.safetensors", "out.npz"):
        with pytest.raises(LimitError) as caught:
            convert(path, tmp_path / out)
        assert str(caught.value) == message
        assert not (tmp_path / out).exists()
    assert convert(path, tmp_path / "out.pth") == []
    with pytest.raises(Failure) as caught:
        diff_summary(str(path), str(path))
    assert str(caught.value) == f"{path} / {path}: {message}"
    with pytest.raises(LimitError) as caught:
        pthfmt.diff(path, path)
    assert str(caught.value) == message
    # a view within the bound still converts and compares
    small = tmp_path / "small.pt"
    small.write_bytes(checkpoint(state(tensor(size=(1000,), stride=(0,)))))
    assert convert(small, tmp_path / "small.safetensors") == []
    assert pthfmt.load(tmp_path / "small.safetensors")["w"].shape == (1000,)


def test_json_output_is_json_when_the_file_is_bad(tmp_path):
    # `inspect --json` and `diff --json` of a broken file wrote nothing on stdout (the error
    # went to stderr only): a JSON consumer got an empty, invalid document.
    import json

    bad = tmp_path / "bad\x1b.pt"
    bad.write_bytes(b"garbage!")
    message = (
        f"{tmp_path}/bad\\x1b.pt: not a torch checkpoint: no zip, legacy pickle, tar or "
        "safetensors signature at the start of the 8-byte file"
    )
    status, out, err = _cli("inspect", "--json", str(bad))
    assert (status, err) == (1, f"pthfmt: {message}\n")
    assert out.isascii() and json.loads(out) == {"file": str(bad), "ok": False, "error": message}
    status, out, err = _cli("diff", "--json", str(bad), str(tmp_path / "other.pt"))
    assert (status, err) == (1, f"pthfmt: {message}\n")
    doc = json.loads(out)
    assert doc == {"a": str(bad), "b": str(tmp_path / "other.pt"), "ok": False, "error": message}
    status, out, err = _cli("inspect", "--json", str(tmp_path / "missing.pt"))
    assert status == 2 and json.loads(out)["error"].endswith(
        "missing.pt: No such file or directory"
    )


def test_convert_never_writes_a_shortened_key_path(tmp_path):
    # Key paths are shortened for display (a key over 1,024 characters keeps its first 992
    # and says how long it was; a path over 64 levels keeps its innermost parts): convert
    # wrote tensors under those shortened names, silently renaming them.
    from pthfmt.engines.convert import convert

    deep: dict[str, object] = {"w": np.zeros(1, np.float32)}
    for _ in range(70):
        deep = {"d": deep}
    long = "k" * 2000
    src = tmp_path / "in.pth"
    pthfmt.save({long: np.ones(1, np.float32), "deep": deep, "ok": np.ones(2, np.float32)}, src)
    shown_long = "k" * 992 + "...<+1008 chars>"
    shown_deep = "<8 levels>." + ".".join(["d"] * 63) + ".w"
    for out in ("out.pth", "out.safetensors", "out.npz"):
        assert convert(src, tmp_path / out) == [
            "left out 2 entries whose key path is too long or deep to keep whole (a key over "
            f"1,024 characters, or more than 64 levels, is shortened): {shown_long}, {shown_deep}"
        ]
        written = np.load(tmp_path / out) if out.endswith("npz") else pthfmt.load(tmp_path / out)
        assert [k.removesuffix(".npy") for k in written] == ["ok"]


def test_an_npy_header_that_is_code_gives_the_same_message_every_run(tmp_path):
    # numpy's header parser refuses a header that is not a literal (nothing runs), and its
    # message named "<ast.Call object at 0x7f...>": a different error text on every run.
    import io
    import struct
    import zipfile

    from pthfmt.engines.convert import convert
    from pthfmt.errors import FormatError

    header = b"{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.npy", npy)
    (tmp_path / "in.npz").write_bytes(buf.getvalue())
    messages = set()
    for _ in range(2):
        with pytest.raises(FormatError) as caught:
            convert(tmp_path / "in.npz", tmp_path / "out.pth")
        messages.add(str(caught.value))
    assert messages == {"member 'a.npy': malformed node or string on line 1: <ast.Call object>"}


def test_a_storage_repr_bounds_its_record_name() -> None:
    from pthfmt.model.device import Device
    from pthfmt.model.storage import StorageInfo
    from pthfmt.text import NAME_LIMIT

    info = StorageInfo("0", None, 4, "cpu", Device("cpu"))
    info.record = "archive/data/" + "\u202e" * 100_000
    text = repr(info)
    assert len(text) < 2 * 6 * NAME_LIMIT and "\u202e" not in text
    assert text.endswith("...)") and "\\u202e" in text


def test_views_each_within_the_bound_are_bounded_together(tmp_path):
    # Two stride-0 views of 1 GiB over one 16-byte storage: each is within a view's own
    # allowance (256 x 16 bytes + 1 GiB), but an allowance per view adds up (a thousand of
    # them would be a terabyte); the job has one.
    from pthfmt.engines.convert import convert
    from pthfmt.errors import LimitError
    from tests.support.adversarial import checkpoint, tensor, ustr

    view = tensor(size=(2**28,), stride=(0,))
    pkl = b"\x80\x02}(" + ustr("w0") + view + ustr("w1") + view + b"u."
    path = tmp_path / "twice.pt"
    path.write_bytes(checkpoint(pkl))
    message = (
        "the views read so far take 2147483648 bytes from storages of 16 bytes: reading every "
        "element is more than 256 times the storages (key 'w1')"
    )
    with pytest.raises(LimitError) as caught:
        convert(path, tmp_path / "out.safetensors")
    assert str(caught.value) == message
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(LimitError) as caught:  # (both sides read: at the first pair)
        pthfmt.diff(path, path)
    assert str(caught.value) == message.replace("16 bytes", "32 bytes").replace("w1", "w0")
