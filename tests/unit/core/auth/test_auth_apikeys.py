"""API keys: shape, hashing, and constant-time comparison."""

from __future__ import annotations

import hmac

import pytest

from services.core.auth import apikeys


def test_generated_keys_parse_and_verify() -> None:
    parsed = apikeys.generate_key()
    assert parsed.key.startswith(f"hzr_{parsed.prefix}_") and len(parsed.key) == 4 + 12 + 1 + 64
    assert apikeys.parse_key(parsed.key) == parsed
    stored = apikeys.hash_key(parsed.key)
    assert parsed.key not in stored and parsed.key.split("_")[2] not in stored
    assert apikeys.verify_key(parsed.key, stored)
    assert not apikeys.verify_key(parsed.key[:-1] + ("0" if parsed.key[-1] != "0" else "1"), stored)
    assert apikeys.generate_key().key != parsed.key


@pytest.mark.parametrize("text", ["", "hzr_", "hzr_ab_cd", "xyz_0123456789ab_" + "a" * 64, "hzr_UPPER123_" + "a" * 64])
def test_malformed_keys(text: str) -> None:
    assert apikeys.parse_key(text) is None


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    parsed = apikeys.generate_key()
    assert apikeys.verify_key(parsed.key, apikeys.hash_key(parsed.key))
    assert not apikeys.secret_equal("a", "b")
    assert len(calls) == 2
