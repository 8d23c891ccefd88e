"""What the console's pages show, computed from records (pure: no I/O): pull commands, a manifest's
platforms and layers, sizes, and the bounds of a page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from services.core.errors import RegistryError
from services.core.oci.manifest import Descriptor, ParsedManifest, parse_manifest
from services.core.storage.meta import ManifestRecord

PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
MAX_QUERY: Final = 200


@dataclass(frozen=True, slots=True)
class PullCommand:
    tool: str
    command: str


def pull_commands(host: str, repository: str, reference: str, *, plain_http: bool) -> list[PullCommand]:
    """The commands that pull `repository` at `reference` (a tag or a digest) from `host`, for docker,
    podman, oras and our CLI. Over plain HTTP, the flags each client needs (docker needs the host in its
    insecure-registries, which no flag sets; loopback is allowed by default)."""
    separator = "@" if ":" in reference else ":"
    ref = f"{host}/{repository}{separator}{reference}"
    return [
        PullCommand("docker", f"docker pull {ref}"),
        PullCommand("podman", f"podman pull {'--tls-verify=false ' if plain_http else ''}{ref}"),
        PullCommand("oras", f"oras pull {'--plain-http ' if plain_http else ''}{ref}"),
        PullCommand("hanzo-registry", f"hanzo-registry pull {ref}"),
    ]


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class PlatformEntry:
    platform: str
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class ManifestView:
    digest: str
    media_type: str
    manifest_size: int
    is_index: bool
    artifact_type: str | None
    config: Layer | None
    layers: tuple[Layer, ...]
    platforms: tuple[PlatformEntry, ...]
    annotations: tuple[tuple[str, str], ...]
    subject: str | None

    @property
    def total_size(self) -> int:
        """The manifest, its config and its layers (an index: the index and the platform manifests)."""
        parts = [p.size for p in self.platforms] if self.is_index else [layer.size for layer in self.layers]
        return self.manifest_size + (self.config.size if self.config else 0) + sum(parts)


def _platform(descriptor: Descriptor) -> str:
    p = descriptor.platform
    if p is None:
        return "unknown"
    return "/".join(part for part in (p.os, p.architecture, p.variant) if part)


def _parse(record: ManifestRecord) -> ParsedManifest | None:
    try:
        return parse_manifest(record.data, record.media_type, max_bytes=max(len(record.data), 1))
    except (RegistryError, ValueError):
        return None


def manifest_view(record: ManifestRecord) -> ManifestView:
    """The manifest as the tag page shows it; a manifest our parser does not take (it was stored by an
    older version, or is a Docker schema we only pass through) shows its digest and media type only."""
    parsed = _parse(record)
    if parsed is None:
        return ManifestView(
            str(record.digest),
            record.media_type,
            record.size,
            False,
            record.artifact_type,
            None,
            (),
            (),
            tuple(sorted(record.annotations.items())),
            str(record.subject) if record.subject else None,
        )

    def layer(d: Descriptor) -> Layer:
        return Layer(d.media_type, str(d.digest), d.size)

    return ManifestView(
        digest=str(record.digest),
        media_type=parsed.media_type,
        manifest_size=record.size,
        is_index=parsed.is_index,
        artifact_type=parsed.artifact_type,
        config=layer(parsed.config) if parsed.config is not None and not parsed.is_index else None,
        layers=tuple(layer(d) for d in parsed.layers),
        platforms=tuple(PlatformEntry(_platform(d), str(d.digest), d.size, d.media_type) for d in parsed.manifests),
        annotations=tuple(sorted(parsed.annotations.items())),
        subject=str(parsed.subject.digest) if parsed.subject is not None else None,
    )


def pretty_json(data: bytes, *, limit: int = 256 * 1024) -> str:
    """The manifest's JSON indented for reading (at most `limit` bytes of it)."""
    try:
        return json.dumps(json.loads(data[:limit]), indent=2, sort_keys=False)
    except ValueError:
        return data[:limit].decode("utf-8", errors="replace")


def page_size(value: str | None) -> int:
    """The `limit` query parameter, bounded; anything else is the default."""
    try:
        number = int(value or PAGE_SIZE)
    except ValueError:
        return PAGE_SIZE
    return min(max(number, 1), MAX_PAGE_SIZE)


def bounded(value: str | None, *, limit: int = MAX_QUERY) -> str:
    """A free-text query parameter: at most `limit` characters, no control characters."""
    text = (value or "")[:limit]
    return "".join(ch for ch in text if ch.isprintable()).strip()


def next_cursor(items: list[str], limit: int) -> tuple[list[str], str | None]:
    """A page of `limit` from `limit + 1` items read, and the cursor of the next page (None on the last)."""
    if len(items) > limit:
        return items[:limit], items[limit - 1]
    return items, None
