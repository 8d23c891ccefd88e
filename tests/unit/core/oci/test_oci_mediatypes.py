"""Media type constants and sets."""

from __future__ import annotations

import pytest

from services.core.oci import mediatypes as mt


def test_sets_partition_manifest_types() -> None:
    assert mt.MANIFEST_TYPES == mt.IMAGE_MANIFEST_TYPES | mt.INDEX_TYPES
    assert not mt.IMAGE_MANIFEST_TYPES & mt.INDEX_TYPES
    assert mt.MANIFEST_TYPES == mt.OCI_MANIFEST_TYPES | mt.DOCKER_MANIFEST_TYPES
    assert not mt.SCHEMA1_TYPES & mt.MANIFEST_TYPES
    assert mt.NONDISTRIBUTABLE_LAYER_TYPES < mt.IMAGE_LAYER_TYPES
    assert mt.OCI_CONFIG in mt.CONFIG_TYPES
    assert mt.DOCKER_CONFIG in mt.CONFIG_TYPES


def test_well_known_values() -> None:
    assert mt.OCI_MANIFEST == "application/vnd.oci.image.manifest.v1+json"
    assert mt.OCI_INDEX == "application/vnd.oci.image.index.v1+json"
    assert mt.OCI_EMPTY == "application/vnd.oci.empty.v1+json"
    assert mt.DOCKER_MANIFEST == "application/vnd.docker.distribution.manifest.v2+json"
    assert mt.DOCKER_MANIFEST_LIST == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert mt.DOCKER_SCHEMA1_SIGNED_MANIFEST == "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.manifest.v1+json"),
        (" Application/JSON ; charset=utf-8", "application/json"),
        ("", ""),
    ],
)
def test_base_media_type(value: str, expected: str) -> None:
    assert mt.base_media_type(value) == expected
