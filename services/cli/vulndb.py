"""`hanzo-registry vulndb import PATH`: OSV records (a JSON record or array, or an OSV export zip) into the
registry's vulnerability database over the management API (registry admins)."""

from __future__ import annotations

import json

from services.cli.api import call as _call
from services.cli.api import connect
from services.cli.target import TagCommandError, Target

PATH = "/v1/registry/admin/vulndb"


def import_file(target: Target, path: str) -> dict[str, int]:
    """Upload the file at `path`; the registry's answer ({"imported": n, "updated": m})."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise TagCommandError(f"cannot read {path}: {exc.strerror}", exit_code=2) from None
    kind = "application/zip" if data[:4] == b"PK\x03\x04" else "application/json"
    body, _ = _call(connect(target), "POST", PATH, body=data, headers={"Content-Type": kind})
    result: dict[str, int] = json.loads(body)
    return result


def status(target: Target) -> dict[str, object]:
    body, _ = _call(connect(target), "GET", PATH)
    state: dict[str, object] = json.loads(body)
    return state
