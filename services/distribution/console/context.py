"""The session-checked wrapper of every console page, and what each page's template gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from services.core.errors import RegistryError, UnauthorizedError
from services.distribution.console import login
from services.distribution.console import session as sessions
from services.distribution.console.gateway import caller, token_access, use_principal
from services.distribution.console.headers import secured
from services.distribution.console.render import error_page, unexpected
from services.distribution.management_api import Caller


@dataclass(frozen=True, slots=True)
class Ctx:
    request: web.Request
    session: sessions.Session
    caller: Caller

    def base(self, **extra: Any) -> dict[str, Any]:
        """The layout's context: who is logged in, whether admin links show, the logout form's CSRF value."""
        return {
            "user": self.caller.name,
            "admin": self.caller.admin,
            "csrf": self.session.csrf,
            "breadcrumbs": [],
            "section": "",
            **extra,
        }


PageHandler = Callable[[Ctx], Awaitable[web.StreamResponse]]


def login_redirect(request: web.Request, reason: str = "") -> web.Response:
    """To the login page, coming back here after it (only GETs come back: a form is sent again by hand)."""
    query = {"next": request.path_qs} if request.method == "GET" and request.path.startswith("/console/") else {}
    if reason:
        query["reason"] = reason
    location = "/console/login" + ("?" + urlencode(query, quote_via=quote) if query else "")
    response = secured(web.Response(status=303, headers={"Location": location}))
    sessions.clear_session_cookie(response)
    return response


def with_session(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Check the session cookie (else to the login page), authenticate the request as its user and key,
    run the page, and render a typed error as an error page."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        access = token_access(request)
        try:
            session = await sessions.current(request, access)
        except sessions.SessionMissingError as exc:
            renew = await login.renewal(request, access)
            if renew is not None:
                return secured(web.Response(status=303, headers={"Location": renew}))
            return login_redirect(request, "expired" if exc.reason else "")
        use_principal(request, session.principal())
        ctx: Ctx | None = None
        try:
            ctx = Ctx(request, session, await caller(request))
            return await handler(ctx)
        except UnauthorizedError:
            # The key was revoked or the user deleted since the login.
            return login_redirect(request, "expired")
        except RegistryError as error:
            return error_page(request, error, **(ctx.base() if ctx else {}))
        except web.HTTPException:
            raise
        except Exception as exc:
            return error_page(request, unexpected(request, exc), **(ctx.base() if ctx else {}))

    wrapped.__name__ = handler.__name__
    return wrapped
