"""The one strict JSON parser: each refusal with its exact message."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pthfmt.errors import FormatError
from pthfmt.formats import strictjson


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', "key 'a' appears twice in one object"),
        ("[NaN]", "NaN is not JSON"),
        ('{"x": -Infinity}', "-Infinity is not JSON"),
        ("1" * 41, "a number of 41 digits (at most 40)"),
        ("[-" + "9" * 5000 + "]", "a number of 5000 digits (at most 40)"),
        ("[1,]", "Expecting value at character 3"),
        ("[" * 100_000, "nested too deeply"),
        ('{"a\\u001b": 1, "a\\u001b": 2}', "key 'a\\x1b' appears twice in one object"),
    ],
)
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(FormatError) as info:
        strictjson.loads(text)
    assert info.value.message == message


def test_forty_digits_are_read() -> None:
    assert strictjson.loads("[" + "9" * 40 + ", -" + "9" * 40 + "]") == [10**40 - 1, 1 - 10**40]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_reads_what_json_writes(value: object) -> None:
    assert strictjson.loads(json.dumps(value)) == value
