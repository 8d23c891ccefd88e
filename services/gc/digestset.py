"""A compact, immutable set of digests for a run's mark phase (pure).

A full run holds the digests every kept manifest references and the digests some repository links: a million
or more. As Python sets of str they cost ~150 bytes each; here each is a 32-byte key in one sorted buffer
(sha256 digests: their raw bytes; any other digest: a personalised BLAKE2b of its text. Not the SHA-256 of
it: that equals the digest of a blob whose bytes are that text, which a user can push. A collision could only
make the run keep a blob, never lose one), and membership is a binary search.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections.abc import Iterable, Iterator

KEY = 32
_CHUNK = 1 << 13
_SHA256 = "sha256:"


def key_of(digest: str) -> bytes:
    if len(digest) == 71 and digest.startswith(_SHA256):
        try:
            return bytes.fromhex(digest[7:])
        except ValueError:
            pass
    return hashlib.blake2b(digest.encode(), digest_size=KEY, person=b"hzr-digestset").digest()


class _Keys:
    """The buffer as a sequence of keys, for bisect."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def __len__(self) -> int:
        return len(self.buf) // KEY

    def __getitem__(self, i: int) -> bytes:
        return self.buf[i * KEY : (i + 1) * KEY]


class DigestSet:
    __slots__ = ("_keys",)

    def __init__(self, buf: bytes = b"") -> None:
        self._keys = _Keys(buf)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str):
            return False
        key = key_of(digest)
        i = bisect.bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def __iter__(self) -> Iterator[bytes]:
        """The keys, ascending."""
        for i in range(len(self._keys)):
            yield self._keys[i]

    @property
    def nbytes(self) -> int:
        return len(self._keys.buf)


class DigestSetBuilder:
    """Collects digests in any order, with duplicates; sorts in chunks of 8,192 keys, so the transient cost
    is one chunk's objects beside the packed chunks, and no sort holds the caller's event loop for more than
    a few milliseconds (the final merge is long: run `build` in a thread)."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._chunks: list[bytes] = []

    def add(self, digest: str) -> None:
        self._pending.append(key_of(digest))
        if len(self._pending) >= _CHUNK:
            self._pack()

    def update(self, digests: Iterable[str]) -> None:
        for d in digests:
            self.add(d)

    def _pack(self) -> None:
        self._chunks.append(b"".join(sorted(set(self._pending))))
        self._pending = []

    def build(self) -> DigestSet:
        if self._pending:
            self._pack()
        chunks, self._chunks = self._chunks, []
        if len(chunks) == 1:
            return DigestSet(chunks[0])
        out = bytearray()
        last = b""
        for key in heapq.merge(*(DigestSet(c) for c in chunks)):
            if key != last:
                out += key
                last = key
        return DigestSet(bytes(out))
