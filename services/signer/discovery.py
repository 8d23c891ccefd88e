"""Discovery (pure): is a pushed manifest a signature, of which image, in which format, and where are its
signatures? Every form clients write:

- cosign's tag scheme: a manifest tagged `sha256-<hex>.sig` whose simple-signing layers carry the signature in
  the `dev.cosignproject.cosign/signature` annotation (certificate and chain beside it when keyless);
- cosign's OCI 1.1 referrers: the legacy artifact type `application/vnd.dev.cosign.artifact.sig.v1+json`
  (simple-signing layers, `subject` = image), and the Sigstore bundle v0.3 cosign 3 writes by default
  (`artifactType` and one layer `application/vnd.dev.sigstore.bundle.v0.3+json`);
- Notary Project signatures (`artifactType`, or legacy `config.mediaType`,
  `application/vnd.cncf.notary.signature`) with one JWS (`application/jose+json`) or COSE
  (`application/cose`) layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.signing.artifacts import (
    COSIGN_SIG_ARTIFACT,
    COSIGN_SIMPLESIGNING,
    NOTATION_COSE,
    NOTATION_JWS,
    NOTATION_SIGNATURE,
    SIGSTORE_BUNDLE,
    SIGSTORE_BUNDLE_ALT,
    SignatureFormat,
    signed_digest_of_tag,
)

MAX_LAYERS = 64
"""A `.sig` manifest with more signatures than this is read up to this many."""


@dataclass(frozen=True, slots=True)
class SignatureLayer:
    """One layer holding a signature (or its payload), as the manifest describes it."""

    index: int
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignatureArtifact:
    """A manifest recognised as a signature of the image `subject`."""

    format: SignatureFormat
    subject: str
    layers: tuple[SignatureLayer, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    via: str = "referrer"
    """`tag` (cosign's `.sig` tag) or `referrer` (OCI 1.1 subject)."""


def _layers(doc: Mapping[str, Any], media_types: Sequence[str] | None) -> tuple[SignatureLayer, ...]:
    found: list[SignatureLayer] = []
    for i, layer in enumerate(doc.get("layers") or ()):
        if not isinstance(layer, dict) or i >= MAX_LAYERS:
            continue
        media_type = str(layer.get("mediaType", ""))
        if media_types is not None and media_type not in media_types:
            continue
        annotations = layer.get("annotations") or {}
        size = layer.get("size")
        found.append(SignatureLayer(
            index=i, media_type=media_type, digest=str(layer.get("digest", "")),
            size=size if isinstance(size, int) else -1,
            annotations={str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
        ))
    return tuple(found)


def classify(data: bytes, *, tags: Sequence[str] = (), subject: str | None = None,
             artifact_type: str | None = None) -> SignatureArtifact | None:
    """The signature `data` (manifest bytes) is, or None for anything else (images, SBOMs, attestations,
    unreadable manifests). `tags` are the tags its push set; `subject` and `artifact_type` as stored."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    notes = {str(k): str(v) for k, v in (annotations or {}).items()}
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    kind = artifact_type or str(doc.get("artifactType") or "") or str((config or {}).get("mediaType") or "")
    if subject is None and isinstance(doc.get("subject"), dict):
        subject = str(doc["subject"].get("digest") or "") or None
    for tag in tags:
        signed = signed_digest_of_tag(tag)
        if signed is not None:
            return SignatureArtifact(SignatureFormat.COSIGN, signed, _layers(doc, [COSIGN_SIMPLESIGNING]), notes,
                                     via="tag")
    if subject is None:
        return None
    if kind == COSIGN_SIG_ARTIFACT:
        return SignatureArtifact(SignatureFormat.COSIGN, subject, _layers(doc, [COSIGN_SIMPLESIGNING]), notes)
    if kind in (SIGSTORE_BUNDLE, SIGSTORE_BUNDLE_ALT):
        return SignatureArtifact(SignatureFormat.COSIGN_BUNDLE, subject,
                                 _layers(doc, [SIGSTORE_BUNDLE, SIGSTORE_BUNDLE_ALT]), notes)
    if kind == NOTATION_SIGNATURE:
        return SignatureArtifact(SignatureFormat.NOTATION, subject, _layers(doc, [NOTATION_JWS, NOTATION_COSE]),
                                 notes)
    return None
