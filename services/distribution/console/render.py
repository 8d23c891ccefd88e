"""Rendering of console pages: the Jinja2 environment (autoescaped, strict), the static assets, a page
response with the security headers, and the one mapping of the registry's typed errors to error pages."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

import jinja2
from aiohttp import web

from services.core.errors import RegistryError
from services.core.outages import outage_of
from services.distribution.console.headers import secured
from services.distribution.console.views import human_size
from services.distribution.keys import OUTAGES

log = logging.getLogger(__name__)

STATIC_TYPES: Final = {"console.css": "text/css", "console.js": "text/javascript"}
"""The only files served under /console/static/ (nothing else of the package can be asked for)."""


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str


def load_static() -> dict[str, StaticFile]:
    """The static assets shipped in the package (package data), read once at start."""
    folder = resources.files(__package__).joinpath("static")
    out: dict[str, StaticFile] = {}
    for name, content_type in STATIC_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        out[name] = StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:12])
    return out


def _time(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _short(digest: str | None) -> str:
    if not digest:
        return ""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else digest[:19]


def environment(static: dict[str, StaticFile]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("services.distribution.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    env.filters["time"] = _time
    env.filters["short"] = _short
    env.globals["static"] = lambda name: f"/console/static/{name}?v={static[name].version}"
    return env


CONSOLE: Final = web.AppKey("console_templates", jinja2.Environment)
STATIC: Final = web.AppKey("console_static", dict)


_LAYOUT_DEFAULTS: Final[dict[str, Any]] = {"user": None, "admin": False, "csrf": "", "breadcrumbs": [], "section": ""}


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    text = request.app[CONSOLE].get_template(template).render(**{**_LAYOUT_DEFAULTS, **context})
    return secured(web.Response(text=text, status=status, content_type="text/html", charset="utf-8"))


_TITLES: Final = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Not available",
    429: "Too many requests",
    503: "Unavailable",
    500: "Something went wrong",
}


def error_page(request: web.Request, error: RegistryError, **context: Any) -> web.Response:
    """The one rendering of an error in the console: its status and message on the layout's page."""
    status = error.status if error.status in _TITLES else 500
    response = page(request, "error.html", status=status, title=_TITLES[status], message=error.message, **context)
    retry = error.headers.get("Retry-After")
    if retry:
        response.headers["Retry-After"] = retry
    return response


def unexpected(request: web.Request, exc: Exception) -> RegistryError:
    """An exception no handler expected: an outage (503), else an internal error (logged)."""
    dependency = outage_of(exc)
    if dependency is not None:
        return request.app[OUTAGES].unavailable(dependency, exc)
    log.exception("unhandled error in console %s %s", request.method, request.rel_url.path)
    return RegistryError("internal error; see the server log")
