"""Ranged byte sources and a buffered cursor over one: parsers read model headers through it, a window at a
time, never the whole file; every read is bounded by the file's size and a byte budget."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

MIN_WINDOW: Final = 4 * 1024
DEFAULT_WINDOW: Final = 1024 * 1024
DEFAULT_BUDGET: Final = 64 * 1024 * 1024
"""Bytes a parser may read from one file (a GGUF vocabulary is megabytes; weights are never read)."""


class HeaderError(Exception):
    """A model file's header is invalid (or larger than we read): a finding of the model view, never a crash."""


class RangeSource(Protocol):
    """A file readable by byte ranges."""

    @property
    def size(self) -> int: ...

    async def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only at the end of the file)."""
        ...


@dataclass(frozen=True, slots=True)
class BytesSource:
    """A file held in memory (tests, small documents)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class StreamSource:
    """A file read by `open_range(offset, length)`, an async iterator of chunks (the content model's
    `read_blob`, the OCI client); counts what it read."""

    def __init__(self, size: int, open_range: Callable[[int, int], AsyncIterator[bytes]]) -> None:
        self._size = size
        self._open = open_range
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return self._size

    async def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self._size - offset))
        if length == 0:
            return b""
        out = bytearray()
        async for chunk in self._open(offset, length):
            out += chunk
            if len(out) >= length:
                break
        self.bytes_read += len(out)
        return bytes(out[:length])


class Cursor:
    """Sequential reads over a RangeSource through a window buffer. `take` reads, `skip` moves on without
    reading (weights, vocabularies we do not keep). The window starts small, doubles (up to `window`) while
    reads follow each other, and starts small again after a skip (the head of the next tensor after its
    data). HeaderError past the end or over the byte budget."""

    def __init__(self, source: RangeSource, *, offset: int = 0, window: int = DEFAULT_WINDOW,
                 budget: int = DEFAULT_BUDGET, little_endian: bool = True) -> None:
        self.source = source
        self.pos = offset
        self.window = window
        self._next_window = MIN_WINDOW
        self.budget = budget
        self.fetched = 0
        self.order = "<" if little_endian else ">"
        self._buf = b""
        self._buf_start = 0

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def remaining(self) -> int:
        return self.source.size - self.pos

    def _need(self, n: int) -> None:
        if n < 0 or n > self.remaining:
            raise HeaderError(f"truncated: needs {n} bytes at offset {self.pos}, the file has {self.remaining} left")

    async def take(self, n: int) -> bytes:
        self._need(n)
        start = self.pos - self._buf_start
        if start >= 0 and start + n <= len(self._buf):
            self.pos += n
            return self._buf[start : start + n]
        if self.pos == self._buf_start + len(self._buf):
            self._next_window = min(self._next_window * 2, self.window)
        else:
            self._next_window = MIN_WINDOW
        length = min(max(n, self._next_window), self.remaining)
        if self.fetched + length > self.budget:
            raise HeaderError(f"the header is larger than the {self.budget} bytes read for it")
        data = await self.source.read(self.pos, length)
        self.fetched += len(data)
        if len(data) < n:
            raise HeaderError(f"truncated: short read at offset {self.pos}")
        self._buf, self._buf_start = data, self.pos
        self.pos += n
        return data[:n]

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    async def unpack(self, fmt: str) -> tuple[int | float | bool, ...]:
        full = self.order + fmt
        return struct.unpack(full, await self.take(struct.calcsize(full)))

    async def u8(self) -> int:
        return (await self.take(1))[0]

    async def u32(self) -> int:
        return int((await self.unpack("I"))[0])

    async def u64(self) -> int:
        return int((await self.unpack("Q"))[0])

    async def varint(self) -> int:
        """A protobuf base-128 varint (at most 10 bytes)."""
        result = 0
        for shift in range(0, 70, 7):
            byte = await self.u8()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
        raise HeaderError(f"varint longer than 10 bytes at offset {self.pos}")
