"""Media type constants for OCI and Docker manifests, configs and layers, and the sets we route on."""

from __future__ import annotations

from typing import Final

# OCI image-spec v1.1
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE_TAR: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Docker image manifest v2 schema 2
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Docker schema 1: deprecated and unverifiable; we reject it (MANIFEST_INVALID).
DOCKER_SCHEMA1_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
"""Manifests with a config and layers."""

INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
"""Manifests that list other manifests."""

MANIFEST_TYPES: Final = IMAGE_MANIFEST_TYPES | INDEX_TYPES
"""Every manifest type we accept on push."""

OCI_MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, OCI_INDEX})
DOCKER_MANIFEST_TYPES: Final = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})

SCHEMA1_TYPES: Final = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST})

CONFIG_TYPES: Final = frozenset({OCI_CONFIG, DOCKER_CONFIG})
"""Configs of runnable images (artifacts use other config types, or the empty one)."""

NONDISTRIBUTABLE_LAYER_TYPES: Final = frozenset(
    {
        OCI_LAYER_NONDISTRIBUTABLE_TAR,
        OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_TAR_ZSTD,
        DOCKER_FOREIGN_LAYER,
    }
)
"""Layers that may live outside the registry, fetched from their descriptor's `urls`."""

IMAGE_LAYER_TYPES: Final = frozenset(
    {OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, OCI_LAYER_TAR_ZSTD, DOCKER_LAYER} | NONDISTRIBUTABLE_LAYER_TYPES
)
"""Filesystem layers of runnable images (what the scanner unpacks)."""

# Content-Type values some clients send for any JSON body; they say nothing about the manifest type.
GENERIC_CONTENT_TYPES: Final = frozenset({"application/json", "application/octet-stream", "text/plain"})


def base_media_type(content_type: str) -> str:
    """The type/subtype of a Content-Type value, lowercased and without parameters."""
    return content_type.partition(";")[0].strip().lower()
