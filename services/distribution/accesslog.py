"""The access log: one INFO line per HTTP request (`telemetry.access_log`), never with a credential in it.

The line has the method, the path without its query string (the token endpoint takes `account` and `scope`
there, and a query string is where a careless client puts a token), the status, the bytes sent, the duration,
the user and the client address; the trace id comes from the span the telemetry middleware opened. Headers
are never logged.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from services.core.telemetry import CONSOLE_QUIET
from services.distribution.auth_access import PRINCIPAL
from services.distribution.middleware import Handler

access_log = logging.getLogger("hanzo_registry.access")
_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_FIELDS = ("method", "path", "status", "bytes", "duration_ms", "user", "client")


def _sent(response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    if response.prepared:  # streamed: everything is written by now
        return response.body_length
    if isinstance(response, web.Response):
        return response.content_length or 0
    return 0


def _user(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return principal.name if principal is not None and not principal.anonymous else "-"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response: web.StreamResponse | None = None
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        response = exc if isinstance(exc, web.StreamResponse) else None
        raise
    finally:
        fields = {
            "method": request.method,
            "path": request.rel_url.path,
            "status": status,
            "bytes": _sent(response),
            "duration_ms": round((time.perf_counter() - start) * 1000, 1),
            "user": _user(request),
            "client": request.remote or "-",
        }
        # Probes and scrapes come every few seconds: at DEBUG, so they do not bury the requests.
        level = logging.DEBUG if fields["path"] in _OPS_PATHS else logging.INFO
        access_log.log(
            level,
            '%s %s "%s %s" %d %dB %.1fms',
            fields["client"],
            fields["user"],
            fields["method"],
            fields["path"],
            status,
            fields["bytes"],
            fields["duration_ms"],
            extra={**fields, CONSOLE_QUIET: _FIELDS},
        )
