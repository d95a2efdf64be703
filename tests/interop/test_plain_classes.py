"""Plain-data classes decode natively (argparse.Namespace), ``unknown=`` takes the names of
the classes to stub, and a refusal says how to go on (unless the global is a gadget)."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest

import pthfmt
from pthfmt.errors import FormatError, UnsafePickleError
from tests.support.adversarial import checkpoint, glob, state, system_call, ustr

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _saved(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_namespace_loads_as_a_namespace_with_its_fields() -> None:
    ns = argparse.Namespace(lr=0.1, arch="transformer", loss_weights=torch.arange(3.0))
    out = pthfmt.load(_saved({"args": ns, "model": {"w": torch.ones(2)}}))
    args = out["args"]
    assert type(args) is argparse.Namespace
    assert (args.lr, args.arch) == (0.1, "transformer")
    np.testing.assert_array_equal(args.loss_weights, np.arange(3, dtype=np.float32))


def test_namespace_fields_go_into_its_dict_not_through_setattr() -> None:
    # a field named __class__ is data in __dict__; the object stays a Namespace
    fields = b"}(" + ustr("__class__") + ustr("x") + ustr("a") + b"K\x01u"
    pickle = (
        b"\x80\x02}(" + ustr("args") + glob("argparse", "Namespace") + b")\x81" + fields + b"bu."
    )
    args = pthfmt.load(io.BytesIO(checkpoint(pickle)))["args"]
    assert type(args) is argparse.Namespace
    assert vars(args) == {"__class__": "x", "a": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (b"]", "Namespace state is not a dict of attribute names"),
        (b"}K\x01K\x02s", "Namespace state is not a dict of attribute names"),
    ],
)
def test_bad_namespace_state_is_a_format_error(fields: bytes, message: str) -> None:
    pickle = state(glob("argparse", "Namespace") + b")\x81" + fields + b"b")
    with pytest.raises(FormatError, match=message):
        pthfmt.load(io.BytesIO(checkpoint(pickle)))


def test_unknown_names_stub_only_those_classes() -> None:
    data = _saved(torch.nn.Linear(2, 3)).getvalue()
    linear = "torch.nn.modules.linear.Linear"
    stub = pthfmt.load(io.BytesIO(data), unknown={linear})
    assert isinstance(stub, pthfmt.Stub) and stub.qualname == linear
    with pytest.raises(UnsafePickleError) as info:
        pthfmt.load(io.BytesIO(data), unknown={"other.Class"})
    assert info.value.message == (
        f"global {linear} is not allowed (to read its objects as inert stubs, pass "
        f"unknown=\"stub\", or unknown={{'{linear}'}} for this class only)"
    )


def test_a_gadget_refusal_suggests_nothing() -> None:
    with pytest.raises(UnsafePickleError) as info:
        pthfmt.load(io.BytesIO(checkpoint(state(system_call("/nonexistent/canary")))))
    assert info.value.message == "global os.system is not allowed: a known code-execution gadget"
    with pytest.raises(UnsafePickleError):  # never stubbed by name either
        pthfmt.load(io.BytesIO(checkpoint(state(system_call()))), unknown={"other.Name"})


@pytest.mark.parametrize("unknown", ["all", {1, 2}, 3])
def test_unknown_must_be_a_mode_or_names(unknown: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        pthfmt.load(io.BytesIO(checkpoint(state(b"K\x01"))), unknown=unknown)  # type: ignore[arg-type]
