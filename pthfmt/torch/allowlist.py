"""The allowlist: every global a checkpoint may name, and what it resolves to.

Nothing named by a file is ever imported.  :data:`ALLOWLIST` maps ``module.name`` to either an
inert *value* (a dtype, a storage class, a qscheme marker) or the name of the
:class:`~pthfmt.torch.handlers.TorchHandlers` method that builds the object.  Anything else
is refused with :class:`~pthfmt.errors.UnsafePickleError` naming ``module.name``.

The set mirrors what torch's own ``weights_only=True`` loader allows for tensors and
containers, plus numpy arrays, dtypes and scalars (decoded by pthfmt, never by numpy's pickle
support; object arrays are refused).
"""

from __future__ import annotations

from typing import Any, Final

from ..model.dtypes import DTYPES, UNSAVABLE, DType
from ..model.storage import StorageType

__all__ = [
    "ALLOWLIST",
    "MODULE_ALIASES",
    "LAYOUTS",
    "QSCHEMES",
    "UNSUPPORTED_REBUILDS",
    "KIND_REBUILDS",
    "Marker",
    "GADGETS",
    "gadget",
]

#: Modules whose globals are known code-execution gadgets (refused like every global outside
#: the allowlist; named as such in messages, and never offered as stubs).
GADGETS: Final = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "builtins",
    "__builtin__",
    "importlib",
    "runpy",
    "pty",
    "socket",
    "shutil",
    "pickle",
    "marshal",
    "webbrowser",
    "code",
    "codeop",
    "ctypes",
    "multiprocessing",
    "operator",
    "functools",
    "types",
    "pdb",
    "timeit",
    "torch.jit",
    "torch.hub",
    "torch.serialization",
    "torch.utils",
    "torch._inductor",
    "numpy.testing",
)


def gadget(module: str) -> bool:
    """Is ``module`` one whose globals are known code-execution gadgets?"""
    return any(module == g or module.startswith(g + ".") for g in GADGETS)


#: Python 2 and numpy 1/2 spellings of the same module.
MODULE_ALIASES: Final[dict[str, str]] = {
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy._core.numeric": "numpy.core.numeric",
}

QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)
LAYOUTS = frozenset(
    [
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.sparse_csc",
        "torch.sparse_bsr",
        "torch.sparse_bsc",
        "torch._mkldnn",
        "torch.jagged",
    ]
)
#: The rebuild functions of quantized, sparse, nested and meta tensors -> their handlers
#: (in :mod:`pthfmt.torch.kinds`).
KIND_REBUILDS: Final = {
    "torch._utils._rebuild_qtensor": "kind_qtensor",
    "torch._utils._rebuild_sparse_tensor": "kind_sparse",
    "torch._utils._rebuild_nested_tensor": "kind_nested",
    "torch._utils._rebuild_meta_tensor_no_storage": "kind_meta",
    # jagged nested tensors: _rebuild_from_type_v2(_rebuild_njt, NestedTensor, ...), whose
    # cached seqlen tensors carry dynamo's marks (_DimRange records, inert here)
    "torch._tensor._rebuild_from_type_v2": "kind_from_type",
    "torch._tensor._rebuild_from_type": "kind_from_type",
    "torch.nested._internal.nested_tensor._rebuild_njt": "kind_njt",
    "torch._dynamo.decorators._DimRange": "kind_dim_range",
}
UNSUPPORTED_REBUILDS = {
    "_rebuild_sparse_csr_tensor": "sparse CSR tensors of torch < 1.13",
    "_rebuild_wrapper_subclass": "tensor wrapper subclasses",
    "_rebuild_device_tensor_from_cpu_tensor": "device tensors (xla/mtia)",
    "_rebuild_device_tensor_from_numpy": "XLA tensors saved as numpy arrays",
    "_rebuild_xla_tensor": "XLA tensors",
    "_rebuild_mps_tensor": "MPS tensors of torch < 1.12",
    "_rebuild_mkldnn_tensor": "MKL-DNN tensors",
}


class Marker:
    """An inert stand-in for a class the file names but never gets to call."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


def _build_allowlist() -> dict[str, Any]:
    table: dict[str, Any] = {
        "collections.OrderedDict": "ordered_dict",
        "collections.Counter": "counter",
        # plain data: a Namespace's fields (fairseq, HF training_args), set without setattr
        "argparse.Namespace": "namespace",
        "builtins.set": "set_",
        "builtins.frozenset": "frozenset_",
        "builtins.complex": "complex_",
        "builtins.bytearray": "bytearray_",
        "builtins.bytes": "bytes_",
        "_codecs.encode": "codecs_encode",
        "torch.Size": "size",
        "torch.device": "device",
        "torch.Tensor": "tensor_class",
        "torch.nn.parameter.Parameter": "parameter_class",
        "torch.serialization._get_layout": "get_layout",
        "torch._utils._rebuild_tensor": "rebuild_tensor",
        "torch._utils._rebuild_tensor_v2": "rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3": "rebuild_tensor_v3",
        "torch._utils._rebuild_parameter": "rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state": "rebuild_parameter_with_state",
        "torch.nested._internal.nested_tensor.NestedTensor": Marker(
            "torch.nested._internal.nested_tensor.NestedTensor"
        ),
        "numpy.core.multiarray._reconstruct": "np_reconstruct",
        "numpy.core.multiarray.scalar": "np_scalar",
        "numpy.core.numeric._frombuffer": "np_frombuffer",
        "numpy.dtype": "np_dtype",
        "numpy.ndarray": Marker("numpy.ndarray"),
        # TorchScript archives: typed containers and type tags (data only).
        "torch.jit._pickle.restore_type_tag": "restore_type_tag",
        "torch.jit._pickle.build_intlist": "build_list",
        "torch.jit._pickle.build_doublelist": "build_list",
        "torch.jit._pickle.build_boollist": "build_list",
        "torch.jit._pickle.build_tensorlist": "build_list",
        "torch.jit._pickle.build_complexlist": "build_list",
    }
    for name in UNSUPPORTED_REBUILDS:
        table[f"torch._utils.{name}"] = "unsupported_rebuild"
    table.update(KIND_REBUILDS)
    untyped = StorageType("UntypedStorage", None)
    table["torch.storage.UntypedStorage"] = table["torch.UntypedStorage"] = untyped
    for info in DTYPES:
        table[f"torch.{info.name}"] = DType(info.name)
        if info.storage:
            stype = StorageType(info.storage, info)
            table[f"torch.{info.storage}"] = table[f"torch.cuda.{info.storage}"] = stype
            tensor_class = info.storage.replace("Storage", "Tensor")
            for module in ("torch", "torch.cuda"):
                table[f"{module}.{tensor_class}"] = Marker(f"{module}.{tensor_class}")
    for name in UNSAVABLE:
        table[f"torch.{name}"] = DType(name)
    for name in QSCHEMES:
        table[f"torch.{name}"] = Marker(f"torch.{name}")
    return table


#: qualified name -> inert value, or the name of a :class:`TorchHandlers` method.
ALLOWLIST: Final[dict[str, Any]] = _build_allowlist()
