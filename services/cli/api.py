"""The management API (`/v1/registry/...`) for the CLI's management commands (tag, policy, sign, verify, scan,
vulndb, gc, replication), over the core OCI client's transport: one HTTP path for the whole CLI (token or Basic
auth as the registry asks, TLS options, plain HTTP on loopback, redirects, typed errors)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from services.cli.tag import KEY_HELP, TagCommandError, Target
from services.core.client import (
    ClientOptions,
    Credentials,
    OciClient,
    OciClientError,
    OciConnectionError,
    OciResponseError,
    RegistryOptions,
)


def connect(target: Target) -> Target:
    """The target to send requests to. The client picks the scheme itself (docker's rule for host:port:
    plain HTTP on loopback, HTTPS elsewhere; a URL's own scheme), so there is nothing to probe first; kept as
    the one place a command passes its target through before talking."""
    return target


def client_for(target: Target) -> tuple[str, OciClient]:
    """(host[:port], a client configured for it) from a target's base URL and credentials."""
    scheme, _, host = target.registry.partition("://")
    # host:port (fallbacks given): docker's rule, plain HTTP on loopback only; a URL: its scheme
    plain = None if target.fallbacks else scheme == "http"
    credentials = Credentials(target.user, target.key) if target.key else None
    options = ClientOptions(
        # API keys as Basic: the management API refuses registry access tokens for changes.
        registries={host: RegistryOptions(credentials=credentials, plain_http=plain, basic_always=True)},
        user_agent="hanzo-registry-cli",
        trace_headers=False,
    )
    return host, OciClient(options)


def explain(target: Target, exc: OciClientError) -> TagCommandError:
    """One line and an exit code (3: unreachable, 1: refused) for a client error."""
    host = target.registry.partition("://")[2]
    if isinstance(exc, OciConnectionError):
        return TagCommandError(f"cannot reach {host}: {exc.__cause__ or exc}", exit_code=3)
    if isinstance(exc, OciResponseError):
        explained = exc.message + (f"; {KEY_HELP}" if exc.status == 401 and not target.key else "")
        return TagCommandError(f"{exc.method} {exc.url}: {exc.status} {explained}")
    return TagCommandError(str(exc))


async def request(
    target: Target,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    ok: tuple[int, ...] = (200, 201, 202, 204),
) -> tuple[bytes, dict[str, str]]:
    """One request: the answer's body and headers; TagCommandError for an error answer or no answer."""
    host, client = client_for(target)
    try:
        async with client, client.transport.expect(host, method, path, ok=ok, headers=headers, body=body) as resp:
            return await resp.read(), dict(resp.headers)
    except OciClientError as exc:
        raise explain(target, exc) from None


def call(
    target: Target, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    """`request` for synchronous commands."""
    return asyncio.run(request(target, method, path, body=body, headers=headers))


def call_json(target: Target, method: str, path: str, document: Any = None) -> Any:
    """A JSON request (when `document` is not None) answered with JSON (None for an empty body)."""
    body = None if document is None else json.dumps(document).encode()
    headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if body is not None else {})}
    answer, _ = call(target, method, path, body=body, headers=headers)
    return json.loads(answer) if answer.strip() else None
