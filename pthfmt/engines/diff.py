"""``diff`` as data: :func:`diff_summary` (what ``load_state_dict(strict=True)`` would say about
B loaded into a model like A) and :func:`compare_values` (equal-shaped tensors, chunk by chunk).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import PthError
from ..model.tensor import TensorRef
from .tree import Failure, leaves, open_stubbed, plain, subtree

__all__ = ["diff_summary", "compare_values"]

_CHUNK_ELEMENTS = 1 << 20


def _as_numbers(arr: np.ndarray, complex_: bool) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int8)
    return arr.astype(np.complex128 if complex_ else np.float64)


def _chunks(arr: np.ndarray) -> Iterator[np.ndarray]:
    if arr.ndim == 0 or arr.size <= _CHUNK_ELEMENTS:
        yield arr
        return
    row = max(1, arr.size // arr.shape[0])
    step = max(1, _CHUNK_ELEMENTS // row)
    for i in range(0, arr.shape[0], step):
        yield arr[i : i + step]


def compare_values(a: TensorRef, b: TensorRef) -> tuple[bool, float | None]:
    """``(equal, max |a - b|)`` of two equal-shaped tensors, chunk by chunk (bounded memory).

    NaNs at the same places count as equal; the difference is ``nan`` where a NaN meets a
    number, and ``None`` for packed or bits dtypes (compared bit for bit only)."""
    x, y = a.numpy(mmap=True), b.numpy(mmap=True)
    raw = bool(x.dtype.metadata or y.dtype.metadata)
    complex_ = "complex" in (a.dtype_info.kind, b.dtype_info.kind)
    equal, worst = True, 0.0
    for cx, cy in zip(_chunks(x), _chunks(y)):
        if raw:
            if not np.array_equal(cx, cy):
                equal = False
            continue
        if cx.dtype == cy.dtype and cx.dtype.kind in "iub" and np.array_equal(cx, cy):
            continue
        fx, fy = _as_numbers(np.asarray(cx), complex_), _as_numbers(np.asarray(cy), complex_)
        nx, ny = np.isnan(fx), np.isnan(fy)
        same = (fx == fy) | (nx & ny)
        if same.all():
            continue
        equal = False
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(fx[~same] - fy[~same])
        d = float(np.nan if np.isnan(diff).any() else diff.max())
        worst = d if math.isnan(d) or math.isnan(worst) else max(worst, d)
    return equal, (None if raw else (0.0 if equal else worst))


def _side(path: str, key: str | None, strips: list[str]) -> tuple[Any, dict[str, Any]]:
    """The opened file and its leaves under ``key`` with the first matching prefix of
    ``strips`` removed (the first leaf of a key wins); errors name ``path``."""
    try:
        ck = open_stubbed(path)
        root = subtree(ck.obj, key)
        out: dict[str, Any] = {}
        for k, v in leaves(root):
            for prefix in strips:
                if prefix and k.startswith(prefix):
                    k = k[len(prefix) :]
                    break
            out.setdefault(k, v)
    except Failure as exc:
        raise Failure(f"{path}: {exc}", exc.usage) from None
    except PthError as exc:
        raise Failure(f"{path}: {exc}") from None
    except OSError as exc:
        raise Failure(f"{path}: {exc.strerror or exc}", usage=True) from None
    return ck, out


class _Found:
    """The findings of comparing the common keys, in A's order."""

    def __init__(self) -> None:
        self.shape: list[dict[str, Any]] = []
        self.dtype: list[dict[str, Any]] = []
        self.differ: list[dict[str, Any]] = []
        self.kind: list[dict[str, Any]] = []
        self.equal: list[str] = []

    def value(self, k: str, va: Any, vb: Any) -> None:
        pa, pb = plain(va), plain(vb)
        if pa == pb or (
            isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb)
        ):
            self.equal.append(k)
        else:
            self.differ.append({"key": k, "a": pa, "b": pb})

    def tensor(self, k: str, va: TensorRef, vb: TensorRef, values: bool, where: str) -> None:
        if va.shape != vb.shape:
            self.shape.append({"key": k, "a": list(va.shape), "b": list(vb.shape)})
            return
        if va.dtype != vb.dtype:
            self.dtype.append({"key": k, "a": va.dtype, "b": vb.dtype})
        if not values:
            return
        try:
            same, worst = compare_values(va, vb)
        except PthError as exc:
            raise Failure(f"{where}: reading {k}: {exc}") from None
        if same:
            self.equal.append(k)
        else:
            self.differ.append(
                {"key": k, "max_abs_diff": plain(worst), "dtype": va.dtype, "shape": list(va.shape)}
            )


def _compare(a: dict[str, Any], b: dict[str, Any], values: bool, where: str) -> _Found:
    found = _Found()
    for k, va in a.items():
        if k not in b:
            continue
        vb = b[k]
        ta, tb = isinstance(va, TensorRef), isinstance(vb, TensorRef)
        if ta != tb:
            found.kind.append(
                {
                    "key": k,
                    "a": "tensor" if ta else type(va).__name__,
                    "b": "tensor" if tb else type(vb).__name__,
                }
            )
        elif not ta:
            found.value(k, va, vb)
        else:
            found.tensor(k, va, vb, values, where)
    return found


def diff_summary(
    a_path: str,
    b_path: str,
    *,
    key_a: str | None = None,
    key_b: str | None = None,
    strip_a: Sequence[str] = (),
    strip_b: Sequence[str] = (),
    values: bool = True,
) -> dict[str, Any]:
    """What ``load_state_dict(strict=True)`` would say about B loaded into a model like A,
    and for equal-shaped tensors whether their values are equal.  Raises
    :class:`~pthfmt.engines.tree.Failure` naming the file for a bad or unreadable input."""
    ck_a, a = _side(a_path, key_a, list(strip_a))
    ck_b, b = _side(b_path, key_b, list(strip_b))
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    found = _compare(a, b, values, f"{a_path} / {b_path}")
    n_tensors = (
        sum(isinstance(v, TensorRef) for v in a.values()),
        sum(isinstance(v, TensorRef) for v in b.values()),
    )
    ck_a.close()
    ck_b.close()
    loadable = not (only_a or only_b or found.shape or found.kind)
    hints = [
        h
        for h in (
            _prefix_hint(only_a, only_b, "b", ck_b.obj if not key_b else None),
            _prefix_hint(only_b, only_a, "a", ck_a.obj if not key_a else None),
        )
        if h
    ]
    return {
        "a": {"file": a_path, "key": key_a, "strip": list(strip_a), "tensors": n_tensors[0],
              "entries": len(a)},
        "b": {"file": b_path, "key": key_b, "strip": list(strip_b), "tensors": n_tensors[1],
              "entries": len(b)},
        "only_in_a": only_a, "only_in_b": only_b, "shape_mismatch": found.shape,
        "type_mismatch": found.kind, "dtype_mismatch": found.dtype,
        "values_differ": found.differ, "equal": len(found.equal), "values_compared": values,
        "load_state_dict_strict_ok": loadable,
        "identical": loadable and not found.dtype and not found.differ,
        "hints": hints,
    }  # fmt: skip


def _prefix_hint(mine: list[str], theirs: list[str], side: str, root: Any) -> str | None:
    """If most of ``mine`` appear in ``theirs`` under one prefix, the option that strips it."""
    if not mine or not theirs:
        return None
    wanted = set(mine)
    found: Counter[str] = Counter()
    for key in theirs:
        dot = key.find(".")
        while dot >= 0:
            if key[dot + 1 :] in wanted:
                found[key[: dot + 1]] += 1
            dot = key.find(".", dot + 1)
    if not found:
        return None
    prefix, hits = found.most_common(1)[0]
    if hits * 2 < len(mine):
        return None
    option = f"--strip-{side} {prefix}"
    if root is not None:
        try:
            subtree(root, prefix[:-1])
            option = f"--key-{side} {prefix[:-1]}"
        except Failure:
            pass
    return f"{side.upper()}'s keys match under the prefix {prefix!r}: try {option}"
