"""``state_dict()`` without torch: the weights of a stubbed ``nn.Module`` or TorchScript tree.

``torch.save(model)`` pickles every ``nn.Module`` with its ``__dict__``, whose
``_parameters``, ``_buffers`` and ``_modules`` OrderedDicts hold the weights, the buffers and
the child modules; ``_non_persistent_buffers_set`` names buffers that ``state_dict()`` skips.
``Module.state_dict()`` visits a module's own parameters, then its persistent buffers, then
each child depth-first with ``prefix + name + "."`` (``None`` entries are skipped).

A TorchScript module object keeps its attributes directly in its state, and its class's code
lists which are ``__parameters__`` and ``__buffers__``; the scripted module's ``state_dict()``
is parameters, then buffers, then child modules in attribute order.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..errors import FormatError
from .stub import Stub

__all__ = ["state_dict", "is_module"]

_MAX_VISITS = 1_000_000


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a stubbed ``nn.Module`` or TorchScript module."""
    if not isinstance(obj, Stub):
        return False
    if obj.type.is_module:
        return True
    state = obj.state
    return isinstance(state, dict) and isinstance(state.get("_modules"), dict) and \
        isinstance(state.get("_parameters"), dict)


def _children(module: Stub) -> tuple[list[tuple[str, Any]], list[tuple[str, Stub]]]:
    """(own tensors in state_dict order, child modules in order) of one module."""
    state = module.state if isinstance(module.state, dict) else {}
    if module.type.is_module:                       # TorchScript object
        tensors = [(n, state[n]) for n in (*module.type.parameters, *module.type.buffers)
                   if state.get(n) is not None]
        children = [(n, v) for n, v in state.items() if isinstance(v, Stub) and is_module(v)]
        return tensors, children
    params = state.get("_parameters") or {}
    buffers = state.get("_buffers") or {}
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = [(n, v) for n, v in params.items() if v is not None]
    tensors += [(n, v) for n, v in buffers.items() if v is not None and n not in skip]
    modules = state.get("_modules") or {}
    children = []
    for name, child in modules.items():
        if child is None:
            continue
        if not is_module(child):
            raise FormatError(f"module {module.qualname}: child {name!r} is a "
                              f"{type(child).__name__}, not a module")
        children.append((name, child))
    return tensors, children


def state_dict(obj: Any, *, prefix: str = "", strip_prefix: str | None = None
               ) -> OrderedDict[str, Any]:
    """The keys and tensors ``module.state_dict()`` would give, from a stubbed module tree.

    ``obj`` is what ``pthfmt.load(f, unknown="stub")`` (or ``open``) returned for a
    ``torch.save(model)`` file, or the root of a TorchScript archive.  ``strip_prefix``
    removes a leading key prefix, such as the ``module.`` of ``nn.DataParallel`` wrappers.
    """
    if not is_module(obj):
        raise TypeError(f"expected a stubbed nn.Module or TorchScript module, not {obj!r}")
    out: OrderedDict[str, Any] = OrderedDict()
    # (key prefix, module, ids of its ancestors): a module shared by two parents is visited
    # under both names, as torch does; a module that contains itself is refused.
    stack: list[tuple[str, Stub, frozenset[int]]] = [(prefix, obj, frozenset())]
    visits = 0
    while stack:
        path, module, ancestors = stack.pop()
        visits += 1
        if id(module) in ancestors:
            raise FormatError(f"module {path.rstrip('.') or '<root>'} contains itself")
        if visits > _MAX_VISITS:
            raise FormatError(f"module tree has more than {_MAX_VISITS} module paths")
        tensors, children = _children(module)
        for name, value in tensors:
            out[path + name] = value
        inner = ancestors | {id(module)}
        stack.extend((f"{path}{name}.", child, inner) for name, child in reversed(children))
    if strip_prefix:
        out = OrderedDict((k[len(strip_prefix):] if k.startswith(strip_prefix) else k, v)
                          for k, v in out.items())
    return out
