"""The console's session: a short-lived registry-signed token in an HttpOnly cookie, and its CSRF tokens.

A login (user name + API key, checked exactly as the API checks a key; or single sign-on, console/login.py,
which names no key) makes a token signed by the
registry's token key ring for the purpose "console" (its own audience: never a registry access token, nor
an OIDC session). It names the user, the key's prefix (so the key's namespace and role limits apply, and
revoking the key ends the session at once) and a random CSRF value that every form POST must send back.
The cookie is HttpOnly, SameSite=Strict, limited to /console/ and Secure over TLS; nothing goes into the
browser's storage. Before login, the login form's CSRF value is a double-submit cookie of its own.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from services.core.auth.tokens import KEY_CLAIM, TokenInvalidError
from services.core.errors import DeniedError
from services.distribution.auth_access import AuthPrincipal, TokenAccess

PATH: Final = "/console/"
SESSION_COOKIE: Final = "hzr_console"
LOGIN_CSRF_COOKIE: Final = "hzr_console_login"
PURPOSE: Final = "console"
SESSION_TTL_SECONDS: Final = 900
"""15 minutes, then log in again: the cookie holds a bearer credential, so it lives as briefly as a token."""
CSRF_FIELD: Final = "csrf"


class SessionMissingError(Exception):
    """No session, or one that may no longer be honoured; `reason` is for the login page."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfError(DeniedError):
    """A form POST without the CSRF value of its session (or login form): 403, rendered as an error page."""


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    key_prefix: str | None
    csrf: str
    expires: float

    def principal(self) -> AuthPrincipal:
        """The caller as the API's authorization sees a user with this API key."""
        return AuthPrincipal(self.user, via="key", key_prefix=self.key_prefix, credential="console")


def secure(request: web.Request, access: TokenAccess) -> bool:
    return request.scheme == "https" or access.settings.registry.public_base_url.startswith("https://")


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def same(sent: str, expected: str) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


async def start(access: TokenAccess, *, user: str, key_prefix: str | None) -> tuple[str, Session]:
    """A new session for `user` logged in with the key `key_prefix` (None: by single sign-on, no key):
    (signed token, session)."""
    csrf = new_csrf()
    claims = {"csrf": csrf}
    if key_prefix is not None:
        claims[KEY_CLAIM] = key_prefix
    issued = await access.service.sign_purpose_token(PURPOSE, subject=user, ttl_seconds=SESSION_TTL_SECONDS,
                                                      claims=claims)
    return issued.token, Session(user, key_prefix, csrf, issued.issued_at + issued.expires_in)


async def current(request: web.Request, access: TokenAccess) -> Session:
    """The session of the request's cookie; SessionMissingError without one, or for an expired, forged or
    foreign one."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SessionMissingError()
    try:
        verified = await access.service.verify_purpose_token(PURPOSE, token)
    except TokenInvalidError as exc:
        raise SessionMissingError(
            "Your session has ended; log in again." if exc.expired else "Your session is not valid; log in again."
        ) from None
    csrf, prefix = verified.claims.get("csrf"), verified.claims.get(KEY_CLAIM)
    if not verified.subject or not isinstance(csrf, str):
        raise SessionMissingError("Your session is not valid; log in again.")
    return Session(
        verified.subject, prefix if isinstance(prefix, str) else None, csrf, float(verified.claims.get("exp", 0))
    )


def set_session_cookie(response: web.StreamResponse, request: web.Request, access: TokenAccess, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_TTL_SECONDS,
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=secure(request, access),
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path=PATH)


def login_csrf(request: web.Request) -> str:
    """The login form's CSRF value: the one already in the browser's cookie, else a new one."""
    existing = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return existing if 20 <= len(existing) <= 100 else new_csrf()


def set_login_csrf_cookie(response: web.StreamResponse, request: web.Request, access: TokenAccess, value: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        max_age=3600,
        path=PATH,
        httponly=True,
        samesite="Strict",
        secure=secure(request, access),
    )


def check_login_csrf(request: web.Request, sent: str) -> None:
    """Double submit: the form field must equal the cookie (another site can set neither)."""
    if not same(sent, request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        raise CsrfError("the login form expired or came from another site; open the login page again")


def check_csrf(session: Session, sent: str) -> None:
    """Session-bound: the form field must equal the CSRF value signed into the session."""
    if not same(sent, session.csrf):
        raise CsrfError("this form has no valid CSRF token; reload the page and send it again")
