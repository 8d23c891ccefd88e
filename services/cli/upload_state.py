"""Upload sessions of interrupted CLI pushes, kept as small JSON files under the user's cache directory
($XDG_CACHE_HOME/hanzo-registry/uploads/, else ~/.cache/...) so that a push killed mid-way continues its
chunked upload from the registry's offset when it is run again. One file per (registry, repository, digest),
written atomically (a temporary file renamed over it) so a kill never leaves half a file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


def uploads_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hanzo-registry" / "uploads"


@dataclass(frozen=True, slots=True)
class UploadState:
    """What an earlier run knew of its session: the Location to continue at and the bytes sent so far (the
    registry's own offset, read again on restart, is what counts)."""

    registry: str
    repository: str
    digest: str
    size: int
    location: str
    offset: int


def _path(registry: str, repository: str, digest: str) -> Path:
    key = hashlib.sha256(f"{registry}/{repository}@{digest}".encode()).hexdigest()[:32]
    return uploads_dir() / f"{key}.json"


def load(registry: str, repository: str, digest: str, size: int) -> UploadState | None:
    """The saved session of this blob, None when there is none or it is unreadable or for another size."""
    try:
        data = json.loads(_path(registry, repository, digest).read_text())
        state = UploadState(**data)
    except (OSError, ValueError, TypeError):
        return None
    same = (state.registry, state.repository, state.digest, state.size) == (registry, repository, digest, size)
    return state if same else None


def save(state: UploadState) -> None:
    """Write atomically (owner-only: a Location may carry a session secret on some registries)."""
    path = _path(state.registry, state.repository, state.digest)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(state), handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(registry: str, repository: str, digest: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(registry, repository, digest).unlink()
