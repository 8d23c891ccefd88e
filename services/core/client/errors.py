"""Typed errors of the OCI client: what the registry answered (status, OCI error code, message) or why the
transfer failed."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final

MAX_MESSAGE_BODY: Final = 300
"""Characters of a non-JSON error body quoted in a message."""


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One entry of the spec's `{"errors": [{"code", "message", "detail"}]}` document."""

    code: str
    message: str
    detail: Any = None


class OciClientError(Exception):
    """Base of every error the OCI client raises."""


class OciConnectionError(OciClientError):
    """The registry could not be reached, or a connection broke or timed out (after the allowed retries)."""


class OciAuthenticationError(OciClientError):
    """The token endpoint refused the credentials, answered nonsense, or the challenge could not be met."""


class OciDigestMismatchError(OciClientError):
    """Content read from a registry does not match the digest (or size) it was requested by."""


class OciManifestTooLargeError(OciClientError):
    """A manifest is larger than the client's `max_manifest_bytes`; it was not read."""


class OciProtocolError(OciClientError):
    """The registry answered outside the distribution spec (a missing Location, a bad Content-Range, ...)."""


class OciResponseError(OciClientError):
    """The registry answered a request with an error status. `code` is the first OCI error code of the body
    (`UNKNOWN` when there is none), `errors` every parsed entry, `headers` the answer's headers (a 429's or
    503's `Retry-After` tells a caller when to come back: `retry_after`)."""

    def __init__(
        self,
        *,
        method: str,
        url: str,
        status: int,
        errors: tuple[ErrorDetail, ...],
        body: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.method, self.url, self.status, self.errors = method, url, status, errors
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.code = errors[0].code if errors else "UNKNOWN"
        if errors:
            explained = "; ".join(f"{e.code}: {e.message}" if e.message else e.code for e in errors)
        else:
            explained = body[:MAX_MESSAGE_BODY].strip() or "(no body)"
        self.message = explained
        super().__init__(f"{method} {url}: {status} {explained}")

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait from `Retry-After` (delta-seconds or an HTTP date), None when absent or unreadable."""
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now (never negative); None when absent or neither form."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


class OciUnauthorizedError(OciResponseError):
    """401 even after authenticating: the credentials are missing or not accepted."""


class OciDeniedError(OciResponseError):
    """403: the caller may never do this."""


class OciNotFoundError(OciResponseError):
    """404: no such repository, manifest, blob, upload session or API."""


class OciTooManyRequestsError(OciResponseError):
    """429: slow down."""


_BY_STATUS: Final[dict[int, type[OciResponseError]]] = {
    401: OciUnauthorizedError,
    403: OciDeniedError,
    404: OciNotFoundError,
    429: OciTooManyRequestsError,
}


def parse_error_body(body: bytes) -> tuple[ErrorDetail, ...]:
    """The entries of an OCI error document; empty when the body is not one (HTML, plain text, nothing)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ()
    out: list[ErrorDetail] = []
    for entry in errors:
        if isinstance(entry, dict):
            code, message = entry.get("code"), entry.get("message")
            out.append(
                ErrorDetail(
                    code=str(code) if code is not None else "UNKNOWN",
                    message=str(message) if message is not None else "",
                    detail=entry.get("detail"),
                )
            )
    return tuple(out)


def response_error(
    *, method: str, url: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> OciResponseError:
    """The typed error for an error response (its class chosen by status), keeping the answer's headers."""
    cls = _BY_STATUS.get(status, OciResponseError)
    return cls(
        method=method,
        url=url,
        status=status,
        errors=parse_error_body(body),
        body=body.decode(errors="replace"),
        headers=headers,
    )
