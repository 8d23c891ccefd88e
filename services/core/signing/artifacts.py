"""Signature artifacts by their media types and tags (pure): cosign's tag scheme, cosign's and Sigstore's OCI
1.1 referrers, Notary Project signatures, and the attestation/SBOM artifacts exempt from the signature gate."""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_ATT_ARTIFACT = "application/vnd.dev.cosign.artifact.att.v1+json"
COSIGN_SBOM_ARTIFACT = "application/vnd.dev.cosign.artifact.sbom.v1+json"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGSTORE_BUNDLE_ALT = "application/vnd.dev.sigstore.bundle+json;version=0.3"
NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
NOTATION_JWS = "application/jose+json"
NOTATION_COSE = "application/cose"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"

COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_CERTIFICATE_ANNOTATIONS = ("dev.sigstore.cosign/certificate", "dev.cosignproject.cosign/certificate")
COSIGN_CHAIN_ANNOTATIONS = ("dev.sigstore.cosign/chain", "dev.cosignproject.cosign/chain")
BUNDLE_CONTENT_ANNOTATION = "dev.sigstore.bundle.content"
BUNDLE_PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
NOTATION_THUMBPRINTS = "io.cncf.notary.x509chain.thumbprint#S256"

SIGNATURE_TAG = re.compile(r"^(?P<alg>sha256|sha512)-(?P<hex>[a-f0-9]{64}|[a-f0-9]{128})\.sig$")
COSIGN_TAG = re.compile(r"^(sha256|sha512)-([a-f0-9]{64}|[a-f0-9]{128})\.(sig|att|sbom)$")

SIGNATURE_ARTIFACT_TYPES = frozenset({COSIGN_SIG_ARTIFACT, SIGSTORE_BUNDLE, SIGSTORE_BUNDLE_ALT, NOTATION_SIGNATURE})
"""Referrers whose presence means "this image has a signature" (pending until the signer has checked it)."""

_EXEMPT_MARKERS = (
    "signature", "sigstore", "cosign", "notary", "in-toto", "intoto", "dsse", "attestation", "sbom", "spdx",
    "cyclonedx", "provenance", "slsa", "vex",
)
"""Words in an artifactType that mark supply-chain metadata: a referrer of that kind is never gated."""


class SignatureFormat(StrEnum):
    COSIGN = "cosign"
    COSIGN_BUNDLE = "cosign-bundle"
    NOTATION = "notation"


def signed_digest_of_tag(tag: str) -> str | None:
    """`sha256:<hex>` for cosign's signature tag `sha256-<hex>.sig`, else None."""
    match = SIGNATURE_TAG.match(tag)
    return f"{match['alg']}:{match['hex']}" if match else None


def signature_tag(digest: str) -> str:
    """Cosign's signature tag of an image digest: `sha256:<hex>` -> `sha256-<hex>.sig`."""
    alg, _, hex_ = digest.partition(":")
    return f"{alg}-{hex_}.sig"


def is_supply_chain_artifact(artifact_type: str | None, *, layer_types: Iterable[str] = ()) -> bool:
    """Signatures, attestations and SBOMs (by artifactType, or by cosign's layer types for a tag-scheme
    manifest, whose artifactType is empty)."""
    kinds = [artifact_type or "", *layer_types]
    return any(marker in kind.lower() for kind in kinds if kind for marker in _EXEMPT_MARKERS)


def is_cosign_tag(tag: str) -> bool:
    return COSIGN_TAG.match(tag) is not None
