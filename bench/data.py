"""Deterministic pseudo-random blob contents, streamed in blocks and never held in memory whole."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterator

BLOCK = 1 << 20  # contents are defined block by block, so any block-aligned range can be regenerated
_POOL = 8 * BLOCK
_STRIDE = 2_654_435_761  # odd multiplier: block i starts at a scattered offset of the pool


class BlobSource:
    """A blob of `size` bytes defined by `seed`: block i is a 1 MiB window of a seeded 9 MiB pool.

    Generating a block is a slice (no PRNG per byte), so the client can produce GB/s; the contents
    are incompressible and differ per seed, which is all a registry can observe."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.size = size
        self._pool = random.Random(seed).randbytes(_POOL + BLOCK)
        self._digest: str | None = None

    def block(self, index: int) -> bytes:
        start = (index * _STRIDE + self.seed * 4099) % _POOL
        length = min(BLOCK, self.size - index * BLOCK)
        return self._pool[start : start + length]

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes of [start, end) in pieces of at most one block; `start` must be block-aligned."""
        end = self.size if end is None else min(end, self.size)
        if start % BLOCK:
            raise ValueError("start must be a multiple of the block size")
        for index in range(start // BLOCK, (end + BLOCK - 1) // BLOCK):
            data = self.block(index)
            over = (index * BLOCK + len(data)) - end
            yield data[: len(data) - over] if over > 0 else data

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        for data in self.blocks(start, end):
            yield data

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for data in self.blocks():
                h.update(data)
            self._digest = f"sha256:{h.hexdigest()}"
        return self._digest
