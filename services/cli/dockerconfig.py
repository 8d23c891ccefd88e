"""Credentials in docker's config format (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), shared
with docker, oras and skopeo: `auths.<registry>.auth` (base64 `user:password`), or a credential helper
(`credHelpers.<registry>`, `credsStore`) run as `docker-credential-<name> get|store|erase`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


def _obj(doc: Any, key: str) -> dict[str, Any]:
    """`doc[key]` when it is a JSON object, else an empty one."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read the docker config {path}: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def _keys(registry: str) -> list[str]:
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return [DOCKER_HUB_KEY, "docker.io", "index.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}"]


def _helper(doc: dict[str, Any], registry: str) -> str | None:
    helpers = _obj(doc, "credHelpers")
    for key in _keys(registry):
        if isinstance(helpers.get(key), str):
            return str(helpers[key])
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def _run_helper(helper: str, action: str, data: str) -> str:
    proc = subprocess.run([f"docker-credential-{helper}", action], input=data, capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise OSError(f"docker-credential-{helper} {action} failed: {(proc.stdout + proc.stderr).strip()[:200]}")
    return proc.stdout


def get(registry: str, *, path: Path | None = None) -> tuple[str, str] | None:
    """(user, password) stored for `registry`, or None."""
    doc = _load(path or config_path())
    helper = _helper(doc, registry)
    if helper is not None:
        try:
            answer = json.loads(_run_helper(helper, "get", registry))
            return str(answer["Username"]), str(answer["Secret"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not in the helper: fall back to auths, as docker does for entries it wrote there
    auths = _obj(doc, "auths")
    for key in _keys(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def store(registry: str, user: str, password: str, *, path: Path | None = None) -> Path:
    """Save the credentials (through the credential helper when the config names one); the file's path."""
    path = path or config_path()
    doc = _load(path)
    helper = _helper(doc, registry)
    if helper is not None:
        _run_helper(helper, "store", json.dumps({"ServerURL": registry, "Username": user, "Secret": password}))
        doc.setdefault("auths", {}).setdefault(registry, {})
    else:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        doc.setdefault("auths", {})[registry] = {"auth": auth}
    _write(path, doc)
    return path


def erase(registry: str, *, path: Path | None = None) -> bool:
    """Forget the registry's credentials; False when there were none."""
    path = path or config_path()
    doc = _load(path)
    helper = _helper(doc, registry)
    found = False
    if helper is not None:
        try:
            _run_helper(helper, "erase", registry)
            found = True
        except OSError:
            pass
    auths = _obj(doc, "auths")
    for key in _keys(registry):
        if auths.pop(key, None) is not None:
            found = True
    if found:
        _write(path, doc)
    return found


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent="\t")
    os.replace(tmp, path)
