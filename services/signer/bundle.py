"""Sigstore bundle v0.3 signatures (pure), as cosign 3 writes them by default: parsed with the `sigstore`
project's models (sigstore-models), checked offline. The bundle either signs a DSSE envelope holding an
in-toto statement whose subject is the image digest (`cosign sign`: predicate
`https://sigstore.dev/cosign/sign/v1`), or a message by its digest (which must be the image digest). Its
verification material is a public key (checked against trusted keys) or a certificate (chained to the
configured roots, identity trusted, valid when a configured transparency log vouches it was signed: `tlog`)."""

from __future__ import annotations

import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from pydantic import ValidationError
from sigstore_models.bundle.v1 import Bundle

from services.signer import tlog
from services.signer.cosign import check_certificate
from services.signer.crypto import verify_any, verify_prehashed
from services.signer.verdict import CosignTrust, Verdict, failed

MAX_BUNDLE = 1024 * 1024
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: the bytes a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def parse(data: bytes) -> Bundle:
    """The bundle in `data`; ValueError naming what is wrong."""
    if len(data) > MAX_BUNDLE:
        raise ValueError(f"the bundle is larger than {MAX_BUNDLE} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the bundle is not JSON ({str(exc)[:100]})") from None
    material = doc.get("verificationMaterial") if isinstance(doc, dict) else None
    if isinstance(material, dict):
        # Written without a transparency log (cosign --tlog-upload=false), the bundle has no tlogEntries;
        # the protobuf JSON mapping allows that (an empty repeated field), the strict model does not.
        material.setdefault("tlogEntries", [])
    try:
        return Bundle.from_json(json.dumps(doc))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"the bundle is malformed ({where}: {first['msg']})") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the bundle is malformed ({str(exc)[:100]})") from None


def _statement_names(payload: bytes, subject: str) -> str | None:
    """None when the in-toto statement names `subject`, else the reason."""
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "the DSSE payload is not JSON"
    if not isinstance(statement, dict):
        return "the DSSE payload is not an in-toto statement"
    algorithm, _, hex_ = subject.partition(":")
    subjects = statement.get("subject") or []
    for entry in subjects if isinstance(subjects, list) else []:
        digests = entry.get("digest") if isinstance(entry, dict) else None
        if isinstance(digests, dict) and str(digests.get(algorithm, "")).lower() == hex_.lower():
            return None
    named = [str((e.get("digest") or {}).get("sha256", ""))[:12] for e in subjects if isinstance(e, dict)] \
        if isinstance(subjects, list) else []
    return f"the statement signs another image (sha256:{', '.join(named) or 'nothing'}…), not {subject}"


def _log_entries(bundle: Bundle) -> list[tlog.LogEntry]:
    """The entries that carry a signed entry timestamp (a Rekor v1 inclusion promise); an entry with only an
    inclusion proof (Rekor v2) dates nothing here: its time would come from a timestamp authority."""
    entries = []
    for entry in bundle.verification_material.tlog_entries:
        promise = entry.inclusion_promise
        if promise is None or not entry.integrated_time or entry.log_id is None:
            continue
        entries.append(tlog.LogEntry(body=entry.canonicalized_body, integrated_time=int(entry.integrated_time),
                                     log_index=int(entry.log_index), log_id=entry.log_id.key_id.hex(),
                                     signed_entry_timestamp=promise.signed_entry_timestamp))
    return entries


def verify_bundle(data: bytes, *, subject: str, trust: CosignTrust) -> Verdict:
    """Check a bundle layer for the image `subject`."""
    try:
        bundle = parse(data)
    except ValueError as exc:
        return failed(str(exc))
    material = bundle.verification_material
    entries = _log_entries(bundle)
    if bundle.dsse_envelope is not None:
        envelope = bundle.dsse_envelope
        if not envelope.signatures:
            return failed("the DSSE envelope has no signature")
        problem = _statement_names(envelope.payload, subject)
        if problem:
            return failed(problem)
        signature, signed = envelope.signatures[0].sig, pae(envelope.payload_type, envelope.payload)
        prehashed: bytes | None = None
        artifact = hashlib.sha256(envelope.payload).hexdigest()
    elif bundle.message_signature is not None:
        message = bundle.message_signature
        if message.message_digest is None:
            return failed("the message signature has no message digest")
        hex_ = subject.partition(":")[2]
        if message.message_digest.digest.hex() != hex_.lower():
            return failed(f"the bundle signs another message (sha256:{message.message_digest.digest.hex()[:12]}…), "
                          f"not {subject}")
        signature, signed, prehashed = message.signature, b"", message.message_digest.digest
        artifact = message.message_digest.digest.hex()
    else:
        return failed("the bundle has neither a DSSE envelope nor a message signature")

    def verifies(key: PublicKeyTypes) -> bool:
        if prehashed is not None:
            return verify_prehashed(key, signature, prehashed)
        return verify_any(key, signature, signed)

    certificate = material.certificate
    chain = material.x509_certificate_chain
    if certificate is not None or (chain is not None and chain.certificates):
        try:
            raw = certificate.raw_bytes if certificate is not None else chain.certificates[0].raw_bytes  # type: ignore[union-attr]
            cert = x509.load_der_x509_certificate(raw)
            rest = [x509.load_der_x509_certificate(c.raw_bytes) for c in (chain.certificates[1:] if chain else [])]
        except ValueError:
            return failed("the bundle's certificate is not a readable DER certificate (truncated?)")
        if not verifies(cert.public_key()):
            return failed("the signature does not verify with the certificate's key")
        logged = tlog.trusted_time(entries, tlog.Signed(signature, cert, artifact), trust.log_keys)
        return check_certificate(cert, rest, trust, logged=logged)
    for key_id, key in trust.keys.items():
        if verifies(key):
            signed_at, _ = tlog.trusted_time(entries, tlog.Signed(signature, key, artifact), trust.log_keys)
            return Verdict(True, f"verified with key {key_id}", key_id=key_id, signed_at=signed_at)
    if not trust.keys:
        return failed("no trusted key is configured (the policy's signing.keys)")
    return failed(f"no trusted key verifies the signature ({len(trust.keys)} tried)")
