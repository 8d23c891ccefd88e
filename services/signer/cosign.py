"""Cosign simple-signing signatures (pure): the payload names the image digest; the signature (base64 in the
layer's `dev.cosignproject.cosign/signature` annotation) is over the exact payload bytes; it verifies with a
trusted public key, or (keyless) with a certificate chaining to a configured root whose identity (OIDC
issuer and subject) the policy trusts."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from services.core.signing.artifacts import (
    COSIGN_CERTIFICATE_ANNOTATIONS,
    COSIGN_CHAIN_ANNOTATIONS,
    COSIGN_SIGNATURE_ANNOTATION,
)
from services.signer import tlog
from services.signer.crypto import VerificationFailedError, load_certificates, verify_any, verify_chain
from services.signer.verdict import CosignTrust, Verdict, failed

COSIGN_TYPE = "cosign container image signature"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
FULCIO_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
FULCIO_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
MAX_PAYLOAD = 1024 * 1024


def _lower_keys(value: Any) -> Any:
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def check_payload(payload: bytes, subject: str) -> None:
    """The simple-signing payload must be cosign's type and name `subject`. VerificationFailedError else."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailedError("the payload is not JSON") from None
    critical = _lower_keys(_lower_keys(doc).get("critical"))
    if critical.get("type") != COSIGN_TYPE:
        raise VerificationFailedError(f"the payload's type is {str(critical.get('type'))[:80]!r}, not {COSIGN_TYPE!r}")
    named = _lower_keys(critical.get("image")).get("docker-manifest-digest")
    if not isinstance(named, str) or named.lower() != subject.lower():
        raise VerificationFailedError(f"the payload signs another image ({str(named)[:80]}), not {subject}")


def fulcio_identity(cert: x509.Certificate) -> tuple[str, str]:
    """(issuer, subject) of a Fulcio certificate: the OIDC issuer extension, and the e-mail or URI SAN."""
    issuer = ""
    for oid in (FULCIO_ISSUER_V2, FULCIO_ISSUER_V1):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        value = raw.value if isinstance(raw, x509.UnrecognizedExtension) else b""
        if oid == FULCIO_ISSUER_V2 and len(value) > 2 and value[0] == 0x0C:
            value = value[2:] if value[1] < 0x80 else value[2 + (value[1] & 0x7F):]
        issuer = value.decode(errors="replace")
        break
    subject = ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.UniformResourceIdentifier)
        subject = names[0] if names else ""
    except x509.ExtensionNotFound:
        pass
    return issuer, subject


def check_certificate(cert: x509.Certificate, chain: list[x509.Certificate], trust: CosignTrust, *,
                      logged: tuple[float | None, str]) -> Verdict:
    """Keyless, past the signature check: the certificate chains to a configured root, valid when a transparency
    log vouches the signature was made (`logged`: `tlog.trusted_time`'s answer), else now; and its identity is one
    the policy trusts."""
    issuer, subject = fulcio_identity(cert)
    signed_at, untrusted = logged
    at = datetime.fromtimestamp(signed_at, UTC) if signed_at is not None else datetime.now(UTC)
    fields: dict[str, Any] = {"identity": subject, "issuer": issuer, "signed_at": signed_at}
    try:
        verify_chain([cert, *chain], trust.roots, at=at)
    except VerificationFailedError as exc:
        # Checked now because no log vouched for the signing time: say why, or "expired" reads as the whole story.
        return failed(f"{exc} (checked now: {untrusted})" if signed_at is None and untrusted else str(exc), **fields)
    if not any(i.issuer == issuer and i.subject == subject for i in trust.identities):
        return failed(f"the certificate's identity (issuer {issuer or '?'}, subject {subject or '?'}) is not one "
                      "the policy trusts", **fields)
    return Verdict(True, f"verified: certificate of {subject} issued by {issuer}", **fields)


def verify_with_certificate(cert: x509.Certificate, chain: list[x509.Certificate], signature: bytes, data: bytes,
                            trust: CosignTrust, *, logged: tuple[float | None, str]) -> Verdict:
    """Keyless: the certificate's key verifies the signature, then check_certificate."""
    if not verify_any(cert.public_key(), signature, data):
        issuer, subject = fulcio_identity(cert)
        return failed("the signature does not verify with the certificate's key", identity=subject, issuer=issuer)
    return check_certificate(cert, chain, trust, logged=logged)


def _log_entries(annotations: Mapping[str, str]) -> list[tlog.LogEntry]:
    entry = tlog.entry_from_cosign_bundle(annotations.get(BUNDLE_ANNOTATION) or "")
    return [entry] if entry is not None else []


def verify_simple_signing(payload: bytes, annotations: Mapping[str, str], *, subject: str, trust: CosignTrust,
                          expected_digest: str | None = None) -> Verdict:
    """Check one simple-signing layer: its blob `payload` (digest `expected_digest` as the manifest says)
    and its annotations, for the image `subject`."""
    artifact = hashes_sha256(payload)  # also what a transparency-log entry must name
    if expected_digest is not None:
        algorithm, _, hex_ = expected_digest.partition(":")
        if algorithm != "sha256" or artifact != hex_:
            return failed("the payload does not match the digest its manifest names")
    encoded = annotations.get(COSIGN_SIGNATURE_ANNOTATION, "")
    if not encoded:
        return failed("the layer has no signature annotation (dev.cosignproject.cosign/signature)")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return failed("the signature annotation is not base64")
    try:
        check_payload(payload, subject)
    except VerificationFailedError as exc:
        return failed(str(exc))
    entries = _log_entries(annotations)
    pem = next((annotations[a] for a in COSIGN_CERTIFICATE_ANNOTATIONS if annotations.get(a)), "")
    for key_id, key in trust.keys.items():
        if verify_any(key, signature, payload):
            signed_at, _ = tlog.trusted_time(entries, tlog.Signed(signature, key, artifact), trust.log_keys)
            return Verdict(True, f"verified with key {key_id}", key_id=key_id, signed_at=signed_at)
    if pem:
        try:
            cert = load_certificates(pem.encode())[0]
            chain_pem = next((annotations[a] for a in COSIGN_CHAIN_ANNOTATIONS if annotations.get(a)), "")
            chain = load_certificates(chain_pem.encode()) if chain_pem else []
        except (ValueError, IndexError):
            return failed("the certificate annotation is not a readable PEM certificate (truncated?)")
        return verify_with_certificate(cert, chain, signature, payload, trust,
                                       logged=tlog.trusted_time(entries, tlog.Signed(signature, cert, artifact),
                                                                trust.log_keys))
    if not trust.keys:
        return failed("no trusted key is configured (the policy's signing.keys) and the signature has no "
                      "certificate")
    return failed(f"no trusted key verifies the signature ({len(trust.keys)} tried)")


def hashes_sha256(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()
