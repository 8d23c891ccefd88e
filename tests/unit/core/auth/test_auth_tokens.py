"""Registry tokens: what is issued, and every token the registry must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from services.core.auth.scopes import ResourceScope
from services.core.auth.tokens import (
    TokenInvalidError,
    issue_token,
    new_signing_key,
    verify_token,
)

KEY = new_signing_key(now=time.time(), active_seconds=3600, max_token_seconds=300)
OTHER = new_signing_key(now=time.time(), active_seconds=3600, max_token_seconds=300)
ACCESS = [ResourceScope("repository", "team/app", ("pull", "push"))]


def issue(**overrides: object) -> str:
    args: dict[str, object] = {"issuer": "hzr", "audience": "svc", "subject": "alice", "access": ACCESS,
                               "ttl_seconds": 300}
    args.update(overrides)
    return issue_token(KEY, **args).token  # type: ignore[arg-type]


def verify(token: str, **overrides: object) -> object:
    args: dict[str, object] = {"public_keys": {KEY.kid: KEY.public_key()}, "issuer": "hzr", "audience": "svc"}
    args.update(overrides)
    return verify_token(token, **args)  # type: ignore[arg-type]


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_issued_token_claims_and_header() -> None:
    token = issue()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == KEY.kid and header["typ"] == "JWT"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"} <= set(claims)
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert claims["exp"] - claims["iat"] == 300
    verified = verify(token)
    assert verified.subject == "alice"  # type: ignore[attr-defined]
    assert verified.actions_on("repository", "team/app") == {"pull", "push"}  # type: ignore[attr-defined]


def test_forged_payload_is_refused() -> None:
    header, _, signature = issue().split(".")
    forged = {"iss": "hzr", "sub": "alice", "aud": "svc", "exp": int(time.time()) + 300, "nbf": 0,
              "iat": int(time.time()), "jti": "x", "access": [{"type": "repository", "name": "x", "actions": ["*"]}]}
    with pytest.raises(TokenInvalidError):
        verify(f"{header}.{_b64(forged)}.{signature}")


def test_alg_none_is_refused() -> None:
    claims = jwt.decode(issue(), options={"verify_signature": False})
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': KEY.kid})}.{_b64(claims)}."
    with pytest.raises(TokenInvalidError, match="algorithm"):
        verify(unsigned)


def test_hmac_with_the_public_key_is_refused() -> None:
    public_pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(issue(), options={"verify_signature": False})
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': KEY.kid})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(TokenInvalidError, match="algorithm"):
        verify(token)


def test_another_key_is_refused_even_with_our_kid() -> None:
    claims = jwt.decode(issue(), options={"verify_signature": False})
    token = jwt.encode(claims, OTHER.private_key(), algorithm="ES256", headers={"kid": KEY.kid})
    with pytest.raises(TokenInvalidError):
        verify(token)
    with pytest.raises(TokenInvalidError, match="unknown key"):
        verify(issue_token(OTHER, issuer="hzr", audience="svc", subject="a", access=[], ttl_seconds=60).token)


def test_expired_token() -> None:
    token = issue(now=time.time() - 1000)
    with pytest.raises(TokenInvalidError) as info:
        verify(token)
    assert info.value.expired
    assert verify(token, allow_expired=True).expired  # type: ignore[attr-defined]


def test_wrong_audience_issuer_and_not_yet_valid() -> None:
    with pytest.raises(TokenInvalidError):
        verify(issue(audience="elsewhere"))
    with pytest.raises(TokenInvalidError):
        verify(issue(issuer="mallory"))
    with pytest.raises(TokenInvalidError):
        verify(issue(now=time.time() + 3600))
    with pytest.raises(TokenInvalidError):
        verify("not-a-token")


def test_key_reloads_from_pem() -> None:
    from services.core.auth.tokens import SigningKey

    copy = SigningKey(KEY.kid, KEY.private_pem, KEY.created, KEY.active_until, KEY.retire_after)
    assert verify(issue_token(copy, issuer="hzr", audience="svc", subject="a", access=[], ttl_seconds=60).token)
