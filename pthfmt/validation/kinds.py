"""Checks of quantized, sparse and nested (strided and jagged) tensors that torch does not
make on load (an NJT's offsets and lengths are not checked either).

``torch.load`` rebuilds sparse tensors without checking their indices (unless
``torch.sparse.check_sparse_tensor_invariants`` is enabled) and quantized tensors without
checking their parameters, so a file can hold a sparse tensor whose ``to_dense()`` writes
out of bounds, or scales of ``nan``.  :func:`check_kind` looks at one
:mod:`pthfmt.model.kinds` value (its data read) and returns the :class:`Problem` s found;
:func:`check_tree` walks a loaded object.  Pure functions: nothing is recorded elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PthError
from ..model.kinds import (
    JaggedArray,
    NestedArray,
    QuantizedArray,
    QuantizedRef,
    SparseArray,
    as_array,
    jagged_problem,
)
from ..model.tensor import TensorRef
from ..model.tree import walk
from .codes import CODES, Problem

__all__ = ["check_kind", "check_tree"]

_INDICES, _ORDER, _QPARAMS, _NESTED = (
    "sparse.indices",
    "sparse.order",
    "quantized.qparams",
    "nested.view",
)


def _problem(code: str, message: str, key_path: str | None) -> Problem:
    return Problem(code, CODES[code].severity, message, key_path=key_path)


def check_kind(value: Any, key_path: str | None = None) -> list[Problem]:
    """The problems of one quantized, sparse or nested tensor (``[]`` for anything else)."""
    try:
        if isinstance(value, QuantizedArray):
            return _quantized(value, key_path)
        if isinstance(value, SparseArray):
            if value.layout == "sparse_coo":
                return _coo(value, key_path)
            return _compressed(value, key_path)
        if isinstance(value, NestedArray):
            _ = value.components
        if isinstance(value, JaggedArray):
            return _jagged(value, key_path)
    except PthError as exc:
        return [
            _problem(_NESTED if isinstance(value, NestedArray) else _INDICES, exc.message, key_path)
        ]
    return []


def check_tree(obj: Any) -> list[Problem]:
    """:func:`check_kind` of every quantized, sparse and nested tensor under ``obj`` (the
    reader's walk: containers, stubs, Namespaces; a quantized ``TensorRef`` included)."""
    problems: list[Problem] = []
    for path, value in walk(obj, leaves=(TensorRef, np.ndarray), want=_is_kind):
        problems += check_kind(getattr(value, "quantized", value), path or None)
    return problems


def _is_kind(value: Any) -> bool:
    return isinstance(value, (QuantizedArray, QuantizedRef, SparseArray, NestedArray, JaggedArray))


# -- jagged ------------------------------------------------------------------------------------


def _jagged(value: JaggedArray, key_path: str | None) -> list[Problem]:
    size = int(value.values.shape[value.ragged_idx - 1])
    offsets = as_array(value.offsets)
    lengths = None if value.lengths is None else as_array(value.lengths)
    problem = jagged_problem(offsets, lengths, size)
    if problem:
        return [_problem("nested.jagged", f"jagged tensor {problem}", key_path)]
    if lengths is None and (int(offsets[0]) != 0 or int(offsets[-1]) != size):
        return [
            _problem(
                "nested.jagged_span",
                f"jagged tensor offsets run from {int(offsets[0])} to {int(offsets[-1])}, "
                f"not from 0 to {size} (the ragged axis of the values) and there are no lengths",
                key_path,
            )
        ]
    return []


# -- quantized ---------------------------------------------------------------------------------


def _quantized(value: QuantizedArray, key_path: str | None) -> list[Problem]:
    problems = []
    scales = np.asarray(as_array(value.scale), np.float64).reshape(-1)
    zeros = np.asarray(as_array(value.zero_point)).reshape(-1)
    if not np.isfinite(scales).all() or not (scales > 0).all():
        bad = scales[~(np.isfinite(scales) & (scales > 0))][0]
        problems.append(
            _problem(
                _QPARAMS,
                f"quantization scale {float(bad)!r} is not a finite positive number",
                key_path,
            )
        )
    if zeros.dtype.kind == "f" and not np.isfinite(zeros).all():
        bad = zeros[~np.isfinite(zeros)][0]
        problems.append(
            _problem(_QPARAMS, f"quantization zero point {float(bad)!r} is not finite", key_path)
        )
    if value.axis is not None and not 0 <= value.axis < len(value.shape):
        problems.append(
            _problem(
                _QPARAMS,
                f"per-channel axis {value.axis} is out of range for shape {value.shape}",
                key_path,
            )
        )
    return problems


# -- sparse ------------------------------------------------------------------------------------


def _coo(value: SparseArray, key_path: str | None) -> list[Problem]:
    indices = as_array(value.indices)
    sparse_dims, nnz = indices.shape
    if not nnz:
        return []
    bounds = np.asarray(value.shape[:sparse_dims], np.int64).reshape(-1, 1)
    outside = (indices < 0) | (indices >= bounds)
    if outside.any():
        dim, col = (int(i[0]) for i in np.nonzero(outside))
        return [
            _problem(
                _INDICES,
                f"sparse_coo index {int(indices[dim, col])} of entry {col} "
                f"lies outside dimension {dim} of size {value.shape[dim]}",
                key_path,
            )
        ]
    if value.coalesced:
        flat = np.ravel_multi_index(tuple(indices), value.shape[:sparse_dims])
        if nnz > 1 and not (np.diff(flat) > 0).all():
            return [
                _problem(
                    _ORDER,
                    "sparse_coo tensor is flagged coalesced but its indices "
                    "are not sorted and unique",
                    key_path,
                )
            ]
    return []


def _compressed(value: SparseArray, key_path: str | None) -> list[Problem]:
    layout, shape = value.layout, value.shape
    compressed = as_array(value.compressed_indices).astype(np.int64)
    plain = as_array(value.plain_indices).astype(np.int64)
    if compressed.ndim != 1:
        return []  # batched: not checked
    columns = layout in ("sparse_csc", "sparse_bsc")
    values = as_array(value.values)
    block = tuple(values.shape[1:3]) if layout in ("sparse_bsr", "sparse_bsc") else (1, 1)
    outer_size, inner_size = (shape[1], shape[0]) if columns else (shape[0], shape[1])
    outer_block, inner_block = (block[1], block[0]) if columns else block
    if (
        compressed.size != outer_size // max(outer_block, 1) + 1
        or compressed[0] != 0
        or compressed[-1] != plain.size
        or (np.diff(compressed) < 0).any()
    ):
        return [
            _problem(
                _INDICES,
                f"{layout} compressed indices are not a pointer array of "
                f"{outer_size // max(outer_block, 1) + 1} entries from 0 to "
                f"{plain.size}",
                key_path,
            )
        ]
    limit = inner_size // max(inner_block, 1)
    if plain.size and ((plain < 0) | (plain >= limit)).any():
        bad = int(plain[(plain < 0) | (plain >= limit)][0])
        return [
            _problem(_INDICES, f"{layout} plain index {bad} lies outside [0, {limit})", key_path)
        ]
    steps = np.diff(plain)
    inside = np.ones(steps.size, bool)  # steps within one compressed segment
    starts = compressed[1:-1]
    inside[starts[(starts > 0) & (starts < plain.size)] - 1] = False
    if (inside & (steps <= 0)).any():
        return [
            _problem(
                _ORDER,
                f"{layout} plain indices of a compressed segment are not sorted and unique",
                key_path,
            )
        ]
    return []
