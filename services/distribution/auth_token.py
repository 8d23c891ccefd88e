"""The token endpoint (`/token`): Docker token authentication (GET) and its OAuth2 form (POST).

GET  /token?service=&scope=...&scope=...&account=&offline_token=true&client_id=   (Basic or anonymous)
POST /token  grant_type=password (username, password) | refresh_token (refresh_token);
             service, client_id, access_type=offline, scope (space-separated)   (form-encoded)

The password is an API key, or (with `auth.oidc.issuer` set) a JWT of the identity provider: then the
external user is made or synced and the token is issued to it; no refresh token is made for an IdP login
(the IdP token's own expiry bounds the login: clients send it again). Tokens grant the intersection of
what was asked and what the caller holds; a reduced or empty grant is a 200. Bad credentials are a 401
(rate-limited per source address).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from services.core.auth.apikeys import looks_like_key
from services.core.auth.errors import InvalidRequestError, UnsupportedGrantError
from services.core.auth.model import KeyKind, User
from services.core.auth.scopes import ResourceScope, ScopeInvalidError, parse_scopes
from services.core.auth.service import Authenticated
from services.core.errors import ManifestTooLargeError
from services.distribution.auth_access import TokenAccess
from services.distribution.keys import ACCESS

MAX_FORM_BYTES = 64 * 1024


def _access(request: web.Request) -> TokenAccess:
    access = request.app[ACCESS]
    assert isinstance(access, TokenAccess)
    return access


def _scopes(values: list[str]) -> list[ResourceScope]:
    try:
        return parse_scopes(values)
    except ScopeInvalidError as exc:
        raise InvalidRequestError(str(exc)) from None


def _check_service(access: TokenAccess, service: str | None) -> None:
    if service and service != access.settings.auth.service:
        raise InvalidRequestError(f"this token service is {access.settings.auth.service!r}, not {service[:100]!r}")


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


async def _issue(
    access: TokenAccess, auth: Authenticated | User | None, scopes: list[ResourceScope], *, refresh_token: str | None
) -> dict[str, Any]:
    # An IdP login (a User) has no key: its token is bounded by the user's live grants alone.
    key_prefix = auth.key.prefix if isinstance(auth, Authenticated) else None
    user_name = auth.user.name if isinstance(auth, Authenticated) else auth.name if auth is not None else None
    subject = await access.service.subject(user_name, key_prefix=key_prefix)
    issued, granted = await access.service.issue_token(subject, scopes, key_prefix=key_prefix)
    body: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": _rfc3339(issued.issued_at),
        "scope": " ".join(str(s) for s in granted),
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


def _no_store(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def get_token(request: web.Request) -> web.Response:
    access = _access(request)
    _check_service(access, request.query.get("service"))
    scopes = _scopes(request.query.getall("scope", []))
    auth: Authenticated | User | None = None
    header = request.headers.get("Authorization", "").strip()
    if header:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "basic":
            username, password = access.basic_credentials(request, credentials.strip())
            if access.is_idp_token(password):
                auth = await access.login_idp(request, password)
            else:
                auth = await access.login(request, password, username=username)
        elif scheme.lower() == "bearer" and looks_like_key(credentials.strip()):
            auth = await access.login(request, credentials.strip(), username=None)
        elif scheme.lower() == "bearer" and access.is_idp_token(credentials.strip()):
            auth = await access.login_idp(request, credentials.strip())
        else:
            raise access.challenge(request, "the token endpoint takes Basic credentials (user and API key)")
    offline = request.query.get("offline_token", "").lower() == "true"
    refresh = None
    if offline and isinstance(auth, Authenticated):
        refresh = await access.service.create_refresh_token(auth)
    return _no_store(await _issue(access, auth, scopes, refresh_token=refresh))


async def post_token(request: web.Request) -> web.Response:
    access = _access(request)
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise ManifestTooLargeError(f"token requests are at most {MAX_FORM_BYTES} bytes")
    raw = await request.content.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise ManifestTooLargeError(f"token requests are at most {MAX_FORM_BYTES} bytes")
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=100).items()}
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the body must be application/x-www-form-urlencoded") from None
    _check_service(access, form.get("service"))
    scopes = _scopes([form.get("scope", "")])
    grant_type = form.get("grant_type", "")
    refresh: str | None
    if grant_type == "password":
        username, password = form.get("username", ""), form.get("password", "")
        if not password:
            raise InvalidRequestError("the password grant needs username and password")
        auth: Authenticated | User
        if access.is_idp_token(password):
            auth, refresh = await access.login_idp(request, password), None
        else:
            auth = await access.login(request, password, username=username or None)
            offline = form.get("access_type", "") == "offline"
            refresh = await access.service.create_refresh_token(auth) if offline else None
    elif grant_type == "refresh_token":
        refresh = form.get("refresh_token", "")
        if not refresh:
            raise InvalidRequestError("the refresh_token grant needs refresh_token")
        auth = await access.login(request, refresh, username=None, kind=KeyKind.REFRESH)
    else:
        raise UnsupportedGrantError(f"grant_type {grant_type[:40]!r} is not supported; use password or refresh_token")
    return _no_store(await _issue(access, auth, scopes, refresh_token=refresh))


def add_token_routes(app: web.Application) -> None:
    app.router.add_get("/token", get_token)
    app.router.add_post("/token", post_token)

