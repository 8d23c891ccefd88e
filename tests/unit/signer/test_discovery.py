"""Discovery: every form clients write is recognised, with its subject; anything else is not a signature."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.signing.artifacts import (
    COSIGN_SIG_ARTIFACT,
    COSIGN_SIMPLESIGNING,
    NOTATION_COSE,
    NOTATION_JWS,
    NOTATION_SIGNATURE,
    SIGSTORE_BUNDLE,
    SignatureFormat,
    is_supply_chain_artifact,
    signed_digest_of_tag,
)
from services.signer.discovery import classify

IMAGE = "sha256:" + "ab" * 32
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:" + "44" * 32, "size": 2}


def manifest(layers: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": extra.pop("config", EMPTY), "layers": layers, **extra}).encode()


def layer(media_type: str, **annotations: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + "cd" * 32, "size": 10, "annotations": annotations}


def test_cosign_tag_scheme() -> None:
    data = manifest([layer(COSIGN_SIMPLESIGNING, **{"dev.cosignproject.cosign/signature": "MEUC"}),
                     layer(COSIGN_SIMPLESIGNING, **{"dev.cosignproject.cosign/signature": "MEYC"})],
                    config={"mediaType": "application/vnd.oci.image.config.v1+json", "digest": IMAGE, "size": 3})
    found = classify(data, tags=["sha256-" + "ab" * 32 + ".sig"])
    assert found is not None and found.format == SignatureFormat.COSIGN and found.subject == IMAGE
    assert [x.index for x in found.layers] == [0, 1] and found.via == "tag"
    assert found.layers[0].annotations["dev.cosignproject.cosign/signature"] == "MEUC"
    # The same manifest without its tag, and the attestation tag, are not signatures.
    assert classify(data) is None
    assert classify(data, tags=["sha256-" + "ab" * 32 + ".att"]) is None


def test_cosign_referrers_legacy_and_bundle() -> None:
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": IMAGE, "size": 5}
    legacy = manifest([layer(COSIGN_SIMPLESIGNING)], artifactType=COSIGN_SIG_ARTIFACT, subject=subject)
    found = classify(legacy)
    assert found is not None and found.format == SignatureFormat.COSIGN and found.subject == IMAGE
    bundle = manifest([layer(SIGSTORE_BUNDLE)], artifactType=SIGSTORE_BUNDLE, subject=subject)
    found = classify(bundle, subject=IMAGE, artifact_type=SIGSTORE_BUNDLE)
    assert found is not None and found.format == SignatureFormat.COSIGN_BUNDLE and len(found.layers) == 1


def test_notation_jws_cose_and_legacy_config() -> None:
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": IMAGE, "size": 5}
    for media_type in (NOTATION_JWS, NOTATION_COSE):
        found = classify(manifest([layer(media_type)], artifactType=NOTATION_SIGNATURE, subject=subject))
        assert found is not None and found.format == SignatureFormat.NOTATION
        assert found.layers[0].media_type == media_type
    legacy = manifest([layer(NOTATION_JWS)], config={"mediaType": NOTATION_SIGNATURE, "digest": IMAGE, "size": 2},
                      subject=subject)
    found = classify(legacy)
    assert found is not None and found.format == SignatureFormat.NOTATION


def test_other_manifests_are_not_signatures() -> None:
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": IMAGE, "size": 5}
    assert classify(manifest([layer("application/vnd.oci.image.layer.v1.tar+gzip")])) is None
    assert classify(manifest([layer("application/spdx+json")], artifactType="application/spdx+json",
                             subject=subject)) is None
    assert classify(b"not json") is None and classify(b"[]") is None
    # A signature type without a subject cannot say what it signs.
    assert classify(manifest([layer(NOTATION_JWS)], artifactType=NOTATION_SIGNATURE)) is None


def test_tags_and_exemptions() -> None:
    assert signed_digest_of_tag("sha256-" + "ab" * 32 + ".sig") == IMAGE
    assert signed_digest_of_tag("sha256-" + "ab" * 32) is None and signed_digest_of_tag("v1.sig") is None
    assert is_supply_chain_artifact(NOTATION_SIGNATURE)
    assert is_supply_chain_artifact("application/vnd.cyclonedx+json")
    assert is_supply_chain_artifact(None, layer_types=[COSIGN_SIMPLESIGNING])
    assert not is_supply_chain_artifact(None, layer_types=["application/vnd.oci.image.layer.v1.tar+gzip"])
    assert not is_supply_chain_artifact("application/vnd.oci.image.config.v1+json")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.text(max_size=80), max_size=3))
def test_classify_never_raises(data: bytes, tags: list[str]) -> None:
    classify(data, tags=tags)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                    max_leaves=20))
def test_classify_survives_any_json(doc: object) -> None:
    classify(json.dumps(doc).encode(), tags=["sha256-" + "ab" * 32 + ".sig"], subject=IMAGE,
             artifact_type=NOTATION_SIGNATURE)
