"""ES256 registry tokens (JWT): signing keys, issuing, and the offline checks a registry makes.

A token carries `iss`, `sub` ("" for anonymous), `aud` (the service), `exp`, `nbf`, `iat`, `jti` and
`access` (the granted resource scopes); its header names the signing key by `kid`. Only ES256 is
accepted: `alg: none`, HMAC and RSA tokens are refused before any signature check.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.core.auth.scopes import AccessKey, ResourceScope, ScopeInvalidError, access_from_claim

ALGORITHM = "ES256"
CLOCK_SKEW_SECONDS = 10
KEY_CLAIM = "hzr_key"
"""Private claim: the prefix of the API key the token was obtained with (not secret)."""


class TokenInvalidError(Exception):
    """A token that must not be honoured; `reason` says why (for logs and the audit trail)."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An ECDSA P-256 key. It signs while `now < active_until`, and verifies until `retire_after`
    (when every token it signed has expired)."""

    kid: str
    private_pem: bytes
    created: float
    active_until: float
    retire_after: float
    _private: ec.EllipticCurvePrivateKey | None = field(default=None, compare=False, repr=False)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        if self._private is not None:
            return self._private
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {self.kid} is not an EC key")
        object.__setattr__(self, "_private", key)
        return key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key().public_key()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """A stable id for a public key: base32 of the SHA-256 of its DER form (libtrust style, shorter)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b32encode(hashlib.sha256(der).digest()[:20]).decode().rstrip("=")


def new_signing_key(*, now: float, active_seconds: float, max_token_seconds: float) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(
        kid=key_id(private.public_key()),
        private_pem=pem,
        created=now,
        active_until=now + active_seconds,
        retire_after=now + active_seconds + max_token_seconds + CLOCK_SKEW_SECONDS,
        _private=private,
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: Mapping[str, Any]
    expires_in: int
    issued_at: float


def issue_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    access: Sequence[ResourceScope],
    ttl_seconds: int,
    now: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> IssuedToken:
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": issued + ttl_seconds,
        "nbf": issued - CLOCK_SKEW_SECONDS,
        "iat": issued,
        "jti": uuid.uuid4().hex,
        "access": [scope.to_claim() for scope in access],
        **(extra or {}),
    }
    token = jwt.encode(claims, key.private_key(), algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})
    return IssuedToken(token, claims, ttl_seconds, float(issued))


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    access: Mapping[AccessKey, frozenset[str]]
    claims: Mapping[str, Any]
    expired: bool = False

    def actions_on(self, kind: str, name: str) -> frozenset[str]:
        return self.access.get((kind, name), frozenset())


def token_header(token: str) -> Mapping[str, Any]:
    try:
        header: Mapping[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalidError(f"malformed token: {exc}") from None
    return header


def verify_token(
    token: str,
    *,
    public_keys: Mapping[str, ec.EllipticCurvePublicKey],
    issuer: str,
    audience: str,
    now: float | None = None,
    allow_expired: bool = False,
) -> VerifiedToken:
    """Check a token offline: ES256 only, a known `kid`, the signature, `iss`, `aud` contains us,
    `nbf <= now < exp` (with CLOCK_SKEW_SECONDS of leeway), and a well-formed `access` claim.
    With `allow_expired`, an expired but otherwise valid token is returned with `expired=True`.
    Raises TokenInvalidError."""
    header = token_header(token)
    if header.get("alg") != ALGORITHM:
        raise TokenInvalidError(f"algorithm {str(header.get('alg'))[:20]!r} is not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in public_keys:
        raise TokenInvalidError("token is signed by an unknown key")
    moment = time.time() if now is None else now
    # Times are checked below against `now` (injectable), not by PyJWT against the wall clock.
    options: jwt.types.Options = {
        "require": ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"],
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_keys[kid],
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options=options,
            leeway=CLOCK_SKEW_SECONDS,
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalidError(f"token rejected: {exc}") from None
    exp, nbf, iat = claims["exp"], claims["nbf"], claims["iat"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf, iat))
    if not numbers or not isinstance(claims["sub"], str):
        raise TokenInvalidError("token has malformed claims")
    if moment + CLOCK_SKEW_SECONDS < nbf or moment + CLOCK_SKEW_SECONDS < iat:
        raise TokenInvalidError("token is not valid yet")
    expired = moment >= exp + CLOCK_SKEW_SECONDS
    if expired and not allow_expired:
        raise TokenInvalidError("token has expired", expired=True)
    try:
        access = access_from_claim(claims.get("access"))
    except ScopeInvalidError as exc:
        raise TokenInvalidError(f"token access claim: {exc}") from None
    return VerifiedToken(subject=claims["sub"], access=access, claims=claims, expired=expired)
