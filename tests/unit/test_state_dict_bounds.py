"""``pthfmt.state_dict`` on hostile module trees: every attribute the file decides is checked,
and the work is bounded by what the file holds; plain mappings and ``strip_prefix``."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import pthfmt
from pthfmt.errors import FormatError, LimitError, UnserializableError
from pthfmt.model.device import location_mapper
from pthfmt.model.storage import StorageTable
from pthfmt.pickle.machine import Unpickler
from pthfmt.pickle.pickler import GlobalRef, Pickler, Reduction
from pthfmt.torch.handlers import TorchHandlers

ROOT = Path(__file__).resolve().parents[2]


class Mod:
    """A module to pickle: ``torch.save(model)`` writes its class and its ``__dict__``."""

    def __init__(self, cls: str = "Net", **state) -> None:
        self.cls, self.state = cls, state


def module(params=None, buffers=None, modules=None, cls="Net", **extra) -> Mod:
    state = {
        "training": True,
        "_parameters": {} if params is None else params,
        "_buffers": {} if buffers is None else buffers,
        "_modules": {} if modules is None else modules,
        **extra,
    }
    return Mod(cls, **state)


def _reduce(obj, path):
    if isinstance(obj, Mod):
        module_name = "__torch__" if obj.cls.startswith("Script") else "__main__"
        return Reduction(GlobalRef(module_name, obj.cls), (), obj.state)
    raise UnserializableError(f"not in these tests: {type(obj).__name__}")


def pickled(obj) -> bytes:
    return Pickler(_reduce, max_depth=1 << 20).dump(obj)


def unpickled(data: bytes, script=None):
    h = TorchHandlers(
        StorageTable(location_mapper(None), None),
        eager=False,
        mmap=False,
        unknown="stub",
        script_classes=script,
    )
    return Unpickler(data, h, record="data.pkl").load()


def load(obj, script=None):
    return unpickled(pickled(obj), script)


# -- the file's attribute types ------------------------------------------------------------------
@pytest.mark.parametrize(
    "child,message",
    [
        (module(buffers=[1, 2]), "module 'enc' (__main__.Net): _buffers is a list, not a dict"),
        (
            module(params={3: 1}),
            "module 'enc' (__main__.Net): _parameters has the key 3, not a string",
        ),
        (module(modules={"x": 5}), "module 'enc' (__main__.Net): child 'x' is a int, not a module"),
        (
            module(_non_persistent_buffers_set=Mod("Evil")),
            "module 'enc' (__main__.Net): _non_persistent_buffers_set is a __main__.Evil, "
            "not a set",
        ),
        (
            module(_non_persistent_buffers_set=["b"] * 100_000),  # a linear scan per buffer
            "module 'enc' (__main__.Net): _non_persistent_buffers_set is a list, not a set",
        ),
        (
            module(params={"\x1b[2J" + "x" * 500: 1, 2**2000: 2}),
            "module 'enc' (__main__.Net): _parameters has the key <a 2001-bit int>, not a string",
        ),
    ],
)
def test_attribute_types_are_checked(child, message):
    root = load(module(modules={"enc": child}))
    with pytest.raises(FormatError) as info:
        pthfmt.state_dict(root)
    assert type(info.value) is FormatError and info.value.message == message


def test_a_module_containing_itself():
    root = module(params={"w": 1})
    root.state["_modules"]["a"] = module(modules={"b": root})
    with pytest.raises(FormatError) as info:
        pthfmt.state_dict(load(root))
    assert info.value.message == "module 'a.b' (__main__.Net) contains itself"


def test_skip_set_and_order_as_torch():
    root = module(
        params={"w": 1, "none": None},
        buffers={"rm": 2, "tmp": 3},
        modules={"0": module(params={"b": 4}), "gone": None},
        _non_persistent_buffers_set={"tmp"},
    )
    assert list(pthfmt.state_dict(load(root), prefix="m.").items()) == [
        ("m.w", 1),
        ("m.rm", 2),
        ("m.0.b", 4),
    ]


# -- bounded work ----------------------------------------------------------------------------------
def chain(depth: int, name: str, params: dict) -> Mod:
    node = module(params=params)
    for _ in range(depth):
        node = module(params=params, modules={name: node})
    return node


def shared_params() -> Mod:
    params = {f"p{i}": i for i in range(2_000)}
    return module(modules={str(i): module(params=params) for i in range(5_000)})


def script_instances():
    names = tuple(f"w{i}" for i in range(100_000))
    inst = [Mod("ScriptM", **{"w0": 1}) for _ in range(4_000)]
    root = Mod("ScriptM", **{f"c{i}": m for i, m in enumerate(inst)})
    return root, {"__torch__.ScriptM": (names, (), True)}


def case(name: str):
    """(root object, script classes) of a hostile case, as loaded from its pickle."""
    script = None
    if name == "deep-chain":
        obj = chain(60_000, "a", {})
    elif name == "long-name-deep":
        obj = chain(600, "n" * 10_000, {"w": 1})
    elif name == "shared-params":
        obj = shared_params()
    elif name == "script":
        obj, script = script_instances()
    elif name == "paths":  # 2**21 module paths from 21 modules
        obj = module(params={"w": 1})
        for _ in range(21):
            obj = module(modules={"a": obj, "b": obj})
    data = pickled(obj)
    return unpickled(data, script), len(data)


def run_case(name: str) -> dict:
    import time

    from tests.support.host import peak_memory

    root, size = case(name)
    start = time.process_time()
    error = None
    try:
        out = pthfmt.state_dict(root)
        keys = len(out)
    except pthfmt.PthError as exc:
        error, keys = [type(exc).__name__, exc.message], 0
    return {
        "error": error,
        "keys": keys,
        "size": size,
        "seconds": time.process_time() - start,
        "peak": peak_memory(),
    }


_STEPS = (
    "state_dict: the module tree takes more steps than the file's size justifies "
    "(modules or attribute dicts shared many times)"
)
_CHARS = (
    "state_dict: the keys take more characters than the file's size justifies "
    "(long names repeated at many levels)"
)


@pytest.mark.parametrize(
    "name,error",
    [
        ("deep-chain", _CHARS),  # 60,000 levels: 3.6 G characters of prefixes
        ("long-name-deep", _CHARS),  # a 10,000-char name 600 deep: 1.8 G characters
        ("shared-params", _STEPS),  # 5,000 x one 2,000-entry _parameters: 10 M keys
        ("script", _STEPS),  # 100,000 parameter names x 4,000 instances
        ("paths", _CHARS),  # 2 M module paths through shared children
    ],
)
def test_hostile_trees_are_bounded(name, error):
    code = (
        "import json, sys; from tests.unit.test_state_dict_bounds import run_case; "
        "print(json.dumps(run_case(sys.argv[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, name], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["error"] == [LimitError.__name__, error]
    assert result["size"] < 4 << 20
    assert result["seconds"] < 5 and result["peak"] < 1 << 30


def test_a_shared_submodule_is_visited_under_both_names():
    shared = module(params={"w": 1})
    root = module(modules={"a": shared, "b": shared})
    assert list(pthfmt.state_dict(load(root))) == ["a.w", "b.w"]


def test_through_a_file(tmp_path):
    """The same refusal from a whole checkpoint file (a zip holding the crafted pickle)."""
    plain = tmp_path / "plain.pth"
    pthfmt.save({"x": np.zeros(1, np.float32)}, plain)
    data = pickled({"model": module(modules={"enc": module(buffers=[1])}), "x": None})
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(
                info.filename, data if info.filename.endswith("data.pkl") else zin.read(info)
            )
    with pytest.raises(FormatError) as info:
        pthfmt.state_dict(pthfmt.load(path, unknown="stub")["model"])
    assert info.value.message == "module 'enc' (__main__.Net): _buffers is a list, not a dict"


# -- plain mappings and strip_prefix ---------------------------------------------------------------
def test_a_plain_mapping_with_metadata():
    sd = OrderedDict([("module.conv.weight", np.ones(2)), ("module.fc.bias", np.zeros(1))])
    sd._metadata = OrderedDict(
        [("", {"version": 1}), ("module", {"version": 1}), ("module.conv", {"version": 2})]
    )
    out = pthfmt.state_dict(sd, strip_prefix="module.")
    assert list(out) == ["conv.weight", "fc.bias"]
    assert out["conv.weight"] is sd["module.conv.weight"]
    assert out._metadata == OrderedDict(
        [("", {"version": 1}), ("", {"version": 1}), ("conv", {"version": 2})]
    ) or list(out._metadata) == ["", "conv"]
    assert list(pthfmt.state_dict({"a": 1}, prefix="p.")) == ["p.a"]


def test_strip_prefix_that_makes_two_keys_one_is_refused():
    with pytest.raises(FormatError) as info:
        pthfmt.state_dict({"module.a": 1, "a": 2}, strip_prefix="module.")
    assert info.value.message == (
        "strip_prefix 'module.' makes the keys 'module.a' and 'a' both 'a'"
    )


def test_strip_prefix_on_a_module_tree():
    root = load(module(modules={"module": module(params={"w": 1})}))
    assert list(pthfmt.state_dict(root, strip_prefix="module.")) == ["w"]


def test_other_values_are_a_type_error_with_a_bounded_repr():
    with pytest.raises(TypeError) as info:
        pthfmt.state_dict([np.zeros(10_000)] * 100)
    assert isinstance(info.value, pthfmt.NotAModuleError)  # and a PthError: the file's
    assert isinstance(info.value, pthfmt.PthError)
    assert len(str(info.value)) < 200
    assert str(info.value).startswith(
        "expected a stubbed nn.Module, a TorchScript module or a mapping of tensors, not [array("
    )


def test_module_methods_of_a_stub_that_is_no_module_are_a_pthfmt_error():
    """A stubbed class without a module's state: the file holds no module there."""
    stub = load(Mod("Config", lr=0.1))
    for call in (stub.named_parameters, stub.named_buffers, stub.named_modules):
        with pytest.raises(pthfmt.NotAModuleError) as info:
            list(call())
        assert isinstance(info.value, TypeError) and isinstance(info.value, pthfmt.PthError)
        assert info.value.message == (
            "expected a stubbed nn.Module or TorchScript module, not Stub(__main__.Config: lr=0.1)"
        )
