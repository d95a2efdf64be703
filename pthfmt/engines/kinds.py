"""The tensor kinds (:mod:`pthfmt.model.kinds`) as the engines see them.

- :func:`kind_name`: what a kinds value is, in words (``"jagged nested tensor"``), for
  ``convert``'s warnings and ``diff``'s kind mismatches; ``None`` for anything else.
- :func:`describe`: its layout (kind, dtype, shape and what else must match for two of them
  to be comparable), JSON-safe, for ``inspect`` rows and ``diff``.
- :func:`parts`: the arrays it holds by name (indices, values, offsets...), each compared by
  ``diff``; ``exact`` names those compared bit for bit (indices, never within a tolerance).

A quantized tensor from :func:`pthfmt.open` is a :class:`~pthfmt.TensorRef` (a
``QuantizedRef``) and goes where tensors go; the others are values.
"""

from __future__ import annotations

from typing import Any, Final

from ..model.kinds import (
    JaggedArray,
    MetaArray,
    NestedArray,
    QuantizedArray,
    SparseArray,
)

__all__ = ["KIND_TYPES", "kind_name", "describe", "parts", "EXACT_PARTS"]

KIND_TYPES: Final = (QuantizedArray, SparseArray, NestedArray, JaggedArray, MetaArray)
#: parts that hold positions, not values: compared exactly whatever the tolerances
EXACT_PARTS: Final = frozenset(
    ("indices", "compressed_indices", "plain_indices", "offsets", "lengths", "sizes", "strides")
)


def kind_name(value: Any) -> str | None:
    """``"sparse_coo tensor"``, ``"nested tensor"``, ``"jagged nested tensor"``, ``"meta
    tensor"``, ``"quantized qint8 tensor"``; ``None`` for anything else."""
    if isinstance(value, SparseArray):
        return f"{value.layout} tensor"
    if isinstance(value, JaggedArray):
        return "jagged nested tensor"
    if isinstance(value, NestedArray):
        return "nested tensor"
    if isinstance(value, MetaArray):
        return "meta tensor"
    if isinstance(value, QuantizedArray):
        return f"quantized {value.dtype} tensor"
    return None


def _dtype(value: Any) -> str:
    dtype = value.dtype
    if isinstance(dtype, str):
        return dtype
    meta = dtype.metadata or {}
    return str(meta.get("torch", dtype.name))


def describe(value: Any) -> dict[str, Any] | None:
    """The layout of a kinds value (reads no data); ``None`` for anything else."""
    name = kind_name(value)
    if name is None:
        return None
    row: dict[str, Any] = {"kind": name}
    if isinstance(value, SparseArray):
        row.update(dtype=_dtype(value.values), shape=list(value.shape), nnz=value.nnz)
    elif isinstance(value, JaggedArray):
        row.update(
            dtype=_dtype(value.values),
            shape=["*" if n is None else n for n in value.shape],  # "*": the ragged one
            ragged_idx=value.ragged_idx,
            lengths=value.lengths is not None,
        )
    elif isinstance(value, NestedArray):
        row.update(dtype=_dtype(value.buffer), components=int(value.sizes.shape[0]))
    elif isinstance(value, MetaArray):
        row.update(dtype=value.dtype, shape=list(value.shape), stride=list(value.stride))
    else:
        assert isinstance(value, QuantizedArray)
        row.update(dtype=value.dtype, shape=list(value.shape), qscheme=value.qscheme)
        row["axis"] = value.axis
    return row


def parts(value: Any) -> dict[str, Any]:
    """The arrays (or TensorRefs) a kinds value holds, by name."""
    if isinstance(value, SparseArray):
        if value.layout == "sparse_coo":
            return {"indices": value.indices, "values": value.values}
        return {
            "compressed_indices": value.compressed_indices,
            "plain_indices": value.plain_indices,
            "values": value.values,
        }
    if isinstance(value, JaggedArray):
        out = {"values": value.values, "offsets": value.offsets}
        if value.lengths is not None:
            out["lengths"] = value.lengths
        return out
    if isinstance(value, NestedArray):
        return {f"component {i}": c for i, c in enumerate(value.components)}
    if isinstance(value, QuantizedArray):
        return {"int_repr": value.int_repr(), "scale": value.scale, "zero_point": value.zero_point}
    return {}
