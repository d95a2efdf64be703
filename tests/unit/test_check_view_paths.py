"""check_view's call-free paths for 0-, 1- and 2-d views give exactly what its general path
gives (the general path is taken for lists), values and errors alike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pthfmt.errors import PthError
from pthfmt.model.dtypes import by_name
from pthfmt.model.tensor import INTP_MAX, check_view

_INTS = st.one_of(
    st.integers(0, 9), st.integers(-3, INTP_MAX + 3), st.sampled_from([0, 1, INTP_MAX, 2**62])
)


def _outcome(dtype: str, nbytes: int, offset: int, shape: object, stride: object) -> object:
    try:
        out = check_view(by_name(dtype), nbytes, offset, shape, stride, "0")
    except PthError as exc:
        return type(exc), exc.message, exc.code
    return out[0], tuple(out[1]), tuple(out[2])


@given(
    st.sampled_from(["uint8", "float32", "float64", "complex128"]),
    st.integers(0, 1 << 12),
    st.integers(0, 64),
    st.integers(0, 2).flatmap(
        lambda n: st.tuples(
            st.lists(_INTS, min_size=n, max_size=n), st.lists(_INTS, min_size=n, max_size=n)
        )
    ),
)
def test_fast_paths_agree_with_the_general_path(dtype, nbytes, offset, dims) -> None:
    shape, stride = dims
    fast = _outcome(dtype, nbytes, offset, tuple(shape), tuple(stride))
    general = _outcome(dtype, nbytes, offset, list(shape), list(stride))
    assert fast == general
