"""`hanzo-registry tag`: point a tag at an existing manifest over the OCI API (optionally forced)."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class TagCommandError(Exception):
    """What the registry refused, in its own words."""


@dataclass(frozen=True, slots=True)
class Target:
    registry: str  # base URL, e.g. http://127.0.0.1:5000
    user: str
    key: str


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
        raise TagCommandError(f"{method} {path}: {exc.code} {_explain(exc.read())}") from None
    except urllib.error.URLError as exc:
        raise TagCommandError(f"cannot reach {target.registry}: {exc.reason}") from None


def _explain(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace")


def tag(target: Target, repository: str, source: str, new_tag: str, *, force: bool) -> str:
    """Make `repository:new_tag` point at `source` (a tag or digest) and return the manifest digest."""
    data, headers = _call(target, "GET", f"/v2/{repository}/manifests/{source}", headers={"Accept": MANIFEST_TYPES})
    put_headers = {"Content-Type": headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")}
    if force:
        put_headers["X-Hanzo-Force"] = "true"
    _, created = _call(target, "PUT", f"/v2/{repository}/manifests/{new_tag}", body=data, headers=put_headers)
    return created.get("Docker-Content-Digest", "")


def target_from(registry: str, user: str, key: str | None) -> Target:
    # The key comes from the environment by default so it never shows in the process list.
    return Target(registry=registry, user=user, key=key or os.environ.get("HANZO_REGISTRY_API_KEY", ""))
