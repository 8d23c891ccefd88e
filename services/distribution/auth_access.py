"""`auth.mode: token`: the AccessControl of the OCI API over AuthService, and the audit middleware.

Credentials on /v2 (and /v1/registry): `Authorization: Bearer <registry token>` (checked offline
against the signing keys; its `access` claim bounds what it may do), `Bearer <API key>`, or `Basic`
with an API key as password (user name, email or the literal `hanzo`). API keys and Basic are checked
against the live grants. Failed logins are rate-limited per source address and audited.

Long pushes: an upload session records who started it (UploadRecord.actor). A PATCH/PUT/GET/DELETE
of that session is accepted with a token that has since expired (by at most the upload expiry) when
the token is otherwise valid (our key, issuer, audience), names the same subject, grants push on the
session's repository, and the user still exists. That token can do nothing else, and the session
cannot be moved to another repository; clients that refresh their tokens never need this.

External identity (`auth.oidc.issuer` set; off, nothing here changes): a JWT whose unverified `iss` is
not this registry's is an IdP token, accepted wherever an API key is (Bearer, or the Basic password with
any user name). It is verified against the IdP's JWKS (services.core.auth.oidc); its first presentation
makes or syncs the external user (AuthService.sync_external_user); then it is the user's own credential
like an unrestricted API key (via "key", credential "idp"): checked against the live grants, and allowed
to manage the keys of its own user (never others' unless a registry admin). A console session (the
HttpOnly cookie of the browser login, services.distribution.oidc_login) is the same kind of credential
(credential "session") on /v1/registry, where writes need the X-CSRF-Token header, and on /v2 reads only.
Registry tokens (our `iss`) keep the path above, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from aiohttp import web

from services.core.auth.apikeys import looks_like_key
from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import AuthenticationError
from services.core.auth.model import KeyKind, Role, Subject, User
from services.core.auth.oidc import IdpTokenError, IdpUnavailableError, OidcProvider, looks_like_jwt, unverified_issuer
from services.core.auth.ratelimit import FailureLimiter
from services.core.auth.scopes import CATALOG, PULL, PUSH, REGISTRY, REPOSITORY, WILDCARD, challenge_scope, ordered
from services.core.auth.service import Authenticated, AuthService
from services.core.auth.store import AuthStore
from services.core.auth.tokens import KEY_CLAIM, TokenInvalidError, VerifiedToken
from services.core.bootstrap import Container
from services.core.errors import DeniedError, RegistryError, TooManyRequestsError, UnauthorizedError
from services.core.oci.digest import Digest
from services.core.settings import Settings
from services.core.storage.meta import MetadataStore
from services.distribution.access import Principal
from services.distribution.keys import ACCESS, AUDIT_DETAIL
from services.distribution.middleware import Handler
from services.distribution.oci_api import route_of

log = logging.getLogger(__name__)

_SUBJECT_TTL = 2.0
_SUBJECT_CACHE_MAX = 4096
_UPLOAD_METHODS = frozenset({"GET", "HEAD", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class AuthPrincipal(Principal):
    """A caller as `auth.mode: token` sees it: how it authenticated and what its token grants."""

    via: str = "anonymous"  # anonymous (no credentials) | token | key
    """token: a registry access token (its `access` claim bounds it). key: the user's own credential,
    checked against the live grants: an API key (key_prefix set), an IdP token, or a console session."""
    key_prefix: str | None = None
    token: VerifiedToken | None = None
    credential: str = ""
    """With via "key": api-key | idp | session (for logs and audit; authorization reads `via`)."""


NO_CREDENTIALS = AuthPrincipal("anonymous", anonymous=True)
PRINCIPAL = web.RequestKey("principal", AuthPrincipal)
SESSION_COOKIE = "hzr_session"
CSRF_COOKIE = "hzr_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_PURPOSE = "session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_IDP_LOGINS_MAX = 4096


def source_address(request: web.Request) -> str:
    return request.remote or ""


def base_url(request: web.Request, settings: Settings) -> str:
    configured = settings.registry.public_base_url.rstrip("/")
    return configured or f"{request.scheme}://{request.host}"


class TokenAccess:
    """AccessControl for `auth.mode: token` (see the module docstring)."""

    def __init__(self, *, service: AuthService, settings: Settings, meta: MetadataStore,
                 limiter: FailureLimiter, oidc: OidcProvider | None = None) -> None:
        self.service = service
        self.settings = settings
        self.meta = meta
        self.limiter = limiter
        self.oidc = oidc
        # IdP tokens already synced (SHA-256 of the token -> (its exp, user)): a token's groups are synced
        # once, when it is first presented here; later requests with it only verify it.
        self._idp_logins: dict[str, tuple[float, str]] = {}
        # Subjects (admin flag, teams, key limits) for a moment, so a catalog page does not reload them per
        # repository. Changes made through this replica clear it at once; other replicas' within _SUBJECT_TTL.
        self._subjects: dict[tuple[str, str | None], tuple[float, int, Subject]] = {}

    # challenges

    def challenge(
        self, request: web.Request, message: str, *, scope: str | None = None, error: str | None = None
    ) -> UnauthorizedError:
        parts = [f'realm="{base_url(request, self.settings)}/token"', f'service="{self.settings.auth.service}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return UnauthorizedError(message, headers={"WWW-Authenticate": "Bearer " + ",".join(parts)})

    # authentication

    async def authenticate(self, request: web.Request) -> Principal:
        cached = request.get(PRINCIPAL)
        if isinstance(cached, AuthPrincipal):
            return cached
        principal = await self._authenticate(request)
        if request.headers.get("X-Hanzo-Force", "").lower() == "true" and not principal.anonymous:
            # Force-moving an immutable tag is for registry admins (with an unrestricted key, if any).
            subject = await self.subject(principal)
            unrestricted = subject.key_namespaces is None and subject.key_role in (None, Role.ADMIN)
            principal = replace(principal, may_force=subject.admin and unrestricted)
        request[PRINCIPAL] = principal
        return principal

    async def _authenticate(self, request: web.Request) -> AuthPrincipal:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            # Only without an Authorization header: a console session cookie (None when there is none).
            return await self._session_principal(request) or NO_CREDENTIALS
        scheme, _, credentials = header.partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and looks_like_key(credentials):
            return self._key_principal(await self.login(request, credentials, username=None))
        if scheme == "bearer" and self.is_idp_token(credentials):
            return self._idp_principal(await self.login_idp(request, credentials))
        if scheme == "bearer":
            return await self._token_principal(request, credentials)
        if scheme == "basic":
            username, password = self.basic_credentials(request, credentials)
            if self.is_idp_token(password):
                return self._idp_principal(await self.login_idp(request, password))
            return self._key_principal(await self.login(request, password, username=username))
        raise self.challenge(request, "unsupported Authorization scheme; use Bearer or Basic")

    def basic_credentials(self, request: web.Request, credentials: str) -> tuple[str, str]:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise self.challenge(request, "malformed Basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise self.challenge(request, "malformed Basic credentials")
        return username, password

    async def login(
        self, request: web.Request, secret: str, *, username: str | None, kind: KeyKind = KeyKind.API
    ) -> Authenticated:
        """Check an API key (or refresh token): rate-limited per source address, failures audited."""
        source = source_address(request)
        self._check_limit(source)
        try:
            return await self.service.authenticate_key(secret, username=username, kind=kind)
        except AuthenticationError as exc:
            if self.limiter.failed(source):
                log.warning("failed-login limit reached for source %s", source)
            detail = {"reason": exc.reason, "path": request.path[:200], "user_agent": _agent(request)}
            await self.service.record_quietly(
                AuditRecord(_claimed(username), "auth.login", "registry", Outcome.FAILURE, source, detail)
            )
            raise self.challenge(request, exc.message) from None

    def _check_limit(self, source: str) -> None:
        wait = self.limiter.retry_after(source)
        if wait > 0:
            raise TooManyRequestsError(
                f"too many failed logins from this address; retry in {int(wait) + 1}s",
                headers={"Retry-After": str(int(wait) + 1)},
            )

    def _key_principal(self, auth: Authenticated) -> AuthPrincipal:
        return AuthPrincipal(auth.user.name, via="key", key_prefix=auth.key.prefix, credential="api-key")

    # external identity (OIDC): see the module docstring

    def is_idp_token(self, credential: str) -> bool:
        """With OIDC on: a JWT that is not one of our registry tokens (by its unverified `iss`; either way
        it is verified next, with the issuer's own keys). A foreign issuer's JWT lands here too, to be
        refused with that reason."""
        if self.oidc is None or looks_like_key(credential) or not looks_like_jwt(credential):
            return False
        return unverified_issuer(credential) != self.settings.auth.issuer

    async def login_idp(self, request: web.Request, token: str) -> User:
        """The external user of an IdP token: verified, then (on its first presentation here) the user made
        or synced. Failures are 401s naming the reason, rate-limited per source address and audited."""
        assert self.oidc is not None
        source = source_address(request)
        self._check_limit(source)
        try:
            claims = await self.oidc.verify(token)
            return await self._synced_user(token, claims, source)
        except IdpUnavailableError as exc:
            log.warning("cannot verify an identity provider token: %s", exc)
            raise self.challenge(request, f"identity provider token not verified: the provider is unavailable "
                                          f"({str(exc)[:200]})", error="invalid_token") from None
        except (IdpTokenError, AuthenticationError) as exc:
            reason = exc.reason
            if self.limiter.failed(source):
                log.warning("failed-login limit reached for source %s", source)
            detail = {"reason": reason[:200], "path": request.path[:200], "user_agent": _agent(request), "via": "oidc"}
            await self.service.record_quietly(
                AuditRecord("", "auth.login", "registry", Outcome.FAILURE, source, detail)
            )
            raise self.challenge(request, f"identity provider token rejected: {reason}",
                                 error="invalid_token") from None

    async def _synced_user(self, token: str, claims: dict[str, object], source: str) -> User:
        assert self.oidc is not None
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        seen = self._idp_logins.get(fingerprint)
        if seen is not None:
            user = await self.service.store.user(seen[1])
            if user is not None and user.external_subject == claims.get("sub"):
                return user
        identity = self.oidc.identity(claims)
        user = await self.service.sync_external_user(identity, source=source)
        now = time.time()
        if len(self._idp_logins) >= _IDP_LOGINS_MAX:
            self._idp_logins = {k: v for k, v in self._idp_logins.items() if v[0] > now}
            if len(self._idp_logins) >= _IDP_LOGINS_MAX:
                self._idp_logins.clear()
        self._idp_logins[fingerprint] = (identity.expires, user.name)
        return user

    def _idp_principal(self, user: User) -> AuthPrincipal:
        return AuthPrincipal(user.name, via="key", credential="idp")

    async def _session_principal(self, request: web.Request) -> AuthPrincipal | None:
        """The console session of the cookie: on /v1/registry (writes only with the CSRF header matching
        the session) and for /v2 reads; None without a cookie or anywhere else (e.g. /token)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie or self.oidc is None:
            return None
        management = request.path.startswith("/v1/registry/")
        if not (management or (request.path.startswith("/v2") and request.method in _SAFE_METHODS)):
            return None
        try:
            verified = await self.service.verify_purpose_token(SESSION_PURPOSE, cookie)
        except TokenInvalidError as exc:
            raise self.challenge(request, f"console session rejected: {exc.reason}; log in again",
                                 error="invalid_token") from None
        if request.method not in _SAFE_METHODS:
            # Double submit: the header must carry the CSRF value bound into the signed session (its
            # readable twin cookie is what the console's script sends back; another site cannot read it).
            expected = verified.claims.get("csrf")
            sent = request.headers.get(CSRF_HEADER, "")
            if not isinstance(expected, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
                raise DeniedError(f"a write with the console session needs the {CSRF_HEADER} header "
                                  f"(the value of the {CSRF_COOKIE} cookie)")
        if not verified.subject:
            raise self.challenge(request, "console session rejected: it names no user", error="invalid_token")
        principal = AuthPrincipal(verified.subject, via="key", credential="session")
        if (await self.subject(principal)).user is None:
            raise self.challenge(request, "the session's user was deleted", error="invalid_token")
        return principal

    async def _token_principal(self, request: web.Request, token: str) -> AuthPrincipal:
        principal = await self._verified_token_principal(request, token)
        # A token is signed for minutes, but the key it came from may be revoked or its user deleted
        # since: check both against the identity cache, so revocation takes effect within its TTL.
        if not principal.anonymous and (await self.subject(principal)).user is None:
            raise self.challenge(request, "the token's API key was revoked, expired or paused (an external user "
                                 "who has not signed in lately), or its user deleted", error="invalid_token")
        return principal

    async def _verified_token_principal(self, request: web.Request, token: str) -> AuthPrincipal:
        try:
            verified = await self.service.verify_token(token)
        except TokenInvalidError as exc:
            if exc.expired:
                grace = await self._upload_grace(request, token)
                if grace is not None:
                    return grace
                raise self.challenge(request, "token has expired", error="invalid_token") from None
            source = source_address(request)
            self._check_limit(source)
            if self.limiter.failed(source):
                log.warning("failed-login limit reached for source %s", source)
            await self.service.record_quietly(
                AuditRecord("", "auth.token", "registry", Outcome.FAILURE, source,
                            {"reason": exc.reason[:200], "path": request.path[:200], "user_agent": _agent(request)})
            )
            raise self.challenge(request, "invalid token", error="invalid_token") from None
        return self._from_token(verified)

    def _from_token(self, verified: VerifiedToken) -> AuthPrincipal:
        prefix = verified.claims.get(KEY_CLAIM)
        if not verified.subject:
            return AuthPrincipal("anonymous", anonymous=True, via="token", token=verified)
        return AuthPrincipal(
            verified.subject, via="token", token=verified, key_prefix=prefix if isinstance(prefix, str) else None
        )

    async def _upload_grace(self, request: web.Request, token: str) -> AuthPrincipal | None:
        """An expired token continuing the upload session its subject started (module docstring)."""
        route = route_of(request.path) if request.path.startswith("/v2/") else None
        if route is None or route.kind != "upload" or request.method not in _UPLOAD_METHODS:
            return None
        try:
            verified = await self.service.verify_token(token, allow_expired=True)
        except TokenInvalidError:
            return None
        if time.time() - float(verified.claims["exp"]) > self.service.upload_grace_seconds:
            return None
        record = await self.meta.upload(route.rest)
        if record is None or record.repository != route.name or not verified.subject:
            return None
        if record.actor != verified.subject or PUSH not in verified.actions_on(REPOSITORY, route.name):
            return None
        if await self.service.store.user(verified.subject) is None:
            return None
        log.info("continuing upload %s of %s with an expired token", route.rest[:64], route.name)
        return self._from_token(verified)

    # authorization

    async def subject(self, principal: AuthPrincipal) -> Subject:
        if principal.anonymous:
            return await self.service.subject(None)
        cache_key = (principal.name, principal.key_prefix)
        now = time.monotonic()
        generation = self.service.generation
        hit = self._subjects.get(cache_key)
        if hit is not None and now - hit[0] < _SUBJECT_TTL and hit[1] == generation:
            return hit[2]
        subject = await self.service.subject(principal.name, key_prefix=principal.key_prefix)
        if len(self._subjects) >= _SUBJECT_CACHE_MAX:
            self._subjects.clear()
        self._subjects[cache_key] = (now, generation, subject)
        return subject

    async def allowed(self, principal: Principal, repository: str) -> frozenset[str]:
        return await self.service.allowed(await self.subject(_auth(principal)), repository)

    async def authorize(
        self, request: web.Request, principal: Principal, repository: str, actions: Collection[str]
    ) -> None:
        p = _auth(principal)
        needed = frozenset(actions)
        if not repository:
            if p.via == "anonymous":
                raise self.challenge(request, "authentication required")
            return
        scope = challenge_scope(repository, needed)
        if p.token is not None and needed <= p.token.actions_on(REPOSITORY, repository):
            return
        held = await self.allowed(p, repository)
        if p.token is None and needed <= held:
            return
        if p.anonymous:
            if p.via == "anonymous" and request.method == "HEAD" and needed == {PULL}:
                # A HEAD is how pushers check what is already there, and clients that take the first
                # challenge's scope verbatim and keep that token (oras-py) could then never push. The
                # token endpoint grants only what the caller holds, so offering push here widens nothing.
                scope = challenge_scope(repository, frozenset({PULL, PUSH}))
            raise self.challenge(request, f"authentication required to {'/'.join(ordered(needed))} {repository}",
                                 scope=scope, error="insufficient_scope" if p.token else None)
        if p.token is not None and needed <= held:
            raise self.challenge(request, f"the token does not grant {scope}; request a new one", scope=scope,
                                 error="insufficient_scope")
        raise DeniedError(f"{p.name} may not {'/'.join(ordered(needed - held) or ordered(needed))} {repository}")

    async def can_mount_from(self, principal: Principal, repository: str) -> bool:
        """A cross-repository mount reads the source: a token must carry pull on it (Docker token auth);
        a key is checked against the live grants."""
        p = _auth(principal)
        if p.token is not None:
            return PULL in p.token.actions_on(REPOSITORY, repository)
        return await self.can_read(p, repository)

    async def readable(self, principal: Principal, repositories: Sequence[str]) -> list[str]:
        """The repositories of `repositories` the caller may pull, with one grants read per namespace."""
        subject = await self.subject(_auth(principal))
        return await self.service.readable(subject, repositories)

    async def can_read(self, principal: Principal, repository: str) -> bool:
        try:
            return PULL in await self.allowed(principal, repository)
        except Exception as exc:
            log.warning("access check for %s failed: %s", repository, exc)
            return False

    async def authorize_catalog(self, request: web.Request, principal: Principal) -> None:
        p = _auth(principal)
        scope = f"{REGISTRY}:{CATALOG}:{WILDCARD}"
        if p.via == "anonymous":
            raise self.challenge(request, "authentication required", scope=scope)
        if p.token is not None and WILDCARD not in p.token.actions_on(REGISTRY, CATALOG):
            raise self.challenge(request, "the token does not grant the catalog", scope=scope,
                                 error="insufficient_scope")


def _auth(principal: Principal) -> AuthPrincipal:
    if isinstance(principal, AuthPrincipal):
        return principal
    return NO_CREDENTIALS


def _claimed(username: str | None) -> str:
    # The name the caller claimed (not verified); bounded, and never a key typed into the wrong field.
    if username and looks_like_key(username):
        return "(a key)"
    return (username or "")[:100]


def _agent(request: web.Request) -> str:
    return request.headers.get("User-Agent", "")[:200]


async def build_token_access(c: Container) -> TokenAccess:
    """Set up the auth store, create the bootstrap admin on an empty store, and build the access control."""
    service = AuthService(
        store=AuthStore(c.docs),
        outbox=c.outbox,
        settings=c.settings.auth,
        topics=c.settings.topics,
        upload_grace_seconds=c.settings.registry.upload_expiry_seconds,
    )
    await service.setup()
    await service.bootstrap(c.settings.data_dir)
    limiter = FailureLimiter(
        limit=c.settings.auth.login_failure_limit, window_seconds=c.settings.auth.login_failure_window_seconds
    )
    oidc = OidcProvider(c.settings.auth.oidc) if c.settings.auth.oidc.enabled else None
    return TokenAccess(service=service, settings=c.settings, meta=c.meta, limiter=limiter, oidc=oidc)


# audit of registry changes

def audited_action(request: web.Request) -> tuple[str, str, dict[str, str]] | None:
    """(action, resource, detail) of a /v2 request that changes the registry; None for the rest."""
    if request.method not in ("PUT", "DELETE") or not request.path.startswith("/v2/"):
        return None
    route = route_of(request.path)
    if route is None:
        return None
    resource = f"repository:{route.name[:300]}"
    if route.kind == "manifest" and request.method == "PUT":
        detail = {"reference": route.rest[:200]}
        tags = request.query.getall("tag", [])
        if tags:
            detail["tags"] = ",".join(tags)[:400]
        return "push", resource, detail
    if route.kind == "manifest":
        is_digest = True
        try:
            Digest.parse(route.rest)
        except (RegistryError, ValueError):
            is_digest = False
        return ("delete" if is_digest else "tag.delete"), resource, {"reference": route.rest[:200]}
    if route.kind == "blob" and request.method == "DELETE":
        return "blob.delete", resource, {"digest": route.rest[:200]}
    return None


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record pushes, deletions and tag changes with their outcome (under `auth.mode: token`)."""
    access = request.app.get(ACCESS)
    audited = audited_action(request) if isinstance(access, TokenAccess) else None
    if audited is None or not isinstance(access, TokenAccess):
        return await handler(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        principal = request.get(PRINCIPAL)
        anonymous = not isinstance(principal, AuthPrincipal) or principal.via == "anonymous"
        # A 401 to a caller without credentials is the first step of the token dance, not an event.
        if not (status == 401 and anonymous):
            action, resource, detail = audited
            outcome = Outcome.SUCCESS if status < 400 else Outcome.DENIED if status in (401, 403) else Outcome.FAILURE
            detail = {**detail, **request.get(AUDIT_DETAIL, {}), "status": str(status)}
            actor = principal.name if isinstance(principal, AuthPrincipal) else "anonymous"
            await access.service.record_quietly(
                AuditRecord(actor, action, resource, outcome, source_address(request), detail)
            )
