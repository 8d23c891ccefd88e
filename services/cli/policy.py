"""`hanzo-registry policy get|set|rm NAMESPACE[/REPOSITORY] [FILE]`: a namespace's or repository's policy
document over the management API (YAML, as in `.hanzo/registry.yaml`)."""

from __future__ import annotations

import json
import sys
import urllib.parse

from services.cli.api import call as _call
from services.cli.api import connect
from services.cli.target import TagCommandError, Target

YAML = "application/yaml"
JSON = "application/json"


def policy_path(name: str) -> str:
    """The management path of `name`'s policy: a namespace (no slash) or a repository."""
    name = name.strip("/")
    if not name:
        raise TagCommandError("name a namespace or a repository (namespace/name)", exit_code=2)
    quoted = urllib.parse.quote(name, safe="/")
    if "/" in name:
        return f"/v1/registry/repositories/{quoted}/policy"
    return f"/v1/registry/namespaces/{quoted}/policy"


def get(target: Target, name: str, *, effective: bool = False, as_json: bool = False) -> str:
    """The document set on `name` (or, for a repository with `effective`, the policy in force), as YAML (or
    the registry's JSON)."""
    path = policy_path(name) + ("?effective=true" if effective else "")
    body, _ = _call(connect(target), "GET", path, headers={"Accept": JSON if as_json else YAML})
    return _text(body, as_json=as_json)


def put(target: Target, name: str, document: bytes, *, as_json: bool = False) -> str:
    """Replace `name`'s document with `document` (YAML or JSON); returns what the registry stored."""
    body, _ = _call(connect(target), "PUT", policy_path(name), body=document,
                    headers={"Content-Type": YAML, "Accept": JSON if as_json else YAML})
    return _text(body, as_json=as_json)


def _text(body: bytes, *, as_json: bool) -> str:
    if not as_json:
        return body.decode()
    return json.dumps(json.loads(body), indent=2) + "\n"


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
