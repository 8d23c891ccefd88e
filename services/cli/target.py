"""Where a management command sends its requests (the registry's base URL, user and API key, from the
arguments and the environment), and the error every management command ends with."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

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
