"""Logging in and out of the console: user name + API key, checked as the API checks a key; or single sign-on
through the OIDC issuer (`auth.oidc.issuer` and `client_id` set).

Single sign-on reuses the registry's browser login (services.distribution.oidc_login):
GET /console/login/sso?next=   to the registry's OIDC login, which comes back to .../sso/done (at once when the
                               browser still holds a valid registry session, `hzr_session`)
GET /console/login/sso/done    turns that session into a console session of the same user, without a key (the
                               user's live grants apply, as for an IdP token), and goes on to `next` through a
                               page of our own: the browser arrives here at the end of redirects that began at
                               the IdP, and would not send the SameSite=Strict console cookie on a redirect of
                               that chain (a request the browser marks `Sec-Fetch-Site: same-origin` is
                               redirected at once).
A console session (15 minutes) that ends while the registry session lasts is renewed the same way, without a
login page (`renewal`). Logging out of the console ends the registry session too.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import InvalidRequestError
from services.core.auth.tokens import TokenInvalidError
from services.core.errors import RegistryError, TooManyRequestsError, UnauthorizedError
from services.distribution.auth_access import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_PURPOSE,
    AuthPrincipal,
    TokenAccess,
    source_address,
)
from services.distribution.console import session as sessions
from services.distribution.console.gateway import token_access
from services.distribution.console.headers import secured
from services.distribution.console.render import error_page, page

MAX_FORM_BYTES: Final = 16 * 1024
HOME: Final = "/console/repositories"
SSO: Final = "/console/login/sso"
_REASONS: Final = {"expired": "Your session has ended; log in again.", "logged-out": "You are logged out."}


def next_path(value: str | None) -> str:
    """Where to go after the login: a console path only (never another origin, never a loop to login)."""
    if (
        value
        and value.startswith("/console/")
        and not value.startswith(("/console/login", "/console/logout"))
        and "\\" not in value
        and len(value) <= 2000
        and value.isprintable()
    ):
        return value
    return HOME


async def read_form(request: web.Request) -> dict[str, str]:
    """A urlencoded form of at most MAX_FORM_BYTES (the app takes bodies of any size: blobs stream)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequestError("expected a form (application/x-www-form-urlencoded)")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise InvalidRequestError("the form is too large")
    raw = await request.content.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidRequestError("the form is too large")
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the form is not valid") from None
    return {k: v[0] for k, v in fields.items()}


def sso_available(access: TokenAccess) -> bool:
    """Whether the registry's browser login through the OIDC issuer is set up (an issuer and a client)."""
    return access.oidc is not None and bool(access.oidc.settings.client_id)


def _login_page(
    request: web.Request, *, status: int = 200, error: str = "", user: str = "", next_to: str = HOME, notice: str = ""
) -> web.Response:
    access = token_access(request)
    csrf = sessions.login_csrf(request)
    response = page(
        request,
        "login.html",
        status=status,
        title="Log in",
        login_csrf=csrf,
        error=error,
        notice=notice,
        username=user,
        next=next_to,
        sso=f"{SSO}?{urlencode({'next': next_to})}" if sso_available(access) else "",
    )
    sessions.set_login_csrf_cookie(response, request, access, csrf)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    access = token_access(request)
    next_to = next_path(request.query.get("next"))
    try:
        await sessions.current(request, access)
    except sessions.SessionMissingError:
        return _login_page(request, next_to=next_to, notice=_REASONS.get(request.query.get("reason", ""), ""))
    return secured(web.Response(status=303, headers={"Location": next_to}))


async def login(request: web.Request) -> web.StreamResponse:
    access = token_access(request)
    try:
        form = await read_form(request)
        sessions.check_login_csrf(request, form.get(sessions.CSRF_FIELD, ""))
    except RegistryError as error:  # a form that is not one, or without its CSRF value (403)
        return error_page(request, error)
    user, key, next_to = (
        form.get("username", "").strip()[:200],
        form.get("api_key", "").strip(),
        next_path(form.get("next")),
    )
    if not user or not key:
        return _login_page(
            request, status=400, error="Enter your user name and an API key.", user=user, next_to=next_to
        )
    try:
        # The API's check: rate-limited per source address, failures audited.
        authenticated = await access.login(request, key, username=user)
    except TooManyRequestsError as error:
        response = _login_page(request, status=429, error=error.message, user=user, next_to=next_to)
        response.headers["Retry-After"] = error.headers.get("Retry-After", "60")
        return response
    except UnauthorizedError:
        return _login_page(
            request, status=401, error="The user name or API key is not valid.", user=user, next_to=next_to
        )
    token, _ = await sessions.start(access, user=authenticated.user.name, key_prefix=authenticated.key.prefix)
    await access.service.record_quietly(
        AuditRecord(
            authenticated.user.name,
            "console.login",
            "registry",
            Outcome.SUCCESS,
            source_address(request),
            {"key": authenticated.key.prefix},
        )
    )
    response = secured(web.Response(status=303, headers={"Location": next_to}))
    sessions.set_session_cookie(response, request, access, token)
    response.del_cookie(sessions.LOGIN_CSRF_COOKIE, path=sessions.PATH)
    return response


async def _registry_session_user(access: TokenAccess, request: web.Request) -> str | None:
    """The user of the browser's registry session (the OIDC browser login's cookie), if it is valid and the
    user still exists; else None."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not cookie:
        return None
    try:
        verified = await access.service.verify_purpose_token(SESSION_PURPOSE, cookie)
    except TokenInvalidError:
        return None
    if not verified.subject:
        return None
    principal = AuthPrincipal(verified.subject, via="key", credential="session")
    return verified.subject if (await access.subject(principal)).user is not None else None


def _done(next_to: str) -> str:
    return f"{SSO}/done?{urlencode({'next': next_path(next_to)})}"


async def renewal(request: web.Request, access: TokenAccess) -> str | None:
    """Where a console page request without a (live) console session goes to get one from the browser's
    registry session, if it has a valid one: single sign-on needs no login page while that lasts."""
    if request.method != "GET" or not sso_available(access) or await _registry_session_user(access, request) is None:
        return None
    return _done(request.path_qs)


async def sso_start(request: web.Request) -> web.StreamResponse:
    access = token_access(request)
    next_to = next_path(request.query.get("next"))
    if not sso_available(access):
        return _login_page(request, status=404, error="Single sign-on is not set up on this registry.",
                           next_to=next_to)
    done = _done(next_to)
    if await _registry_session_user(access, request) is not None:
        return secured(web.Response(status=303, headers={"Location": done}))
    location = f"/v1/registry/auth/oidc/login?{urlencode({'return_to': done})}"
    return secured(web.Response(status=303, headers={"Location": location}))


async def sso_done(request: web.Request) -> web.StreamResponse:
    access = token_access(request)
    next_to = next_path(request.query.get("next"))
    user = await _registry_session_user(access, request) if sso_available(access) else None
    if user is None:
        return _login_page(request, status=401, next_to=next_to,
                           error="Single sign-on did not complete (no valid sign-on session); try again.")
    token, _ = await sessions.start(access, user=user, key_prefix=None)
    await access.service.record_quietly(
        AuditRecord(user, "console.login", "registry", Outcome.SUCCESS, source_address(request), {"via": "oidc"})
    )
    if request.headers.get("Sec-Fetch-Site") == "same-origin":  # no cross-site step: the cookie goes along
        response: web.Response = secured(web.Response(status=303, headers={"Location": next_to}))
    else:
        response = page(request, "signed_in.html", title="Signed in", next=next_to)
    sessions.set_session_cookie(response, request, access, token)
    response.del_cookie(sessions.LOGIN_CSRF_COOKIE, path=sessions.PATH)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    access = token_access(request)
    try:
        session = await sessions.current(request, access)
        form = await read_form(request)
        sessions.check_csrf(session, form.get(sessions.CSRF_FIELD, ""))
    except sessions.SessionMissingError:
        pass  # nothing to end; the cookie is cleared all the same
    except RegistryError as error:
        return error_page(request, error)
    response = secured(web.Response(status=303, headers={"Location": "/console/login?reason=logged-out"}))
    sessions.clear_session_cookie(response)
    # A single sign-on's registry session too: else the next "log in with single sign-on" would need no login.
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(CSRF_COOKIE, path="/")
    return response
