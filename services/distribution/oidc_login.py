"""The console's browser login through the OIDC issuer: authorization code with PKCE, then a session cookie.

GET  /v1/registry/auth/oidc/login[?return_to=/path]
     302 to the issuer's authorization endpoint with state, nonce and an S256 code_challenge; the state,
     nonce, verifier and return path travel in a registry-signed cookie (`hzr_oidc`, 10 minutes, HttpOnly,
     SameSite=Lax, only sent to these routes).
GET  /v1/registry/auth/oidc/callback?code=&state=
     checks the state against the cookie, exchanges the code at the token endpoint (client_id/secret and
     the verifier), verifies the id_token (issuer, audience = client_id, expiry, nonce), makes or syncs the
     external user like any IdP login, then sets the session: `hzr_session` (a registry-signed session
     token, `auth.oidc.session_ttl_seconds`, HttpOnly, SameSite=Lax, Secure over https) and `hzr_csrf`
     (readable by the console's script, which sends it back as `X-CSRF-Token` on every write), and
     redirects to the return path (default `/`).
POST /v1/registry/auth/oidc/logout   clears both cookies (204).

The session authenticates /v1/registry reads and writes (writes with the CSRF header) and /v2 reads; see
services.distribution.auth_access. Failures answer the registry's JSON error document: 401 naming the
reason, 503 when the issuer cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from aiohttp import web

from services.core.auth.oidc import IdpTokenError, IdpUnavailableError, OidcProvider
from services.core.auth.tokens import TokenInvalidError
from services.core.errors import UnauthorizedError, UnavailableError
from services.distribution.auth_access import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_PURPOSE,
    TokenAccess,
    base_url,
    source_address,
)
from services.distribution.keys import ACCESS

PATH = "/v1/registry/auth/oidc"
LOGIN_COOKIE = "hzr_oidc"
LOGIN_PURPOSE = "oidc-login"
LOGIN_TTL_SECONDS = 600
SCOPES = "openid profile email groups"


def _access(request: web.Request) -> tuple[TokenAccess, OidcProvider]:
    access = request.app[ACCESS]
    assert isinstance(access, TokenAccess) and access.oidc is not None
    return access, access.oidc


def _secure(request: web.Request, access: TokenAccess) -> bool:
    return request.scheme == "https" or access.settings.registry.public_base_url.startswith("https://")


def _return_path(value: str) -> str:
    # Only a path on this registry: never another origin (`//host`, `/\\host`, `https://...`).
    if value.startswith("/") and not value.startswith(("//", "/\\")) and len(value) <= 1000:
        return value
    return "/"


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _redirect_uri(request: web.Request, access: TokenAccess) -> str:
    return f"{base_url(request, access.settings)}{PATH}/callback"


async def login(request: web.Request) -> web.Response:
    access, oidc = _access(request)
    try:
        metadata = await oidc.metadata()
    except IdpUnavailableError as exc:
        raise UnavailableError(f"the identity provider is unavailable: {exc}") from None
    if metadata.authorization_endpoint is None:
        raise UnavailableError("the identity provider's discovery document has no authorization_endpoint")
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    signed = await access.service.sign_purpose_token(
        LOGIN_PURPOSE, subject="", ttl_seconds=LOGIN_TTL_SECONDS,
        claims={"state": state, "nonce": nonce, "verifier": verifier,
                "return_to": _return_path(request.query.get("return_to", "/"))},
    )
    query = urlencode({
        "response_type": "code",
        "client_id": oidc.settings.client_id,
        "redirect_uri": _redirect_uri(request, access),
        "scope": SCOPES,
        "state": state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    })
    separator = "&" if "?" in metadata.authorization_endpoint else "?"
    response = web.Response(status=302, headers={"Location": metadata.authorization_endpoint + separator + query,
                                                 "Cache-Control": "no-store"})
    response.set_cookie(LOGIN_COOKIE, signed.token, max_age=LOGIN_TTL_SECONDS, path=PATH, httponly=True,
                        samesite="Lax", secure=_secure(request, access))
    return response


async def callback(request: web.Request) -> web.Response:
    access, oidc = _access(request)
    error = request.query.get("error")
    if error:
        raise UnauthorizedError(f"the identity provider refused the login: {error[:100]}")
    try:
        started = await access.service.verify_purpose_token(LOGIN_PURPOSE, request.cookies.get(LOGIN_COOKIE, ""))
    except TokenInvalidError as exc:
        raise UnauthorizedError(f"no login in progress in this browser ({exc.reason}); start again") from None
    claims = started.claims
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not state or not hmac.compare_digest(state.encode(), str(claims.get("state", "")).encode()):
        raise UnauthorizedError("the login's state does not match this browser's; start again")
    if not code:
        raise UnauthorizedError("the identity provider sent no code")
    try:
        answer = await oidc.exchange_code(code, redirect_uri=_redirect_uri(request, access),
                                          code_verifier=str(claims["verifier"]))
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise IdpTokenError("the token endpoint answered no id_token")
        verified = await oidc.verify(id_token, audiences=[oidc.settings.client_id], nonce=str(claims["nonce"]))
        user = await access.service.sync_external_user(oidc.identity(verified), source=source_address(request))
    except IdpUnavailableError as exc:
        raise UnavailableError(f"the identity provider is unavailable: {exc}") from None
    except IdpTokenError as exc:
        raise UnauthorizedError(f"login refused: {exc.reason}") from None
    csrf = secrets.token_urlsafe(32)
    ttl = oidc.settings.session_ttl_seconds
    session = await access.service.sign_purpose_token(SESSION_PURPOSE, subject=user.name, ttl_seconds=ttl,
                                                      claims={"csrf": csrf})
    secure = _secure(request, access)
    response = web.Response(status=302, headers={"Location": _return_path(str(claims.get("return_to", "/"))),
                                                 "Cache-Control": "no-store"})
    response.set_cookie(SESSION_COOKIE, session.token, max_age=ttl, path="/", httponly=True, samesite="Lax",
                        secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=ttl, path="/", samesite="Lax", secure=secure)
    response.del_cookie(LOGIN_COOKIE, path=PATH)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(CSRF_COOKIE, path="/")
    return response


def add_oidc_routes(app: web.Application) -> None:
    """The browser login, when `auth.oidc.issuer` is set (and the IdP client's close at shutdown)."""
    access = app[ACCESS]
    if not isinstance(access, TokenAccess) or access.oidc is None:
        return
    oidc = access.oidc
    app.router.add_get(f"{PATH}/login", login)
    app.router.add_get(f"{PATH}/callback", callback)
    app.router.add_post(f"{PATH}/logout", logout)

    async def close(_: web.Application) -> None:
        await oidc.close()

    app.on_cleanup.append(close)
