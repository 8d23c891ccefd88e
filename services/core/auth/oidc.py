"""External identity through OpenID Connect: verifying the IdP's tokens (pure) and fetching its discovery
document and JWKS (OidcProvider, cached).

Verification (`verify_idp_token`, `identity_of`) takes the keys, the issuer, the audiences and the time
as arguments and does no I/O. It accepts RS256, ES256 and EdDSA only (an explicit allow-list: never
`none`, never an HMAC, whose "secret" could be the public key), and only with a key of the matching type
from the JWKS; it checks `iss`, `aud`, `exp` and `nbf` with LEEWAY_SECONDS of clock skew.

Fetching (`OidcProvider`): discovery from `<issuer>/.well-known/openid-configuration` (its `issuer` must
be the configured one), the JWKS from its `jwks_uri`; both cached for an hour, and the JWKS refetched
when a token names an unknown `kid`, at most once per `auth.oidc.jwks_refetch_seconds`. The issuer comes
from the settings file, so it is trusted, and may be on loopback.

Names: the user name is the `username_claim` (default `preferred_username`), else `sub`; a group becomes
the team of the same name. Both are fitted to the user/team-name grammar by `fit_name`: lower-cased, every
run of other characters replaced by `-`, leading/trailing separators dropped, at most 64 characters; a
group that fits nothing (no letter or digit) is ignored, and a user name that fits nothing (or is
reserved) falls back to `sub`, else the login is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt

from services.core.auth.model import RESERVED_USERS, valid_team_name, valid_user_name
from services.core.settings import OidcSettings

ALGORITHMS: Mapping[str, str] = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
"""The accepted `alg` of IdP tokens and the JWK key type (`kty`) each needs."""
_CURVES: Mapping[str, frozenset[str]] = {"EC": frozenset({"P-256"}), "OKP": frozenset({"Ed25519"})}
LEEWAY_SECONDS = 30
MAX_GROUPS = 256
MAX_DOCUMENT_BYTES = 1 << 20
MAX_KEYS = 100
DISCOVERY_TTL_SECONDS = 3600.0
FETCH_TIMEOUT_SECONDS = 10.0
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")


class IdpTokenError(Exception):
    """An IdP token (or id_token) that must not be honoured; `reason` is safe to show to the caller."""

    def __init__(self, reason: str, *, unknown_key: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown_key = unknown_key


class IdpUnavailableError(Exception):
    """The identity provider's discovery document, JWKS or token endpoint could not be used."""


@dataclass(frozen=True, slots=True)
class IdpKey:
    kid: str
    kty: str
    alg: str | None
    key: Any  # a cryptography public key, as PyJWT's PyJWK made it


@dataclass(frozen=True, slots=True)
class IdpIdentity:
    """Who an IdP token names, fitted to the registry: the user name, the teams of its groups, and
    whether one of its groups is an admin group."""

    issuer: str
    subject: str
    user_name: str
    teams: tuple[str, ...]
    admin: bool
    expires: float
    ignored_groups: tuple[str, ...] = ()


# pure: shapes, keys, verification, identity


def looks_like_jwt(text: str) -> bool:
    """Three base64url segments whose first decodes to a JSON object with `alg` (a JWS compact token)."""
    parts = text.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts[:2]) or len(text) > 16384:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


def unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, unverified: only to choose which verification it gets."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def parse_jwks(document: Any) -> dict[str, IdpKey]:
    """The usable signing keys of a JWKS document by `kid` ("" for a key without one). Keys of other types,
    curves or uses are left out; a malformed document is an IdpUnavailableError."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise IdpUnavailableError("the JWKS document has no `keys` list")
    out: dict[str, IdpKey] = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty, alg, kid = jwk.get("kty"), jwk.get("alg"), jwk.get("kid", "")
        if not isinstance(kty, str) or kty not in ALGORITHMS.values() or not isinstance(kid, str):
            continue
        if kty in _CURVES and jwk.get("crv") not in _CURVES[kty]:
            continue
        if alg is not None and ALGORITHMS.get(alg) != kty:
            continue  # e.g. an RSA key published for RS512, or any HS* "key"
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        out[kid] = IdpKey(kid=kid, kty=kty, alg=alg, key=key)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_idp_token(
    token: str,
    *,
    keys: Mapping[str, IdpKey],
    issuer: str,
    audiences: Sequence[str],
    now: float,
    nonce: str | None = None,
    leeway: float = LEEWAY_SECONDS,
) -> dict[str, Any]:
    """The claims of an IdP token after every check in the module docstring (and, when given, its `nonce`).
    Raises IdpTokenError naming the first check that failed (`unknown_key` when its `kid` is not in `keys`)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise IdpTokenError("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        accepted = ", ".join(ALGORITHMS)
        raise IdpTokenError(f"algorithm {str(alg)[:20]!r} is not accepted (only {accepted})")
    # Another issuer's token is named as such before any key is looked up (only ever a refusal).
    claimed = unverified_issuer(token)
    if claimed != issuer:
        raise IdpTokenError(f"token issuer is not {issuer} (it is {str(claimed)[:100]!r})")
    kid = header.get("kid", "")
    if not isinstance(kid, str) or kid not in keys:
        raise IdpTokenError(f"token is signed by an unknown key {str(kid)[:64]!r}", unknown_key=True)
    key = keys[kid]
    if key.kty != ALGORITHMS[alg] or (key.alg is not None and key.alg != alg):
        raise IdpTokenError(f"key {kid[:64]!r} is not a {alg} key")
    # Times are checked below against `now` (injectable); PyJWT checks the signature, iss and aud.
    options: jwt.types.Options = {
        "require": ["iss", "aud", "exp", "sub"],
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[alg], audience=list(audiences), issuer=issuer, options=options
        )
    except jwt.InvalidSignatureError:
        raise IdpTokenError("token signature verification failed") from None
    except jwt.InvalidAudienceError:
        raise IdpTokenError(f"token audience is not accepted (expected one of: {', '.join(audiences)})") from None
    except jwt.InvalidIssuerError:
        raise IdpTokenError(f"token issuer is not {issuer}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise IdpTokenError(f"token has no {exc.claim!r} claim") from None
    except jwt.PyJWTError as exc:
        raise IdpTokenError(f"token rejected: {str(exc)[:200]}") from None
    exp, nbf = claims["exp"], claims.get("nbf", claims.get("iat", 0))
    if not _number(exp) or not _number(nbf) or not isinstance(claims["sub"], str) or not claims["sub"]:
        raise IdpTokenError("token has malformed claims (exp, nbf, iat or sub)")
    if now + leeway < nbf:
        raise IdpTokenError("token is not valid yet (nbf)")
    if now >= exp + leeway:
        raise IdpTokenError("token has expired")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise IdpTokenError("id_token nonce does not match the login")
    return claims


def fit_name(text: str) -> str | None:
    """`text` fitted to the user/team-name grammar (module docstring); None when nothing fits."""
    name = _NOT_NAME.sub("-", text.strip().lower()).strip("._-")
    name = name[:64].rstrip("._-")
    return name if valid_team_name(name) else None


def identity_of(
    claims: Mapping[str, Any], *, issuer: str, username_claim: str, groups_claim: str, admin_groups: Sequence[str]
) -> IdpIdentity:
    """The registry identity of verified claims. Raises IdpTokenError when no user name can be made."""
    subject = str(claims["sub"])
    user_name = None
    for candidate in (claims.get(username_claim), subject):
        fitted = fit_name(candidate) if isinstance(candidate, str) else None
        if fitted is not None and fitted not in RESERVED_USERS and valid_user_name(fitted):
            user_name = fitted
            break
    if user_name is None:
        raise IdpTokenError(f"neither {username_claim!r} nor 'sub' makes a registry user name")
    raw = claims.get(groups_claim)
    groups = [raw] if isinstance(raw, str) else [g for g in raw if isinstance(g, str)] if isinstance(raw, list) else []
    groups = [g[:256] for g in groups[:MAX_GROUPS]]
    teams: set[str] = set()
    ignored: list[str] = []
    for group in groups:
        team = fit_name(group)
        if team is None:
            ignored.append(group)
        else:
            teams.add(team)
    admin = bool(set(groups) & set(admin_groups))
    return IdpIdentity(
        issuer=issuer,
        subject=subject,
        user_name=user_name,
        teams=tuple(sorted(teams)),
        admin=admin,
        expires=float(claims["exp"]),
        ignored_groups=tuple(ignored),
    )


# fetching: discovery, JWKS, the token endpoint


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None


class OidcProvider:
    """The configured issuer: its discovery document and JWKS (cached), token verification against them,
    and the code exchange of the browser login. One per process; `close()` at shutdown."""

    def __init__(self, settings: OidcSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.issuer = settings.issuer
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = float("-inf")
        self._keys: dict[str, IdpKey] = {}
        self._keys_at = float("-inf")
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS))
        return self._session

    async def _get_json(self, url: str) -> Any:
        try:
            async with self._client().get(url, headers={"Accept": "application/json"}) as response:
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                if response.status != 200:
                    raise IdpUnavailableError(f"{url} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpUnavailableError(f"{url} could not be fetched: {type(exc).__name__}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise IdpUnavailableError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise IdpUnavailableError(f"{url} is not JSON") from None

    async def metadata(self) -> ProviderMetadata:
        """The discovery document (cached for DISCOVERY_TTL_SECONDS). Raises IdpUnavailableError."""
        if self._metadata is not None and self._clock() - self._metadata_at < DISCOVERY_TTL_SECONDS:
            return self._metadata
        doc = await self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise IdpUnavailableError(f"the discovery document does not name the issuer {self.issuer}")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IdpUnavailableError("the discovery document has no jwks_uri")

        def url(name: str) -> str | None:
            value = doc.get(name)
            return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None

        self._metadata = ProviderMetadata(self.issuer, jwks_uri, url("authorization_endpoint"), url("token_endpoint"))
        self._metadata_at = self._clock()
        return self._metadata

    async def keys(self, kid: str | None) -> Mapping[str, IdpKey]:
        """The IdP's keys: fetched when never fetched or older than DISCOVERY_TTL_SECONDS, and refetched
        when `kid` is unknown, at most once per `jwks_refetch_seconds` (a token with a made-up kid cannot
        make us hammer the IdP)."""
        if self._stale(kid):
            async with self._lock:
                if self._stale(kid):
                    metadata = await self.metadata()
                    fetched_at = self._clock()
                    self._keys_at = fetched_at  # a failed fetch is rate-limited too
                    self._keys = parse_jwks(await self._get_json(metadata.jwks_uri))
        return self._keys

    def _stale(self, kid: str | None) -> bool:
        age = self._clock() - self._keys_at
        if age >= DISCOVERY_TTL_SECONDS:
            return True
        return kid is not None and kid not in self._keys and age >= self.settings.jwks_refetch_seconds

    async def verify(self, token: str, *, audiences: Sequence[str] | None = None,
                     nonce: str | None = None) -> dict[str, Any]:
        """Verified claims of an IdP token (module docstring). IdpTokenError, IdpUnavailableError."""
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError:
            raise IdpTokenError("malformed token") from None
        keys = await self.keys(kid if isinstance(kid, str) else None)
        return verify_idp_token(
            token,
            keys=keys,
            issuer=self.issuer,
            audiences=audiences if audiences is not None else self.settings.audiences,
            now=self._clock(),
            nonce=nonce,
        )

    def identity(self, claims: Mapping[str, Any]) -> IdpIdentity:
        return identity_of(
            claims,
            issuer=self.issuer,
            username_claim=self.settings.username_claim,
            groups_claim=self.settings.groups_claim,
            admin_groups=self.settings.admin_groups,
        )

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> Mapping[str, Any]:
        """The token endpoint's answer to an authorization code (with the PKCE verifier), authenticated
        with client_id/client_secret (HTTP Basic; the client id alone for a public client)."""
        metadata = await self.metadata()
        if metadata.token_endpoint is None:
            raise IdpUnavailableError("the discovery document has no token_endpoint")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": code_verifier}
        headers = {"Accept": "application/json"}
        secret = self.settings.client_secret
        if secret is not None:
            # client_secret_basic: both parts form-encoded first (RFC 6749 section 2.3.1).
            pair = f"{quote(self.settings.client_id, safe='')}:{quote(secret.get_secret_value(), safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.settings.client_id
        try:
            async with self._client().post(metadata.token_endpoint, data=form, headers=headers) as response:
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpUnavailableError(f"the token endpoint could not be reached: {type(exc).__name__}") from None
        try:
            answer = json.loads(body) if len(body) <= MAX_DOCUMENT_BYTES else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise IdpUnavailableError(f"the token endpoint answered {status} without a JSON object")
        if status != 200:
            error = str(answer.get("error", ""))[:100]
            raise IdpTokenError(f"the identity provider refused the code ({status} {error})")
        return answer
