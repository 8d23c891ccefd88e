"""Content digests: the `Digest` value type and a streaming `Digester`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from services.core.errors import DigestInvalidError

_GRAMMAR: Final = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_ENCODED: Final = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
SUPPORTED_ALGORITHMS: Final = frozenset(_ENCODED)


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """`algorithm:hex`, validated on construction. Only algorithms we can verify are accepted."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not _GRAMMAR.fullmatch(text):
            raise DigestInvalidError(f"invalid digest {text[:200]!r}: expected <algorithm>:<hex>")
        algorithm, _, encoded = text.partition(":")
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise DigestInvalidError(
                f"unsupported digest algorithm {algorithm!r}: use one of {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if not pattern.fullmatch(encoded):
            raise DigestInvalidError(f"invalid {algorithm} digest {text[:200]!r}: wrong length or not lowercase hex")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class Digester:
    """Hashes a stream as it passes; `digest()` may be called at any time."""

    __slots__ = ("_hash", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise DigestInvalidError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


EMPTY_JSON_DIGEST: Final = Digest.parse("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
