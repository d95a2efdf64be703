"""The pre-0.4 tar checkpoint format (torch 0.1 to 0.3), read by ``pthfmt.formats.tar``,
without torch: the example of ``tests.support.tar`` read every way, and malformed variants of
it refused with the member named.  ``tests/interop/test_tar.py`` proves the builder right with
``torch.load`` and compares pthfmt's reading with torch's.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pthfmt
from pthfmt import CorruptError, FormatError, PthError, UnsafePickleError
from tests.support.tar import (
    F32,
    I16,
    OUTSIDE,
    TENSORS,
    Glob,
    Ref,
    dumps,
    example,
    from_mmap,
    get,
    member_offset,
    members,
    raises,
    storages_member,
    tar_bytes,
    tensors_member,
    write,
)

pytestmark = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning")


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    return write(tmp_path, tar_bytes(members(example())))


# -- reading the example ------------------------------------------------------------------------


def test_load_mmap_views_the_file(example_path: Path) -> None:
    plain = pthfmt.load(example_path)
    out = pthfmt.load(example_path, mmap=True)
    for key_path in TENSORS:
        arr = get(out, key_path)
        assert arr.tobytes() == get(plain, key_path).tobytes()
        assert arr.strides == get(plain, key_path).strides
        if arr.size:
            assert from_mmap(arr) and not arr.flags.writeable
    assert np.shares_memory(out["a"], out["b"])


def test_load_from_a_stream(example_path: Path) -> None:
    data = example_path.read_bytes()
    out = pthfmt.load(io.BytesIO(data))
    plain = pthfmt.load(example_path)
    for key_path in TENSORS:
        assert get(out, key_path).tobytes() == get(plain, key_path).tobytes()
    assert np.shares_memory(out["a"], out["b"])


def test_cuda_locations_and_map_location(tmp_path: Path) -> None:
    spec = {
        "storages": [(11, "cuda:1", "DoubleStorage", np.arange(4, dtype="<f8"))],
        "views": [],
        "tensors": [(12, 11, "torch.cuda.DoubleTensor", (4,), (1,), 0)],
        "obj": {"w": Ref("12")},
    }
    path = write(tmp_path, tar_bytes(members(spec)))
    with pthfmt.open(path) as ck:
        assert ck.storages["11"].tag == "cuda:1" and str(ck.obj["w"].device) == "cuda:1"
    with pthfmt.open(path, map_location={"cuda:1": "cpu"}) as ck:
        assert str(ck.obj["w"].device) == "cpu" and ck.storages["11"].tag == "cuda:1"
    assert pthfmt.load(path, map_location="cpu")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


# -- malformed files -----------------------------------------------------------------------------


def test_truncated_file_inside_the_storages_member() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "storages") + 100
    raises(data[:cut], CorruptError, "storages", "runs past the end")


def test_truncated_file_inside_the_pickle_member() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "pickle") + 10
    raises(data[:cut], CorruptError, "pickle", "runs past the end")


def test_truncated_file_inside_a_header() -> None:
    data = tar_bytes(members(example()))
    cut = member_offset(data, "tensors") - 200
    raises(data[:cut], CorruptError, None, "truncated")


def test_truncated_storage_data_inside_the_member() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"])[:60]
    raises(tar_bytes(parts), CorruptError, "storages", "storage 1001 of 10 float32")


def test_truncated_pickle_inside_the_tensors_member() -> None:
    parts = members(example())
    parts["tensors"] = parts["tensors"][:20]
    raises(tar_bytes(parts), CorruptError, "tensors", "pickle truncated")


@pytest.mark.parametrize("name", ["storages", "tensors", "pickle"])
def test_missing_member(name: str) -> None:
    parts = members(example())
    del parts[name]
    raises(tar_bytes(parts), FormatError, name, "is missing")


def test_storage_count_too_high() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"], count=4)
    raises(tar_bytes(parts), FormatError, "storages", "storage header .* is not a 3-tuple")


def test_storage_count_too_low() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = storages_member(spec["storages"], spec["views"], count=2)
    raises(tar_bytes(parts), FormatError, "storages", "storage view .* is not a 4-tuple")


def test_tensor_count_too_high() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = tensors_member(spec["tensors"], count=6)
    raises(tar_bytes(parts), CorruptError, "tensors", "ends after 5 of the 6 tensors")


def test_tensor_count_too_low() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = tensors_member(spec["tensors"], count=4)
    raises(tar_bytes(parts), CorruptError, "tensors", "bytes after the last tensor")


def test_element_count_larger_than_the_data() -> None:
    spec = example()
    spec["storages"][2] = (1003, "cpu", "ShortStorage", I16)
    parts = members(spec)
    blob = parts["storages"]
    at = blob.index(struct.pack("<q", 3) + I16.tobytes())
    parts["storages"] = blob[:at] + struct.pack("<q", 10**6) + blob[at + 8 :]
    raises(tar_bytes(parts), CorruptError, "storages", "storage 1003 of 1000000 int16")


@pytest.mark.parametrize(
    "pid",
    [
        ("module", "Net", "net.py", "class Net: ..."),
        ("module", Glob("torch.nn.modules.linear", "Linear"), "linear.py", "..."),
        (Glob("__main__", "Net"), "net.py", "class Net: ..."),  # what torch 0.3 actually wrote
    ],
)
def test_module_persistent_id_is_refused(tmp_path: Path, pid: tuple) -> None:
    spec = example()
    spec["obj"]["model_class"] = Ref(pid)
    raises(tar_bytes(members(spec)), UnsafePickleError, "pickle", "not allowed|pickled class")


def test_unknown_storage_key_in_a_tensor() -> None:
    spec = example()
    spec["tensors"][1] = (3002, 9999, "FloatTensor", (2, 2), (1, 2), 1)
    data = tar_bytes(members(spec))
    raises(data, FormatError, "tensors", "storage 9999, which member 'storages' does not hold")


def test_unknown_key_in_the_pickle() -> None:
    spec = example()
    spec["obj"]["ghost"] = Ref("9999")
    data = tar_bytes(members(spec))
    raises(data, FormatError, "pickle", "names no tensor")


def test_unknown_root_of_a_storage_view() -> None:
    spec = example()
    spec["views"] = [(2001, 9999, 4, 6)]
    raises(
        tar_bytes(members(spec)),
        FormatError,
        "storages",
        "slice of storage 9999, which the member does not hold",
    )


def test_storage_view_outside_its_root() -> None:
    spec = example()
    spec["views"] = [(2001, 1001, 8, 6)]
    raises(tar_bytes(members(spec)), CorruptError, "storages", "does not fit the 10 elements")


@pytest.mark.parametrize(("tensor", "torch_grows"), OUTSIDE)
def test_tensor_outside_its_storage(tensor: tuple, torch_grows: bool) -> None:
    """Refused, whatever torch does with it (tests/interop/test_tar.py)."""
    spec = example()
    spec["tensors"][0] = tensor
    data = tar_bytes(members(spec))
    raises(data, CorruptError, "tensors", "needs .* bytes of a")


def test_negative_size_and_dimension_count() -> None:
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", (-2, 3), (3, 1), 0)
    raises(tar_bytes(members(spec)), FormatError, "tensors", r"not an int in \[0, 2\*\*63\)")
    parts = members(example())
    blob = parts["tensors"]
    at = blob.index(struct.pack("<q", 2) + struct.pack("<2q", 2, 3))
    parts["tensors"] = blob[:at] + struct.pack("<i", -1) + blob[at + 4 :]
    raises(tar_bytes(parts), CorruptError, "tensors", "-1 dimensions")
    parts["tensors"] = blob[:at] + struct.pack("<i", 10**9) + blob[at + 4 :]
    raises(tar_bytes(parts), CorruptError, "tensors", "1000000000 dimensions")


def test_unsafe_global_in_a_storage_header() -> None:
    spec = example()
    parts = members(spec)
    parts["storages"] = parts["storages"].replace(b"ctorch\nShortStorage\n", b"cos\nsystem\n")
    raises(tar_bytes(parts), UnsafePickleError, "storages", "os.system")


def test_untyped_storage_class_is_refused() -> None:
    spec = example()
    spec["storages"][2] = (1003, "cpu", "UntypedStorage", I16.view(np.uint8))
    raises(tar_bytes(members(spec)), FormatError, "storages", "no element type")


def test_persistent_id_in_a_header_pickle() -> None:
    spec = example()
    parts = members(spec)
    parts["tensors"] = dumps(Ref("1001")) + parts["tensors"][len(dumps(5)) :]
    raises(tar_bytes(parts), FormatError, "tensors", "persistent id '1001' in a header")


def test_duplicate_keys_are_refused() -> None:
    spec = example()
    spec["tensors"][1] = (3001, 2001, "FloatTensor", (2, 2), (1, 2), 1)
    raises(tar_bytes(members(spec)), FormatError, "tensors", "tensor key 3001 occurs twice")
    spec = example()
    spec["storages"][2] = (1001, "cpu", "ShortStorage", I16)
    raises(tar_bytes(members(spec)), FormatError, "storages", "storage key 1001 occurs twice")
    spec = example()
    spec["views"] = [(1002, 1001, 4, 6)]
    raises(tar_bytes(members(spec)), FormatError, "storages", "also the key of a storage")


def test_duplicate_and_irregular_members() -> None:
    parts = list(members(example()).items())
    raises(tar_bytes([*parts, ("pickle", dumps({}))]), FormatError, "pickle", "occurs twice")
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in parts[:-1]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    raises(f.getvalue(), FormatError, "storages", "not a regular file")


def test_bad_header_checksum() -> None:
    data = bytearray(tar_bytes(members(example())))
    header = member_offset(bytes(data), "tensors") - 512
    data[header + 10] ^= 0x01
    raises(bytes(data), CorruptError, None, "bad checksum")


def test_trailing_bytes_after_the_pickle() -> None:
    parts = members(example())
    parts["pickle"] += b"junk"
    raises(tar_bytes(parts), CorruptError, "pickle", "4 bytes after")


def test_sys_info_must_be_a_dict() -> None:
    parts = members(example())
    parts["sys_info"] = dumps([1, 2])
    raises(tar_bytes(parts), FormatError, "sys_info", "not a dict")


def test_every_truncation_raises_only_pth_errors() -> None:
    data = tar_bytes(members(example()))
    end = member_offset(data, "storages") + len(members(example())["storages"])
    for cut in range(1, end + 512, 3):
        try:
            pthfmt.load(io.BytesIO(data[:cut]))
        except PthError:
            continue
        assert cut >= end, cut


@pytest.mark.parametrize(
    ("size", "stride"), [((0, 2**62), (1, 1)), ((0,), (2**62,)), ((2**40, 0, 2**40), (1, 1, 1))]
)
def test_empty_tensor_with_impossible_sizes(size: tuple, stride: tuple) -> None:
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", size, stride, 0)
    data = tar_bytes(members(spec))
    raises(data, CorruptError, "tensors", "no array can have")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=0, max_size=3).flatmap(
        lambda size: st.tuples(
            st.just(tuple(size)), st.tuples(*[st.integers(0, 5) for _ in size]), st.integers(0, 12)
        )
    )
)
def test_any_view_of_a_storage(view: tuple) -> None:
    """A tensor's view either reads exactly what numpy's as_strided says, or is refused."""
    size, stride, offset = view
    spec = example()
    spec["tensors"][0] = (3001, 1001, "FloatTensor", size, stride, offset)
    data = tar_bytes(members(spec))
    count = int(np.prod(size))
    fits = count == 0 or offset + sum((n - 1) * s for n, s in zip(size, stride)) < F32.size
    if not fits:
        raises(data, CorruptError, "tensors", "bytes of a 40-byte storage")
        return
    arr = pthfmt.load(io.BytesIO(data))["a"]
    assert arr.shape == size and arr.strides == tuple(4 * s for s in stride)
    if count:
        want = np.lib.stride_tricks.as_strided(F32[offset:], size, [4 * s for s in stride])
        assert np.ascontiguousarray(arr).tobytes() == np.ascontiguousarray(want).tobytes()


_FUZZ_DATA = tar_bytes(members(example()))


_FUZZ_END = member_offset(_FUZZ_DATA, "storages") + len(members(example())["storages"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, _FUZZ_END - 1), st.integers(1, 255)), min_size=1, max_size=4)
)
def test_byte_flips_raise_only_pth_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_DATA)
    for at, mask in flips:
        data[at] ^= mask
    for mmap_ in (False, True):
        try:
            pthfmt.load(io.BytesIO(bytes(data)), mmap=mmap_)
        except PthError:
            pass
    try:
        with pthfmt.open(io.BytesIO(bytes(data))) as ck:
            for _, ref in ck.tensors():
                ref.numpy()
    except PthError:
        pass
