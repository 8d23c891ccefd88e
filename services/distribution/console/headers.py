"""The security headers of every console response: a strict CSP (our own script and stylesheet only, no
inline code), no framing, no referrer, no sniffing, and no caching of pages that show a user's data."""

from __future__ import annotations

from typing import Final, TypeVar

from aiohttp import web

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


R = TypeVar("R", bound=web.StreamResponse)


def secured(response: R, *, cacheable: bool = False) -> R:
    """Add the security headers; pages are never cached (they show one user's view), static assets are."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "public, max-age=3600" if cacheable else "no-store"
    return response
