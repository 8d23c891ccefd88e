"""The bounds a layer is read under, and the error that fails a scan of a hostile or broken layer."""

from __future__ import annotations

from dataclasses import dataclass


class HostileLayerError(Exception):
    """A layer that cannot be read safely (a bomb, traversal, too many files, not a tar): the scan fails with
    this reason; the service itself goes on."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_layer_bytes: int = 16 * 1024**3
    """Decompressed bytes of one layer."""
    max_ratio: int = 400
    """Decompressed/compressed ratio beyond `ratio_allowance` bytes: a decompression bomb."""
    ratio_allowance: int = 256 * 1024**2
    max_entries: int = 1_000_000
    """Tar entries of one image, all layers together."""
    max_header_bytes: int = 1024 * 1024
    """A pax/GNU long-name header entry (read whole by tarfile)."""
    max_path_bytes: int = 4096
    max_metadata_bytes: int = 64 * 1024**2
    """A package database read whole (dpkg status, apk installed) or spooled (rpmdb.sqlite)."""
    max_manifest_bytes: int = 1024 * 1024
    """A small manifest read whole (package.json, METADATA, pom.properties, os-release)."""
    max_archive_bytes: int = 512 * 1024**2
    """A jar spooled to a temporary file to read its directory."""
    max_nested_bytes: int = 64 * 1024**2
    """A jar inside a jar, read into memory."""
    max_zstd_window: int = 128 * 1024**2
    max_link_hops: int = 40
