"""API keys and refresh tokens: `hzr_<prefix>_<secret>`, random, shown once, stored as a SHA-256 hash.

The secret has 256 bits of entropy, so a plain SHA-256 is a sound verifier (no stretching needed);
comparisons are constant-time (hmac.compare_digest). The prefix identifies the key (to list and
revoke it) and is not secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "hzr"
_KEY = re.compile(r"hzr_([a-z0-9]{8,32})_([A-Za-z0-9_\-]{32,128})")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str
    key: str


def generate_key() -> ParsedKey:
    """A new random key: 12 hex characters of prefix, 64 of secret."""
    prefix = secrets.token_hex(6)
    return ParsedKey(prefix, f"{KEY_PREFIX}_{prefix}_{secrets.token_hex(32)}")


def parse_key(text: str) -> ParsedKey | None:
    """The key's prefix, or None when `text` is not shaped like one of our keys."""
    match = _KEY.fullmatch(text)
    return None if match is None else ParsedKey(match.group(1), text)


def looks_like_key(text: str) -> bool:
    return text.startswith(KEY_PREFIX + "_")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def secret_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets (or their hashes)."""
    return hmac.compare_digest(a.encode(), b.encode())


def verify_key(key: str, stored_hash: str) -> bool:
    return secret_equal(hash_key(key), stored_hash)
