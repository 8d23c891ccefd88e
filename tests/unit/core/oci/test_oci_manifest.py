"""Manifest parsing and validation, and the referrers index document."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import ManifestInvalidError, ManifestTooLargeError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import EMPTY_JSON_DIGEST, Digest
from services.core.oci.manifest import (
    SCHEMA1_MESSAGE,
    Descriptor,
    ParsedManifest,
    ReferrerDescriptor,
    build_referrers_index,
    parse_manifest,
)
from services.core.oci.platform import Platform

LIMIT = 4 * 1024 * 1024


def d(content: bytes | str, media_type: str = mt.OCI_LAYER_TAR_GZIP, **extra: Any) -> dict[str, Any]:
    data = content.encode() if isinstance(content, str) else content
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data), **extra}


CONFIG = d("{}", mt.OCI_CONFIG)
EMPTY = {"mediaType": mt.OCI_EMPTY, "digest": str(EMPTY_JSON_DIGEST), "size": 2}


def image(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": CONFIG,
        "layers": [d("layer-1"), d("layer-2")],
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not _DROP}


def index(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            d("m1", mt.OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
            d("m2", mt.OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP: Any = object()


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def parse(doc: Any, content_type: str | None = mt.OCI_MANIFEST, *, max_bytes: int = LIMIT) -> ParsedManifest:
    return parse_manifest(doc if isinstance(doc, bytes) else encode(doc), content_type, max_bytes=max_bytes)


def invalid(doc: Any, content_type: str | None = mt.OCI_MANIFEST) -> ManifestInvalidError:
    with pytest.raises(ManifestInvalidError) as exc:
        parse(doc, content_type)
    assert exc.value.code == "MANIFEST_INVALID"
    assert exc.value.status == 400
    return exc.value


# --- happy paths --------------------------------------------------------------------------------


def test_image_manifest() -> None:
    body = encode(image(annotations={"org.opencontainers.image.title": "x"}))
    m = parse(body)
    assert m.media_type == mt.OCI_MANIFEST
    assert m.digest == Digest.of(body)
    assert m.size == len(body)
    assert not m.is_index
    assert m.config == Descriptor(mt.OCI_CONFIG, Digest.of(b"{}"), 2)
    assert [str(layer.digest) for layer in m.layers] == [d("layer-1")["digest"], d("layer-2")["digest"]]
    assert m.manifests == ()
    assert m.child_manifests == ()
    assert m.subject is None
    assert m.artifact_type is None
    assert dict(m.annotations) == {"org.opencontainers.image.title": "x"}
    assert m.blob_references == (m.config, *m.layers)
    assert m.referrer_artifact_type == mt.OCI_CONFIG


def test_digest_is_of_the_exact_bytes() -> None:
    compact = json.dumps(image(), separators=(",", ":")).encode()
    pretty = json.dumps(image(), indent=2).encode()
    assert parse(compact).digest != parse(pretty).digest
    assert parse(pretty).digest == Digest.of(pretty)


def test_index() -> None:
    m = parse(index(), mt.OCI_INDEX)
    assert m.is_index
    assert m.config is None
    assert m.layers == ()
    assert m.blob_references == ()
    assert len(m.child_manifests) == 2
    assert m.child_manifests[1].platform == Platform("linux", "arm64", variant="v8")
    assert m.referrer_artifact_type is None


def test_docker_schema2_manifest_and_list() -> None:
    doc = image(
        mediaType=mt.DOCKER_MANIFEST,
        config=d("{}", mt.DOCKER_CONFIG),
        layers=[d("l", mt.DOCKER_LAYER)],
    )
    assert parse(doc, mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    listing = index(mediaType=mt.DOCKER_MANIFEST_LIST)
    m = parse(listing, mt.DOCKER_MANIFEST_LIST)
    assert m.is_index
    assert m.media_type == mt.DOCKER_MANIFEST_LIST


def test_zero_layer_manifest_is_accepted() -> None:
    assert parse(image(layers=[])).layers == ()


def test_null_lists_mean_empty() -> None:
    assert parse(image(layers=None)).layers == ()
    assert parse(index(manifests=None), mt.OCI_INDEX).manifests == ()


def test_empty_index_is_accepted() -> None:
    assert parse(index(manifests=[]), mt.OCI_INDEX).manifests == ()


def test_artifact_manifest_with_unknown_types() -> None:
    doc = image(
        artifactType="application/vnd.example.sbom.v1+json",
        config=EMPTY,
        layers=[d("sbom", "application/vnd.whatever.unknown+json", annotations={"a": "b"})],
        subject=d("subject", mt.OCI_MANIFEST),
    )
    m = parse(doc)
    assert m.artifact_type == "application/vnd.example.sbom.v1+json"
    assert m.referrer_artifact_type == "application/vnd.example.sbom.v1+json"
    assert m.subject is not None
    assert m.subject.digest == Digest.of(b"subject")
    assert m.layers[0].media_type == "application/vnd.whatever.unknown+json"
    assert dict(m.layers[0].annotations) == {"a": "b"}


def test_referrer_artifact_type_of_an_index_with_artifact_type() -> None:
    m = parse(index(artifactType="application/vnd.example"), mt.OCI_INDEX)
    assert m.referrer_artifact_type == "application/vnd.example"


def test_descriptor_artifact_type_and_urls() -> None:
    layer = d("l", mt.OCI_LAYER_TAR, artifactType="application/x", urls=["https://example.com/l"])
    m = parse(image(layers=[layer]))
    assert m.layers[0].artifact_type == "application/x"
    assert m.layers[0].urls == ("https://example.com/l",)
    assert not m.layers[0].is_foreign


def test_foreign_layers_are_not_blob_references() -> None:
    foreign = d("win", mt.DOCKER_FOREIGN_LAYER, urls=["https://mcr.microsoft.com/l"])
    nondist = d("nd", mt.OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP, urls=["https://example.com/nd"])
    pushed_nondist = d("nd2", mt.OCI_LAYER_NONDISTRIBUTABLE_TAR)
    m = parse(image(layers=[foreign, d("a"), nondist, pushed_nondist]))
    assert [str(x.digest) for x in m.blob_references] == [
        CONFIG["digest"],
        d("a")["digest"],
        pushed_nondist["digest"],
    ]
    assert m.layers[0].is_foreign


def test_blob_references_are_deduplicated() -> None:
    m = parse(image(config=d("same", mt.OCI_CONFIG), layers=[d("same"), d("x"), d("x")]))
    assert [str(x.digest) for x in m.blob_references] == [d("same")["digest"], d("x")["digest"]]


def test_embedded_data_that_matches_is_accepted() -> None:
    data = base64.b64encode(b"{}").decode()
    m = parse(image(config={**EMPTY, "data": data}))
    assert m.config is not None
    assert m.config.digest == EMPTY_JSON_DIGEST


def test_unknown_fields_are_ignored() -> None:
    assert parse(image(futureField={"x": 1}, layers=[d("l", extra=True)])).layers


def test_null_optional_fields_are_absent() -> None:
    m = parse(image(subject=None, artifactType=None, annotations=None))
    assert m.subject is None
    assert m.artifact_type is None
    assert dict(m.annotations) == {}


# --- media type resolution ----------------------------------------------------------------------


def test_content_type_parameters_and_case_are_ignored() -> None:
    assert (
        parse(image(), "application/vnd.oci.image.manifest.v1+json; charset=utf-8").media_type
        == mt.OCI_MANIFEST
    )
    assert parse(image(), "Application/VND.OCI.image.manifest.v1+json").media_type == mt.OCI_MANIFEST


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/octet-stream"])
def test_body_media_type_is_used_when_the_header_says_nothing(content_type: str | None) -> None:
    assert parse(image(), content_type).media_type == mt.OCI_MANIFEST


def test_header_and_body_mismatch_names_both() -> None:
    err = invalid(image(), mt.DOCKER_MANIFEST)
    assert mt.OCI_MANIFEST in err.message
    assert mt.DOCKER_MANIFEST in err.message
    assert err.detail == {"mediaType": mt.OCI_MANIFEST, "contentType": mt.DOCKER_MANIFEST}


def test_header_is_used_when_the_body_has_no_media_type() -> None:
    assert parse(image(mediaType=_DROP), mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST
    assert parse(image(mediaType=""), mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    assert parse(index(mediaType=_DROP), mt.DOCKER_MANIFEST_LIST).media_type == mt.DOCKER_MANIFEST_LIST


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_oci_type_is_inferred_without_media_type_or_header(content_type: str | None) -> None:
    assert parse(image(mediaType=_DROP), content_type).media_type == mt.OCI_MANIFEST
    assert parse(index(mediaType=_DROP), content_type).media_type == mt.OCI_INDEX
    only_layers = image(mediaType=_DROP, config=_DROP)
    assert "config is required" in invalid(only_layers, content_type).message


def test_ambiguous_body_without_media_type_is_rejected() -> None:
    doc = image(mediaType=_DROP, manifests=[])
    assert "both manifests and config/layers" in invalid(doc, None).message


def test_untyped_body_without_any_shape_is_rejected() -> None:
    assert "set mediaType" in invalid({"schemaVersion": 2}, None).message


def test_index_shaped_body_under_a_manifest_header_is_rejected() -> None:
    err = invalid(index(mediaType=_DROP), mt.OCI_MANIFEST)
    assert "image manifest" in err.message
    assert "has manifests" in err.message


def test_index_with_config_or_layers_is_rejected() -> None:
    assert "has config or layers" in invalid(index(layers=[]), mt.OCI_INDEX).message
    assert "has config or layers" in invalid(index(config=CONFIG), mt.OCI_INDEX).message


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        (image(mediaType="application/vnd.example.manifest+json"), None),
        (image(mediaType=_DROP), "application/vnd.example.manifest+json"),
        (image(mediaType="application/vnd.example.manifest+json"), "application/vnd.example.manifest+json"),
    ],
)
def test_unknown_manifest_media_type_is_rejected(doc: dict[str, Any], content_type: str | None) -> None:
    err = invalid(doc, content_type)
    assert "unsupported manifest media type" in err.message


def test_media_type_must_be_a_string() -> None:
    assert invalid(image(mediaType=2)).detail == {"field": "mediaType"}


# --- size, JSON and schema version ---------------------------------------------------------------


def test_too_large() -> None:
    body = encode(image())
    with pytest.raises(ManifestTooLargeError) as exc:
        parse_manifest(body, mt.OCI_MANIFEST, max_bytes=len(body) - 1)
    assert exc.value.code == "SIZE_INVALID"
    assert exc.value.status == 413
    assert f"{len(body)} bytes" in exc.value.message
    assert f"limit is {len(body) - 1}" in exc.value.message
    assert parse_manifest(body, mt.OCI_MANIFEST, max_bytes=len(body)).size == len(body)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "Expecting value"),
        (b"{", "Expecting property name"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "expected an object, got array"),
        (b'"text"', "expected an object, got string"),
        (b"null", "expected an object, got null"),
        (b"2", "expected an object, got number"),
        (b"true", "expected an object, got boolean"),
        (b'{"schemaVersion": NaN}', "NaN is not allowed"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', "duplicate key 'schemaVersion'"),
        (b"[" * 100_000 + b"]" * 100_000, "manifest is not valid JSON"),
        (b'{"schemaVersion": ' + b"9" * 5000 + b"}", "manifest is not valid JSON"),
    ],
)
def test_not_json(body: bytes, fragment: str) -> None:
    err = invalid(body)
    assert err.message.startswith("manifest is not valid JSON: ")
    assert fragment in err.message


def test_duplicate_keys_are_rejected_anywhere() -> None:
    body = encode(image()).replace(b'"layers"', b'"layers": [], "layers"')
    assert "duplicate key 'layers'" in invalid(body).message


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        ({"schemaVersion": 1, "name": "a", "tag": "b", "fsLayers": []}, None),
        ({"schemaVersion": 1, "name": "a"}, "application/json"),
        (image(), mt.DOCKER_SCHEMA1_SIGNED_MANIFEST),
        (image(mediaType=mt.DOCKER_SCHEMA1_MANIFEST), None),
    ],
)
def test_schema1_is_rejected_with_guidance(doc: dict[str, Any], content_type: str | None) -> None:
    assert invalid(doc, content_type).message == SCHEMA1_MESSAGE


@pytest.mark.parametrize(
    ("version", "fragment"),
    [
        (_DROP, "is required"),
        (3, "must be 2, got 3"),
        ("2", 'must be 2, got "2"'),
        (True, "got true"),
        (2.0, "got 2.0"),
    ],
)
def test_schema_version_must_be_2(version: Any, fragment: str) -> None:
    err = invalid(image(schemaVersion=version))
    assert err.message.startswith("schemaVersion")
    assert fragment in err.message


# --- descriptors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "field_name", "fragment"),
    [
        ("not an object", "layers[0]", "must be a descriptor object"),
        ({"digest": d("x")["digest"], "size": 1}, "layers[0].mediaType", "is required"),
        ({**d("x"), "mediaType": ""}, "layers[0].mediaType", "non-empty string"),
        ({**d("x"), "mediaType": 5}, "layers[0].mediaType", "non-empty string"),
        ({"mediaType": mt.OCI_LAYER_TAR, "size": 1}, "layers[0].digest", "is required"),
        ({**d("x"), "digest": 7}, "layers[0].digest", "must be a string"),
        ({**d("x"), "size": None}, "layers[0].size", "got null"),
        ({"mediaType": mt.OCI_LAYER_TAR, "digest": d("x")["digest"]}, "layers[0].size", "is required"),
        ({**d("x"), "size": -1}, "layers[0].size", ">= 0, got -1"),
        ({**d("x"), "size": 1.5}, "layers[0].size", "got 1.5"),
        ({**d("x"), "size": "1"}, "layers[0].size", 'got "1"'),
        ({**d("x"), "size": True}, "layers[0].size", "got true"),
        ({**d("x"), "size": 2**63}, "layers[0].size", "integer >= 0"),
        ({**d("x"), "urls": "https://x"}, "layers[0].urls", "list of strings"),
        ({**d("x"), "urls": [1]}, "layers[0].urls", "list of strings"),
        ({**d("x"), "artifactType": 1}, "layers[0].artifactType", "must be a string"),
        ({**d("x"), "annotations": []}, "layers[0].annotations", "strings to strings"),
        ({**d("x"), "annotations": {"a": 1}}, "layers[0].annotations", "strings to strings"),
        ({**d("x"), "platform": {"os": "linux"}}, "layers[0].platform.architecture", "is required"),
    ],
)
def test_descriptor_errors_name_the_field(layer: Any, field_name: str, fragment: str) -> None:
    err = invalid(image(layers=[layer]))
    assert err.message.startswith(field_name)
    assert fragment in err.message
    assert err.detail == {"field": field_name}


@pytest.mark.parametrize(
    ("digest", "fragment"),
    [
        ("sha256:totallywrong", "wrong length or not lowercase hex"),
        ("sha256:" + "A" * 64, "wrong length or not lowercase hex"),
        ("md5:abc", "unsupported digest algorithm"),
        ("nodigest", "expected <algorithm>:<hex>"),
    ],
)
def test_invalid_descriptor_digest_is_wrapped(digest: str, fragment: str) -> None:
    err = invalid(image(config={**CONFIG, "digest": digest}))
    assert err.message.startswith("config.digest: ")
    assert fragment in err.message
    assert err.detail == {"field": "config.digest"}
    assert err.__cause__ is not None
    assert getattr(err.__cause__, "code", None) == "DIGEST_INVALID"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (5, "must be a base64 string"),
        ("not base64!", "not valid base64"),
        ("e30", "not valid base64"),
        ("é", "not valid base64"),
        (base64.b64encode(b"{} ").decode(), "decodes to 3 bytes but size is 2"),
        (base64.b64encode(b"[]").decode(), "does not match digest"),
    ],
)
def test_embedded_data_must_match(data: Any, fragment: str) -> None:
    err = invalid(image(config={**EMPTY, "data": data}))
    assert err.message.startswith("config.data")
    assert fragment in err.message


def test_embedded_data_is_checked_with_the_descriptor_algorithm() -> None:
    content = b"hello"
    layer = {
        "mediaType": mt.OCI_LAYER_TAR,
        "digest": str(Digest.of(content, "sha512")),
        "size": 5,
        "data": base64.b64encode(content).decode(),
    }
    assert parse(image(layers=[layer])).layers[0].digest.algorithm == "sha512"


@pytest.mark.parametrize(
    ("fields", "content_type", "field_name"),
    [
        ({"config": _DROP}, mt.OCI_MANIFEST, "config"),
        ({"config": None}, mt.OCI_MANIFEST, "config"),
        ({"config": []}, mt.OCI_MANIFEST, "config"),
        ({"layers": _DROP}, mt.OCI_MANIFEST, "layers"),
        ({"layers": {}}, mt.OCI_MANIFEST, "layers"),
        ({"subject": "sha256:abc"}, mt.OCI_MANIFEST, "subject"),
        ({"artifactType": 3}, mt.OCI_MANIFEST, "artifactType"),
        ({"annotations": {"k": None}}, mt.OCI_MANIFEST, "annotations"),
        ({"annotations": "k=v"}, mt.OCI_MANIFEST, "annotations"),
    ],
)
def test_image_manifest_structure_errors(fields: dict[str, Any], content_type: str, field_name: str) -> None:
    err = invalid(image(**fields), content_type)
    assert err.detail == {"field": field_name}


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"manifests": _DROP}, "manifests"),
        ({"manifests": "x"}, "manifests"),
        ({"manifests": [{"mediaType": mt.OCI_MANIFEST}]}, "manifests[0].digest"),
        ({"manifests": [d("m", mt.OCI_MANIFEST, platform="linux/amd64")]}, "manifests[0].platform"),
        ({"manifests": [d("m", mt.OCI_MANIFEST, platform={"os": 1})]}, "manifests[0].platform.os"),
    ],
)
def test_index_structure_errors(fields: dict[str, Any], field_name: str) -> None:
    assert invalid(index(**fields), mt.OCI_INDEX).detail == {"field": field_name}


# --- value types --------------------------------------------------------------------------------


def test_descriptor_validates_and_freezes() -> None:
    annotations = {"a": "b"}
    desc = Descriptor("x/y", Digest.of(b""), 0, annotations=annotations, urls=["u"])  # type: ignore[arg-type]
    annotations["a"] = "changed"
    assert dict(desc.annotations) == {"a": "b"}
    assert desc.urls == ("u",)
    with pytest.raises(TypeError):
        desc.annotations["a"] = "c"  # type: ignore[index]
    # Annotations do not take part in the hash (a mapping is unhashable), only in equality.
    assert hash(desc) == hash(Descriptor("x/y", Digest.of(b""), 0, annotations={"other": "x"}, urls=("u",)))
    assert desc != Descriptor("x/y", Digest.of(b""), 0, annotations={"other": "x"}, urls=("u",))
    assert desc == Descriptor("x/y", Digest.of(b""), 0, annotations={"a": "b"}, urls=("u",))
    with pytest.raises(ManifestInvalidError):
        Descriptor("", Digest.of(b""), 0)
    with pytest.raises(ManifestInvalidError):
        Descriptor("x/y", Digest.of(b""), -1)


def test_descriptor_to_json_round_trips_through_the_parser() -> None:
    desc = Descriptor(
        mt.OCI_MANIFEST,
        Digest.of(b"m"),
        1,
        artifact_type="application/x",
        annotations={"k": "v"},
        platform=Platform("linux", "arm", variant="v7"),
        urls=("https://example.com",),
    )
    m = parse(index(manifests=[desc.to_json()]), mt.OCI_INDEX)
    assert m.manifests == (desc,)
    assert Descriptor("a/b", Digest.of(b""), 0).to_json() == {
        "mediaType": "a/b",
        "digest": str(Digest.of(b"")),
        "size": 0,
    }


# --- referrers ----------------------------------------------------------------------------------


def test_build_referrers_index() -> None:
    sig = ReferrerDescriptor(
        mt.OCI_MANIFEST,
        Digest.of(b"sig"),
        123,
        artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
        annotations={"created": "now"},
    )
    plain = ReferrerDescriptor(mt.OCI_INDEX, Digest.of(b"idx"), 45)
    body = build_referrers_index([sig, plain])
    doc = json.loads(body)
    assert doc == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": str(Digest.of(b"sig")),
                "size": 123,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                "annotations": {"created": "now"},
            },
            {"mediaType": mt.OCI_INDEX, "digest": str(Digest.of(b"idx")), "size": 45},
        ],
    }
    assert list(doc) == ["schemaVersion", "mediaType", "manifests"]
    # The response is itself a valid index.
    assert parse(body, mt.OCI_INDEX).manifests[0].artifact_type == sig.artifact_type


def test_empty_referrers_index() -> None:
    assert json.loads(build_referrers_index([])) == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [],
    }


def test_manifest_as_referrer() -> None:
    body = encode(image(config=EMPTY, artifactType="application/x", annotations={"k": "v"}))
    m = parse(body)
    assert m.as_referrer() == ReferrerDescriptor(
        mt.OCI_MANIFEST, Digest.of(body), len(body), artifact_type="application/x", annotations={"k": "v"}
    )
    assert parse(index(), mt.OCI_INDEX).as_referrer().artifact_type is None


# --- properties ---------------------------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=200), st.sampled_from([None, mt.OCI_MANIFEST, mt.OCI_INDEX, "application/json"]))
def test_arbitrary_bytes_only_raise_manifest_errors(body: bytes, content_type: str | None) -> None:
    with contextlib.suppress(ManifestInvalidError, ManifestTooLargeError):
        parse_manifest(body, content_type, max_bytes=100)


_keys = st.sampled_from(
    ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "annotations"]
)


@given(st.dictionaries(_keys, _json, max_size=7), st.sampled_from([None, mt.OCI_MANIFEST, mt.OCI_INDEX]))
def test_arbitrary_json_objects_only_raise_manifest_invalid(
    doc: dict[str, Any], content_type: str | None
) -> None:
    with contextlib.suppress(ManifestInvalidError):
        parse(doc, content_type)


_media_types = st.sampled_from([mt.OCI_LAYER_TAR_GZIP, mt.DOCKER_LAYER, "application/vnd.unknown+bin", "x/y"])
_descriptors = st.builds(
    lambda content, media_type, annotations: d(content, media_type, annotations=annotations),
    st.binary(max_size=20),
    _media_types,
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@given(st.lists(_descriptors, max_size=5), st.sampled_from([None, "application/x"]))
def test_valid_manifests_round_trip(layers: list[dict[str, Any]], artifact_type: str | None) -> None:
    doc = image(layers=layers, artifactType=artifact_type if artifact_type else _DROP)
    body = encode(doc)
    m = parse(body)
    assert m.digest == Digest.of(body)
    assert [layer.to_json() for layer in m.layers] == [
        {k: v for k, v in layer.items() if k != "annotations" or v} for layer in layers
    ]
    assert m.referrer_artifact_type == (artifact_type or mt.OCI_CONFIG)
    assert all(layer in m.layers for layer in m.blob_references[1:])
