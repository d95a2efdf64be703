"""The validator observes the reader: its storage and view problems are the reader's own
errors (same rule, same words), a refusal is reported once, and a bug in pthfmt's handler
code is reported as ours, not as a broken file."""

from __future__ import annotations

import io

import pytest

import pthfmt
from pthfmt.errors import PthError
from pthfmt.torch.handlers import TorchHandlers
from pthfmt.validation import validate
from tests.support.adversarial import checkpoint, glob, pid, state, tensor, tup, uint, ustr


def _problems(data: bytes) -> list[tuple[str, str]]:
    return [(p.code, p.message) for p in validate(io.BytesIO(data)).problems]


def _load_error(data: bytes) -> PthError:
    with pytest.raises(PthError) as info:
        pthfmt.load(io.BytesIO(data))
    return info.value


@pytest.mark.parametrize(
    ("pickle", "code"),
    [
        (state(tensor(size=(5,))), "tensor.view"),
        (state(tensor(stride=(1, 1))), "tensor.view"),
        (state(tensor(pid(loc="cuda:x"))), "device.invalid"),
        (state(tensor(pid(numel=-1))), "storage.declaration"),
        (state(tup(ustr("storage")) + b"Q"), "pickle.persistent_id"),
        (
            b"\x80\x02}" + ustr("a") + tensor() + ustr("b") + tensor(pid("LongStorage")) + b"u.",
            "storage.redeclared",
        ),
    ],
    ids=["outside", "ndim", "device", "numel", "pid", "redeclared"],
)
def test_a_rule_is_reported_in_the_readers_words(pickle: bytes, code: str) -> None:
    data = checkpoint(pickle)
    error = _load_error(data)
    assert error.code == code
    assert (code, error.message) in _problems(data)


def test_a_refused_global_is_the_only_problem_of_what_it_feeds() -> None:
    # a refused class called, its result used as a tensor's storage and then given items:
    # one refusal, not a cascade of storage, view and SETITEM problems
    refused = glob("mymodule", "Thing") + b")R"
    rebuilt = (
        glob("torch._utils", "_rebuild_tensor_v2")
        + tup(
            refused,
            uint(0),
            tup(uint(4)),
            tup(uint(1)),
            b"\x89",
            glob("collections", "OrderedDict") + b")R",
        )
        + b"R"
    )
    filled = refused + b"(" + ustr("k") + uint(1) + b"u"
    pickle = b"\x80\x02}(" + ustr("w") + rebuilt + ustr("c") + filled + b"u."
    codes = [code for code, _ in _problems(checkpoint(pickle))]
    assert codes.count("pickle.global") == 2  # two STACK_GLOBAL/GLOBAL opcodes
    assert set(codes) == {"pickle.global"}


def test_a_bug_in_our_handlers_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: TorchHandlers, *args: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(TorchHandlers, "make_tensor", broken)
    report = validate(io.BytesIO(checkpoint(state(tensor()))))
    assert [p.code for p in report.problems if p.severity == "error"][:1] == ["internal.error"]
    assert "KeyError" in report.problems[0].message


@pytest.mark.parametrize(
    ("pickle", "code"),
    [
        (state(tensor(size=(5,))), "tensor.view"),
        (state(tensor(pid(loc="cuda:x"))), "device.invalid"),
        (state(tup(ustr("storage"), ustr("x")) + b"Q"), "pickle.persistent_id"),
    ],
    ids=["view", "device", "pid"],
)
def test_a_refused_reference_leaves_no_consequential_problem(pickle: bytes, code: str) -> None:
    # the storage the refused view or reference names is neither "unviewed" nor
    # "unreferenced" under --strict: the refusal is the one problem
    report = validate(io.BytesIO(checkpoint(pickle)), strict=True)
    codes = {p.code for p in report.problems}
    assert code in codes
    assert not codes & {"storage.unviewed", "storage.unreferenced"}
