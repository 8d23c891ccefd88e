"""Range and Content-Range parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import RangeInvalidError
from services.core.oci.ranges import (
    ByteRange,
    RangeNotSatisfiableError,
    parse_content_range,
    parse_range_header,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=10-", 100, ByteRange(10, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-1000", 100, ByteRange(0, 99)),
        ("bytes=50-5000", 100, ByteRange(50, 99)),
        ("bytes=99-99", 100, ByteRange(99, 99)),
        ("bytes=0-0", 1, ByteRange(0, 0)),
        ("Bytes=0-1", 10, ByteRange(0, 1)),
        (" bytes = 2-3 ", 10, ByteRange(2, 3)),
        ("bytes=2-3,", 10, ByteRange(2, 3)),
    ],
)
def test_satisfiable_ranges(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range_header(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "items=0-1",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=1-2-3",
        "bytes=0-1,3-4",
        "bytes=+1-2",
        "bytes=" + "1" * 2000 + "-",
    ],
)
def test_ignored_headers_mean_the_whole_blob(header: str | None) -> None:
    assert parse_range_header(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=5-2", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable_ranges_carry_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as exc:
        parse_range_header(header, size)
    assert isinstance(exc.value, RangeInvalidError)
    assert exc.value.code == "RANGE_INVALID"
    assert exc.value.status == 416
    assert exc.value.size == size
    assert exc.value.detail == {"size": size}
    assert exc.value.content_range == f"bytes */{size}"


def test_byte_range_value() -> None:
    r = ByteRange(10, 19)
    assert r.length == 10
    assert r.content_range(100) == "bytes 10-19/100"
    with pytest.raises(ValueError):
        ByteRange(5, 4)
    with pytest.raises(ValueError):
        ByteRange(-1, 4)


_bound = st.integers(min_value=0, max_value=10**7).map(str) | st.just("")
_spec = st.tuples(_bound, _bound).map(lambda t: f"{t[0]}-{t[1]}")


@given(st.integers(min_value=0, max_value=10**6), _spec)
def test_ranges_stay_inside_the_blob(size: int, spec: str) -> None:
    try:
        r = parse_range_header(f"bytes={spec}", size)
    except RangeNotSatisfiableError as e:
        assert e.size == size
        return
    if r is not None:
        assert 0 <= r.start <= r.end_inclusive < size
        assert r.length == r.end_inclusive - r.start + 1 <= size


@given(st.integers(min_value=0, max_value=10**6), st.text(max_size=40))
def test_arbitrary_headers_only_raise_range_errors(size: int, header: str) -> None:
    try:
        r = parse_range_header(header, size)
    except RangeNotSatisfiableError:
        return
    if r is not None:
        assert 0 <= r.start <= r.end_inclusive < size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-99", (0, 99)),
        ("100-199", (100, 199)),
        ("bytes 0-9", (0, 9)),
        ("bytes=0-9", (0, 9)),
        ("Bytes=5-5", (5, 5)),
        (" 0-9 ", (0, 9)),
        ("0-9/100", (0, 9)),
        ("bytes 0-9/*", (0, 9)),
    ],
)
def test_content_range(value: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value", ["", "bytes", "0-", "-9", "a-b", "9-0", "0 - 9", "bytes */100", "0-9/x", "1" * 1001 + "-1"]
)
def test_malformed_content_range(value: str) -> None:
    with pytest.raises(RangeInvalidError) as exc:
        parse_content_range(value)
    assert exc.value.code == "RANGE_INVALID"
    assert exc.value.status == 416


@given(st.integers(min_value=0, max_value=2**63), st.integers(min_value=0, max_value=2**63))
def test_content_range_round_trips(a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    assert parse_content_range(f"{start}-{end}") == (start, end)
    assert parse_content_range(f"bytes {start}-{end}") == (start, end)
