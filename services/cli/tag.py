"""`hanzo-registry tag`: point a tag at an existing manifest over the OCI API (optionally forced), on the core
OCI client. Also the registry target and the small HTTP helper the management commands (policy, sign, vulndb,
gc) still use."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, replace

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


DEFAULT_REGISTRY = "127.0.0.1:5000"
KEY_HELP = (
    "give an API key: export HANZO_REGISTRY_API_KEY=hzr_... (or --key); an admin creates one with "
    "POST /v1/registry/users/<user>/keys, and the first admin's is in <data_dir>/bootstrap-admin.key"
)


class TagCommandError(Exception):
    """What the registry refused, in its own words (exit 1), or why it could not be reached (exit 3)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Target:
    registry: str  # base URL, e.g. http://127.0.0.1:5000
    user: str
    key: str
    fallbacks: tuple[str, ...] = ()  # base URLs to try, in order, when `registry` does not answer (http after https)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def candidates(registry: str) -> list[str]:
    """Base URLs for `registry`: a URL as given; host:port https first, then http for a loopback host (docker's
    convention). An every-interface listen address (0.0.0.0, [::]) means this machine."""
    registry = registry.strip().rstrip("/")
    if "://" in registry:
        return [registry]
    host, sep, port = registry.rpartition(":")
    if not sep or not port.isdigit():
        host, port = registry, ""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    netloc = f"{host}:{port}" if port else host
    return [f"https://{netloc}", f"http://{netloc}"] if _loopback(host) else [f"https://{netloc}"]


def _headers(target: Target) -> dict[str, str]:
    if not target.key:
        return {}
    token = base64.b64encode(f"{target.user}:{target.key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _call(
    target: Target, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(  # noqa: S310 - the registry URL is the operator's own argument
        target.registry.rstrip("/") + path, data=body, method=method, headers={**_headers(target), **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        explained = _explain(exc.read())
        if exc.code == 401 and not target.key:
            explained += f"; {KEY_HELP}"
        raise TagCommandError(f"{method} {path}: {exc.code} {explained}") from None
    except urllib.error.URLError as exc:
        raise TagCommandError(f"cannot reach {target.registry}: {exc.reason}", exit_code=3) from None
    except (OSError, ssl.SSLError) as exc:
        raise TagCommandError(f"cannot reach {target.registry}: {exc}", exit_code=3) from None


def connect(target: Target) -> Target:
    """The target whose base URL answers `GET /v2/` (any HTTP status), trying the fallbacks in order."""
    failures: list[str] = []
    for base in (target.registry, *target.fallbacks):
        candidate = replace(target, registry=base, fallbacks=())
        try:
            _call(candidate, "GET", "/v2/")
            return candidate
        except TagCommandError as exc:
            if exc.exit_code != 3:
                return candidate  # it answered (401 without a key is for the real request to explain)
            failures.append(str(exc))
    raise TagCommandError("; ".join(failures), exit_code=3)


def _explain(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace")


def tag(target: Target, repository: str, source: str, new_tag: str, *, force: bool) -> str:
    """Make `repository:new_tag` point at `source` (a tag or digest) and return the manifest digest. On the core
    OCI client: the manifest's exact bytes are read and put back under the new tag."""
    import asyncio

    return asyncio.run(_tag(target, repository, source, new_tag, force=force))


async def _tag(target: Target, repository: str, source: str, new_tag: str, *, force: bool) -> str:
    from services.core.client import (
        ClientOptions,
        Credentials,
        OciClient,
        OciClientError,
        OciConnectionError,
        OciResponseError,
        RegistryOptions,
        RemoteRepository,
    )
    from services.core.client.auth import repository_scope
    from services.core.errors import RegistryError

    scheme, _, host = target.registry.partition("://")
    # host:port (fallbacks given): docker's rule, plain HTTP on loopback only; a URL: its scheme
    plain = None if target.fallbacks else scheme == "http"
    credentials = Credentials(target.user, target.key) if target.key else None
    options = ClientOptions(registries={host: RegistryOptions(credentials=credentials, plain_http=plain)},
                            user_agent="hanzo-registry-cli", trace_headers=False)
    try:
        async with OciClient(options) as client:
            repo = RemoteRepository(host, repository)  # type: ignore[arg-type]
            fetched = await client.get_manifest(repo, source)
            headers = {"Content-Type": fetched.descriptor.media_type}
            if force:
                headers["X-Hanzo-Force"] = "true"
            async with client.transport.expect(
                host, "PUT", f"/v2/{repository}/manifests/{new_tag}", ok=(201,),
                scopes=(repository_scope(repository, "pull", "push"),), headers=headers, body=fetched.content,
            ) as resp:
                return resp.headers.get("Docker-Content-Digest", str(fetched.descriptor.digest))
    except OciConnectionError as exc:
        cause = exc.__cause__
        raise TagCommandError(f"cannot reach {host}: {cause or exc}", exit_code=3) from None
    except OciResponseError as exc:
        explained = exc.message + (f"; {KEY_HELP}" if exc.status == 401 and not target.key else "")
        raise TagCommandError(f"{exc.method} {exc.url}: {exc.status} {explained}") from None
    except (OciClientError, RegistryError) as exc:
        raise TagCommandError(str(exc)) from None


def target_from(registry: str | None, user: str, key: str | None) -> Target:
    """The registry from the argument, else $HANZO_REGISTRY_URL, else $HANZO_REGISTRY_ADDR (the address a local
    `serve` listens on), else 127.0.0.1:5000. The key comes from the environment by default so it never shows in
    the process list."""
    env = os.environ
    chosen = registry or env.get("HANZO_REGISTRY_URL") or env.get("HANZO_REGISTRY_ADDR") or DEFAULT_REGISTRY
    first, *rest = candidates(chosen)
    return Target(
        registry=first, user=user, key=key or env.get("HANZO_REGISTRY_API_KEY", ""), fallbacks=tuple(rest)
    )
