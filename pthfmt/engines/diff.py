"""``diff`` as data: :func:`diff` compares two checkpoints the way
``model.load_state_dict(strict=True)`` would see B loaded into a model like A, and compares
the values with numpy ``isclose`` tolerances; it returns a :class:`DiffResult`.

- Keys only in A (missing when B is loaded), only in B (unexpected), entries whose shape,
  dtype or kind (tensor against value) differ (:attr:`DiffResult.mismatched`), and entries
  whose values differ beyond ``atol + rtol * |b|`` (:attr:`DiffResult.different`, with the
  largest absolute and relative difference and how many elements are not close).
- Tensors are compared chunk by chunk from the mapped files (bounded memory); in their own
  dtype when both have it (bit-exact for packed and ``bits`` dtypes), else in float64 (or
  complex128).  NaNs at the same places are equal.
- Keys are :func:`pthfmt.engines.tree.leaves`'s key paths (the one walker), after removing
  the first matching ``strip`` prefix.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PthError
from ..model.kinds import as_array
from ..model.tensor import ReadBudget, TensorRef
from .kinds import EXACT_PARTS, describe, kind_name, parts
from .tree import Failure, leaves, open_stubbed, plain, subtree

__all__ = ["diff", "DiffResult", "Side", "compare_values", "compare", "open_side", "diff_summary"]

_CHUNK_ELEMENTS = 1 << 20
#: Prefix hints consider a key's first this many dots (so that they cost linear time).
_HINT_DOTS = 8


# -- tensors ------------------------------------------------------------------------------------


@dataclass
class Closeness:
    """How two equal-shaped tensors compare: ``equal`` (within tolerance), the largest
    absolute and relative (``|a - b| / |b|``) differences of the elements not exactly equal
    (``None``: compared bit for bit only), and how many elements are not close."""

    equal: bool = True
    max_abs: float | None = 0.0
    max_rel: float | None = 0.0
    not_close: int = 0


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


def _worst(old: float | None, new: float) -> float:
    if old is None or math.isnan(new):
        return new
    return old if math.isnan(old) else max(old, new)


def _chunk(cx: Any, cy: Any, complex_: bool, atol: float, rtol: float, out: Closeness) -> None:
    """Compare one chunk in float64/complex128, updating ``out``."""
    if cx.dtype == cy.dtype and cx.dtype.kind in "iub" and np.array_equal(cx, cy):
        return
    fx, fy = _as_numbers(np.asarray(cx), complex_), _as_numbers(np.asarray(cy), complex_)
    same = (fx == fy) | (np.isnan(fx) & np.isnan(fy))
    if same.all():
        return
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        dx, dy = fx[~same], fy[~same]
        delta = np.abs(dx - dy)
        scale = np.abs(dy)
        close = delta <= atol + rtol * scale
        rel = delta / scale
    bad = int(np.count_nonzero(~close))
    out.not_close += bad
    out.equal = out.equal and bad == 0
    out.max_abs = _worst(out.max_abs, float(np.nan if np.isnan(delta).any() else delta.max()))
    out.max_rel = _worst(out.max_rel, float(np.nan if np.isnan(rel).any() else rel.max()))


def compare_values(
    a: TensorRef,
    b: TensorRef,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    budget: ReadBudget | None = None,
) -> Closeness:
    """Compare two equal-shaped tensors chunk by chunk (bounded memory), with numpy
    ``isclose`` semantics (``|a - b| <= atol + rtol * |b|``, equal NaNs equal).  A view that
    repeats its storage (stride 0) beyond :class:`~pthfmt.model.tensor.ReadBudget`'s bound
    is a ``LimitError``; ``budget`` is the whole diff's (else these two views' own)."""
    budget = budget if budget is not None else ReadBudget()
    budget.charge(a)
    budget.charge(b)
    x, y = a.numpy(mmap=True), b.numpy(mmap=True)
    out = Closeness()
    if x.dtype.metadata or y.dtype.metadata:  # packed and bits dtypes: the bits only
        same = all(np.array_equal(cx, cy) for cx, cy in zip(_chunks(x), _chunks(y)))
        return Closeness(same, None, None, 0 if same else -1)
    complex_ = "complex" in (a.dtype_info.kind, b.dtype_info.kind)
    for cx, cy in zip(_chunks(x), _chunks(y)):
        _chunk(cx, cy, complex_, atol, rtol, out)
    return out


# -- the sides ----------------------------------------------------------------------------------


@dataclass
class Side:
    """One input of a diff: its file, the ``key`` and ``strip`` prefixes used, its entries
    by (stripped) key path, and the root object (for hints)."""

    file: str
    key: str | None
    strip: list[str]
    entries: dict[str, Any]
    root: Any = None

    def to_dict(self) -> dict[str, Any]:
        tensors = sum(isinstance(v, TensorRef) for v in self.entries.values())
        return {
            "file": self.file,
            "key": self.key,
            "strip": list(self.strip),
            "tensors": tensors,
            "entries": len(self.entries),
        }


def _strips(strip: str | Sequence[str] | None) -> list[str]:
    if strip is None:
        return []
    if isinstance(strip, str):
        return [strip]
    if not all(isinstance(s, str) for s in strip):
        raise TypeError("strip prefixes must be strings")
    return list(strip)


class _Sharded:
    """A sharded checkpoint as one side of a diff: its tensors by key; :meth:`close` closes
    every shard."""

    def __init__(self, index: str) -> None:
        from ..sharded import ShardedCheckpoint

        # (classes as stubs, as for one file; a remote index's shards opened here too)
        self._sharded = ShardedCheckpoint(index, unknown="stub")
        self._sharded.open_all()
        self.obj: dict[str, TensorRef] = dict(self._sharded.refs)

    def close(self) -> None:
        for shard in self._sharded.shards.values():
            shard.close()


def open_side(path: str, key: str | None, strip: list[str]) -> tuple[Any, Side]:
    """Open ``path`` (unknown classes as stubs; a shard index or a model folder as one
    mapping of its tensors) and take its leaves under ``key`` with the first matching prefix
    of ``strip`` removed (the first leaf of a key wins).  Returns the open checkpoint (close
    it after comparing values) and the :class:`Side`."""
    from ..formats.sharding import resolve_folder
    from ..sharded import is_index

    target = resolve_folder(path)
    ck = _Sharded(target) if is_index(target) else open_stubbed(target)
    try:
        root = subtree(ck.obj, key)
        entries: dict[str, Any] = {}
        for k, v in leaves(root):
            for prefix in strip:
                if prefix and k.startswith(prefix):
                    k = k[len(prefix) :]
                    break
            entries.setdefault(k, v)
    except Failure as exc:
        ck.close()
        raise PthError(str(exc)) from None
    except BaseException:
        ck.close()
        raise
    return ck, Side(path, key, strip, entries, ck.obj if not key else None)


# -- the result ---------------------------------------------------------------------------------


@dataclass
class DiffResult:
    """What :func:`diff` found.

    - ``only_a``: keys only in A (missing when B is loaded into a model like A);
      ``only_b``: keys only in B (unexpected);
    - ``mismatched``: ``{"key", "what": "shape" | "dtype" | "kind", "a", "b"}`` for entries
      in both whose shape, dtype, or kind (tensor against value; sparse against jagged...)
      differ; for quantized, sparse, nested, jagged and meta tensors also any other field of
      their layout (``nnz``, ``ragged_idx``, ``layout``..., see
      :func:`pthfmt.engines.kinds.describe`) or a part's shape (``"values shape"``);
    - ``different``: entries whose values differ beyond the tolerance: tensors as ``{"key",
      "dtype", "shape", "max_abs_diff", "max_rel_diff", "not_close"}`` (the kinds add
      ``"kind"``: every part compared, indices and offsets exactly), other values as
      ``{"key", "a", "b"}``;
    - ``equal``: how many common entries are equal within the tolerance.

    ``ok``: ``load_state_dict(strict=True)`` would accept B (same keys, shapes and kinds; a
    dtype difference is cast, so it is listed but allowed) and every value is within
    tolerance.  ``identical`` also requires equal dtypes.
    """

    a: Side
    b: Side
    atol: float = 0.0
    rtol: float = 0.0
    values_compared: bool = True
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    different: list[dict[str, Any]] = field(default_factory=list)
    equal: int = 0
    hints: list[str] = field(default_factory=list)
    #: what comparing every element of the views costs, all pairs together
    budget: ReadBudget = field(default_factory=ReadBudget, repr=False, compare=False)

    @property
    def loadable(self) -> bool:
        """Whether ``load_state_dict(strict=True)`` would accept B in a model like A."""
        return not (
            self.only_a or self.only_b or any(m["what"] != "dtype" for m in self.mismatched)
        )

    @property
    def ok(self) -> bool:
        return self.loadable and not self.different

    @property
    def identical(self) -> bool:
        return self.ok and not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "atol": self.atol,
            "rtol": self.rtol,
            "values_compared": self.values_compared,
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "mismatched": [dict(m) for m in self.mismatched],
            "different": [dict(d) for d in self.different],
            "equal": self.equal,
            "hints": list(self.hints),
            "load_state_dict_strict_ok": self.loadable,
            "ok": self.ok,
            "identical": self.identical,
        }


def _float(value: float | None) -> Any:
    return None if value is None else plain(value)


def _kind(value: Any) -> str:
    if isinstance(value, TensorRef):
        return "tensor"
    return kind_name(value) or type(value).__name__


def _compare_kinds(result: DiffResult, k: str, va: Any, vb: Any) -> None:
    """Two quantized/sparse/nested/jagged/meta values: their layouts must match, then each
    part (indices exactly, values within the tolerances) is compared."""
    da, db = describe(va), describe(vb)
    if da is None or db is None or da["kind"] != db["kind"]:
        result.mismatched.append({"key": k, "what": "kind", "a": _kind(va), "b": _kind(vb)})
        return
    for what in da:
        if da[what] != db[what]:
            result.mismatched.append({"key": k, "what": what, "a": da[what], "b": db[what]})
            return
    if not result.values_compared:
        return
    pa, pb = parts(va), parts(vb)
    worst = Closeness()
    for name, xa in pa.items():
        x, y = np.asarray(as_array(xa)), np.asarray(as_array(pb[name]))
        if x.shape != y.shape:
            result.mismatched.append(
                {"key": k, "what": f"{name} shape", "a": list(x.shape), "b": list(y.shape)}
            )
            return
        exact = name in EXACT_PARTS
        found = _compare_arrays(x, y, 0.0 if exact else result.atol, 0.0 if exact else result.rtol)
        worst.equal &= found.equal
        worst.not_close += found.not_close
        for field_ in ("max_abs", "max_rel"):
            mine, theirs = getattr(worst, field_), getattr(found, field_)
            setattr(worst, field_, None if mine is None or theirs is None else max(mine, theirs))
    if worst.equal:
        result.equal += 1
        return
    result.different.append(
        {
            "key": k,
            "dtype": da.get("dtype"),
            "kind": da["kind"],
            "shape": da.get("shape"),
            "max_abs_diff": _float(worst.max_abs),
            "max_rel_diff": _float(worst.max_rel),
            "not_close": worst.not_close,
        }
    )


def _raw(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).tobytes()


def _compare_arrays(x: np.ndarray, y: np.ndarray, atol: float, rtol: float) -> Closeness:
    """:func:`compare_values` of two equal-shaped arrays."""
    if x.dtype.metadata or y.dtype.metadata or x.dtype.kind not in "biufc":
        same = x.dtype == y.dtype and _raw(x) == _raw(y)
        return Closeness(same, None, None, 0 if same else -1)
    out = Closeness()
    complex_ = "c" in (x.dtype.kind, y.dtype.kind)
    for cx, cy in zip(_chunks(x), _chunks(y)):
        _chunk(cx, cy, complex_, atol, rtol, out)
    return out


def _close_values(va: Any, vb: Any, atol: float, rtol: float) -> bool:
    pa, pb = plain(va), plain(vb)
    if pa == pb:
        return True
    numbers = (int, float)
    if isinstance(va, numbers) and isinstance(vb, numbers):
        if isinstance(va, bool) or isinstance(vb, bool):
            return False
        fa, fb = float(va), float(vb)
        if math.isnan(fa) and math.isnan(fb):
            return True
        return abs(fa - fb) <= atol + rtol * abs(fb)
    return False


def _compare_tensors(result: DiffResult, k: str, va: TensorRef, vb: TensorRef) -> None:
    if va.shape != vb.shape:
        result.mismatched.append(
            {"key": k, "what": "shape", "a": list(va.shape), "b": list(vb.shape)}
        )
        return
    if va.dtype != vb.dtype:
        result.mismatched.append({"key": k, "what": "dtype", "a": va.dtype, "b": vb.dtype})
    if not result.values_compared:
        return
    try:
        found = compare_values(va, vb, atol=result.atol, rtol=result.rtol, budget=result.budget)
    except PthError as exc:
        raise exc.locate(key_path=k) from None
    if found.equal:
        result.equal += 1
        return
    result.different.append(
        {
            "key": k,
            "dtype": va.dtype if va.dtype == vb.dtype else f"{va.dtype}/{vb.dtype}",
            "shape": list(va.shape),
            "max_abs_diff": _float(found.max_abs),
            "max_rel_diff": _float(found.max_rel),
            "not_close": found.not_close,
        }
    )


def compare(
    a: Side, b: Side, *, atol: float = 0.0, rtol: float = 0.0, values: bool = True
) -> DiffResult:
    """Compare two opened sides (see :class:`DiffResult`)."""
    if not (atol >= 0 and rtol >= 0):  # also refuses NaN
        raise ValueError(f"atol and rtol must be 0 or more (got atol={atol}, rtol={rtol})")
    result = DiffResult(a, b, float(atol), float(rtol), values)
    result.only_a = [k for k in a.entries if k not in b.entries]
    result.only_b = [k for k in b.entries if k not in a.entries]
    for k, va in a.entries.items():
        if k not in b.entries:
            continue
        vb = b.entries[k]
        ta, tb = isinstance(va, TensorRef), isinstance(vb, TensorRef)
        if kind_name(va) or kind_name(vb):
            if ta or tb:
                result.mismatched.append({"key": k, "what": "kind", "a": _kind(va), "b": _kind(vb)})
            else:
                _compare_kinds(result, k, va, vb)
        elif ta != tb:
            result.mismatched.append({"key": k, "what": "kind", "a": _kind(va), "b": _kind(vb)})
        elif ta:
            _compare_tensors(result, k, va, vb)
        elif _close_values(va, vb, atol, rtol):
            result.equal += 1
        else:
            result.different.append({"key": k, "a": plain(va), "b": plain(vb)})
    result.hints = [
        h
        for h in (
            _prefix_hint(result.only_a, result.only_b, "b", b.root),
            _prefix_hint(result.only_b, result.only_a, "a", a.root),
        )
        if h
    ]
    return result


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    strip_a: str | Sequence[str] | None = None,
    strip_b: str | Sequence[str] | None = None,
    key_a: str | None = None,
    key_b: str | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> DiffResult:
    """Compare checkpoint ``b`` with ``a`` as ``load_state_dict(strict=True)`` would see B
    loaded into a model like A, and their values within ``atol``/``rtol`` (numpy
    ``isclose``: ``|a - b| <= atol + rtol * |b|``).

    ``key_a``/``key_b`` compare only the entry under that dotted key (``"model_state_dict"``);
    ``strip_a``/``strip_b`` remove a key prefix (or the first matching of several:
    ``"module."``).  Raises :class:`~pthfmt.PthError` for a damaged file or a key that is
    not there, ``OSError`` for a file that cannot be read.
    """
    ck_a, side_a = open_side(os.fspath(a), key_a, _strips(strip_a))
    try:
        ck_b, side_b = open_side(os.fspath(b), key_b, _strips(strip_b))
        try:
            return compare(side_a, side_b, atol=atol, rtol=rtol)
        finally:
            ck_b.close()
    finally:
        ck_a.close()


def diff_summary(
    a_path: str,
    b_path: str,
    *,
    key_a: str | None = None,
    key_b: str | None = None,
    strip_a: Sequence[str] = (),
    strip_b: Sequence[str] = (),
    values: bool = True,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> dict[str, Any]:
    """:func:`diff` as a dict (:meth:`DiffResult.to_dict`); errors become
    :class:`~pthfmt.engines.tree.Failure` naming the file (for the command line)."""
    opened = []
    try:
        sides = []
        for path, key, strip in ((a_path, key_a, strip_a), (b_path, key_b, strip_b)):
            ck, side = _guarded(path, lambda p=path, k=key, s=strip: open_side(p, k, list(s)))
            opened.append(ck)
            sides.append(side)
        where = f"{a_path} / {b_path}"
        result: DiffResult = _guarded(
            where, lambda: compare(sides[0], sides[1], atol=atol, rtol=rtol, values=values)
        )
        return result.to_dict()
    finally:
        for ck in opened:
            ck.close()


def _guarded(where: str, func: Any) -> Any:
    try:
        return func()
    except PthError as exc:
        raise Failure(f"{where}: {exc}") from None
    except OSError as exc:
        raise Failure(f"{where}: {exc.strerror or exc}", usage=True) from None


def _prefix_hint(mine: list[str], theirs: list[str], side: str, root: Any) -> str | None:
    """If most of ``mine`` appear in ``theirs`` under one prefix, the option that strips it.
    Only a key's first :data:`_HINT_DOTS` dots are tried (linear in the keys' length)."""
    if not mine or not theirs:
        return None
    wanted = set(mine)
    found: Counter[str] = Counter()
    for key in theirs:
        dot = key.find(".")
        for _ in range(_HINT_DOTS):
            if dot < 0:
                break
            if key[dot + 1 :] in wanted:
                found[key[: dot + 1]] += 1
                break
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
