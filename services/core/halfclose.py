"""Answer clients that half-close their socket after sending a request.

Some proxies and scripts send a request and then `shutdown(SHUT_WR)`. asyncio closes the transport on
EOF unless the protocol asks to keep it, and aiohttp's protocol does not ask: a handler that awaits
anything (every `/v2/<name>/...` route reads metadata) then finds its connection gone, and the client
gets no answer. Keeping the write side open while a request is in hand, and closing after it, is what
HTTP/1.1 servers such as nginx do (RFC 9112 section 9.6 allows a half-closed request).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web_protocol

_installed = False


def _eof_received(self: Any) -> bool | None:
    # Idle means the protocol's loop waits for the next request (its `_waiter`) and none is queued.
    if getattr(self, "_waiter", None) is not None and not getattr(self, "_messages", None):
        return None  # an idle connection whose client is gone: close it, as before
    parser = getattr(self, "_parser", None)
    try:
        if parser is not None:
            parser.feed_eof()  # the request's body is complete: its reader sees the end
    except Exception:
        return None  # a body cut short: close as before, so its reader learns it (connection_lost)
    self.close()  # no further requests on this connection; answer this one, then close
    return True


def answer_half_closed_requests() -> None:
    """Install the behaviour above on aiohttp's server protocol (idempotent, process-wide)."""
    global _installed
    if not _installed:
        web_protocol.RequestHandler.eof_received = _eof_received  # type: ignore[method-assign,assignment]
        _installed = True
