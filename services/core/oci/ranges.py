"""Byte ranges: RFC 9110 `Range` on blob GET and the inclusive `Content-Range` of chunked uploads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from services.core.errors import RangeInvalidError

# Digit runs are bounded so int() never meets Python's 4300-digit conversion limit; no blob is that big.
_RANGE_SPEC: Final = re.compile(r"([0-9]{0,1000})-([0-9]{0,1000})")
_CONTENT_RANGE: Final = re.compile(r"([0-9]{1,1000})-([0-9]{1,1000})(?:/(?:[0-9]{1,1000}|\*))?")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes `start` through `end_inclusive` of a blob."""

    start: int
    end_inclusive: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end_inclusive:
            raise ValueError(f"invalid byte range {self.start}-{self.end_inclusive}")

    @property
    def length(self) -> int:
        return self.end_inclusive - self.start + 1

    def content_range(self, size: int) -> str:
        """The `Content-Range` value of a 206 response."""
        return f"bytes {self.start}-{self.end_inclusive}/{size}"


class RangeNotSatisfiableError(RangeInvalidError):
    """416: no requested byte exists. `size` is for the `Content-Range: bytes */<size>` header."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message, detail={"size": size}, headers={"Content-Range": f"bytes */{size}"})
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


def parse_range_header(value: str | None, size: int) -> ByteRange | None:
    """The single byte range a GET asks for, clipped to the blob; None means send the whole blob.

    As RFC 9110 allows, a header we do not honour is ignored rather than refused: absent, another
    unit, malformed, or several ranges (multipart responses are not worth their complexity for
    blobs). Raises RangeNotSatisfiableError when the range starts at or past the end.
    """
    if value is None:
        return None
    unit, sep, range_set = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in range_set.split(",") if s.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None or match.group(0) == "-":
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(
                f"range {specs[0]!r} selects no bytes of a {size}-byte blob", size=size
            )
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        # aiohttp's sendfile path answers 416 here; the streaming path must agree with it.
        raise RangeNotSatisfiableError(f"range {specs[0]!r} ends before it starts", size=size)
    if start >= size:
        raise RangeNotSatisfiableError(
            f"range {specs[0]!r} starts at or past the end of a {size}-byte blob", size=size
        )
    end = size - 1 if not last else min(int(last), size - 1)
    return ByteRange(start, end)


def parse_content_range(value: str) -> tuple[int, int]:
    """`start-end` (inclusive) of an upload chunk. Tolerates the `bytes ` / `bytes=` prefixes and a
    `/total` suffix some clients send; RangeInvalidError otherwise."""
    text = value.strip()
    if text[:6].lower() in ("bytes ", "bytes="):
        text = text[6:].strip()
    match = _CONTENT_RANGE.fullmatch(text)
    if match is None:
        raise RangeInvalidError(f"invalid Content-Range {value[:100]!r}: expected <start>-<end>")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeInvalidError(f"invalid Content-Range {value[:100]!r}: end is before start")
    return start, end
