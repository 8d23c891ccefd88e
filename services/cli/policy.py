"""`hanzo-registry policy get|set|rm NAMESPACE[/REPOSITORY] [FILE]`: a namespace's or repository's policy
document over the management API (YAML, as in `.hanzo/registry.yaml`)."""

from __future__ import annotations

import sys
import urllib.parse

from services.cli.tag import TagCommandError, Target, _call, connect

YAML = "application/yaml"


def policy_path(name: str) -> str:
    """The management path of `name`'s policy: a namespace (no slash) or a repository."""
    name = name.strip("/")
    if not name:
        raise TagCommandError("name a namespace or a repository (namespace/name)", exit_code=2)
    quoted = urllib.parse.quote(name, safe="/")
    if "/" in name:
        return f"/v1/registry/repositories/{quoted}/policy"
    return f"/v1/registry/namespaces/{quoted}/policy"


def get(target: Target, name: str, *, effective: bool = False) -> str:
    """The document set on `name` (or, for a repository with `effective`, the policy in force), as YAML."""
    path = policy_path(name) + ("?effective=true" if effective else "")
    body, _ = _call(connect(target), "GET", path, headers={"Accept": YAML})
    return body.decode()


def put(target: Target, name: str, document: bytes) -> str:
    """Replace `name`'s document with `document` (YAML or JSON); returns what the registry stored."""
    body, _ = _call(connect(target), "PUT", policy_path(name), body=document,
                    headers={"Content-Type": YAML, "Accept": YAML})
    return body.decode()


def remove(target: Target, name: str) -> None:
    _call(connect(target), "DELETE", policy_path(name))


def read_document(file: str | None) -> bytes:
    """The document to set: FILE, or standard input for `-` or no FILE."""
    if file in (None, "-"):
        return sys.stdin.buffer.read()
    try:
        with open(file, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TagCommandError(f"cannot read {file}: {exc.strerror}", exit_code=2) from None
