"""Transparency-log entries (Rekor v1) as cosign's `dev.sigstore.cosign/bundle` annotation and Sigstore bundles
carry them, checked offline (pure).

A keyless certificate lives ten minutes, so it is checked at the time the log integrated the signature, not now.
That time is only evidence when the log vouches for it: the entry's signed entry timestamp (SET) must verify with a
configured log key (`signer.rekor_public_keys`, `signer.sigstore_trusted_root`), within that key's validity, and the
entry's body must name this very signature, certificate and artifact, or a SET of another entry could lend its time.
An unverified `integratedTime` is whatever the signer wrote: it never stands in for now (a key leaked from an
expired certificate could otherwise sign anything, backdated)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)
from pydantic import ValidationError
from sigstore_models.trustroot.v1 import TrustedRoot

from services.core.signing.keys import key_id
from services.signer.crypto import verify_any

MAX_BODY = 256 * 1024


@dataclass(frozen=True, slots=True)
class LogEntry:
    body: bytes
    """The canonicalized entry body (JSON), decoded."""
    integrated_time: int
    log_index: int
    log_id: str
    """Hex SHA-256 of the log key's DER SubjectPublicKeyInfo."""
    signed_entry_timestamp: bytes


@dataclass(frozen=True, slots=True)
class LogKey:
    """A transparency log's key, and when it signed (a trusted root's `validFor`; open ends: unbounded). A key
    vouches only for entries integrated in its window: a log's retired key is no evidence for later times."""

    key: PublicKeyTypes
    start: float | None = None
    end: float | None = None

    def covers(self, when: float) -> bool:
        return (self.start is None or when >= self.start) and (self.end is None or when <= self.end)


@dataclass(frozen=True, slots=True)
class Signed:
    """What an entry must name to vouch for a signature: the signature, the certificate or key that verified it,
    and the signed artifact by SHA-256 (hex): the simple-signing payload or message (`hashedrekord`), or the DSSE
    payload (`dsse`)."""

    signature: bytes
    verifier: x509.Certificate | PublicKeyTypes
    artifact_sha256: str


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def log_id(key: PublicKeyTypes) -> str:
    """A Rekor log id: the key id (`keys.key_id`, SHA-256 of the SubjectPublicKeyInfo) in bare hex."""
    return key_id(key).removeprefix("sha256:")


def load_log_keys(pem: bytes) -> dict[str, LogKey]:
    """Every PUBLIC KEY block of `pem`, by log id. ValueError when there is none or one is unreadable."""
    keys: dict[str, LogKey] = {}
    marker = b"-----BEGIN PUBLIC KEY-----"
    for block in pem.split(marker)[1:]:
        try:
            key = load_pem_public_key(marker + block.split(b"-----END PUBLIC KEY-----")[0]
                                      + b"-----END PUBLIC KEY-----")
        except UnsupportedAlgorithm as exc:
            raise ValueError(f"a key of an unsupported algorithm ({str(exc)[:80]})") from None
        keys[log_id(key)] = LogKey(key)
    if not keys:
        raise ValueError("no PEM PUBLIC KEY block")
    return keys


def load_trusted_root(data: bytes) -> tuple[list[x509.Certificate], dict[str, LogKey]]:
    """A Sigstore `trusted_root.json` (what cosign keeps from the instance's TUF repository): its certificate
    authorities' certificates (keyless roots) and its transparency logs' keys by log id, with their `validFor`.
    ValueError naming what is wrong. (A certificate authority's own `validFor` is left to its certificates'.)"""
    try:
        root = TrustedRoot.from_json(data)
        certificates = [x509.load_der_x509_certificate(c.raw_bytes) for ca in root.certificate_authorities
                        for c in ca.cert_chain.certificates]
        keys: dict[str, LogKey] = {}
        for log in root.tlogs:
            public = log.public_key
            if public.raw_bytes:
                key = load_der_public_key(public.raw_bytes)
                window = public.valid_for
                keys[log_id(key)] = LogKey(key, window.start.timestamp() if window and window.start else None,
                                           window.end.timestamp() if window and window.end else None)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        raise ValueError(f"not a Sigstore trusted root ({'.'.join(map(str, first['loc']))}: {first['msg']})"
                         ) from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a Sigstore trusted root ({str(exc)[:100]})") from None
    return certificates, keys


def set_payload(entry: LogEntry) -> bytes:
    """The bytes a Rekor v1 SET signs: the canonical JSON (RFC 8785: sorted keys, no blanks; these values need no
    escaping beyond JSON's) of the entry's body (base64), integrated time, log index and log id (hex)."""
    return json.dumps({"body": base64.b64encode(entry.body).decode(), "integratedTime": entry.integrated_time,
                       "logID": entry.log_id, "logIndex": entry.log_index},
                      sort_keys=True, separators=(",", ":")).encode()


def entry_from_cosign_bundle(raw: str) -> LogEntry | None:
    """The entry of cosign's bundle annotation `{SignedEntryTimestamp, Payload{body, integratedTime, logIndex,
    logID}}`, or None when it is not one."""
    try:
        doc = json.loads(raw)
        payload = doc["Payload"]
        return LogEntry(body=_b64(payload["body"]), integrated_time=_int(payload["integratedTime"]),
                        log_index=_int(payload["logIndex"]), log_id=str(payload["logID"]).lower(),
                        signed_entry_timestamp=_b64(doc["SignedEntryTimestamp"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _b64(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * MAX_BODY:
        raise ValueError("not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("not an integer")
    return int(value)


def _same_verifier(pem_b64: Any, verifier: x509.Certificate | PublicKeyTypes) -> bool:
    """The entry's verifier (base64 of a PEM certificate or public key) is `verifier`: the very certificate (its
    identity counts), or a key with the same public key."""
    try:
        pem = _b64(pem_b64)
        if isinstance(verifier, x509.Certificate):
            return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER) == verifier.public_bytes(Encoding.DER)
        named = x509.load_pem_x509_certificate(pem).public_key() if b"CERTIFICATE" in pem else load_pem_public_key(pem)
    except (ValueError, TypeError):
        return False
    return _spki(named) == _spki(verifier)


def _same_signature(b64: Any, signature: bytes) -> bool:
    try:
        return _b64(b64) == signature
    except ValueError:
        return False


def _sha256_of(hashed: Any) -> str:
    if isinstance(hashed, dict) and str(hashed.get("algorithm", "")).lower() == "sha256":
        return str(hashed.get("value", "")).lower()
    return ""


def names(body: bytes, signed: Signed) -> str | None:
    """None when the entry body names `signed`, else why not."""
    if len(body) > MAX_BODY:
        return "its body is too large"
    try:
        doc = json.loads(body)
        kind, spec = doc["kind"], doc["spec"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "its body is not a Rekor entry"
    if not isinstance(spec, dict):
        return "its body is not a Rekor entry"
    if kind == "hashedrekord":
        data, signature = spec.get("data") or {}, spec.get("signature") or {}
        if not isinstance(data, dict) or not isinstance(signature, dict):
            return "its body is not a Rekor entry"
        if _sha256_of(data.get("hash")) != signed.artifact_sha256.lower():
            return "it logs another artifact"
        public = signature.get("publicKey") or {}
        if not _same_signature(signature.get("content"), signed.signature):
            return "it logs another signature"
        if not isinstance(public, dict) or not _same_verifier(public.get("content"), signed.verifier):
            return "it logs another certificate or key"
        return None
    if kind == "dsse":
        if _sha256_of(spec.get("payloadHash")) != signed.artifact_sha256.lower():
            return "it logs another artifact"
        for entry in spec.get("signatures") or []:
            if isinstance(entry, dict) and _same_signature(entry.get("signature"), signed.signature) \
                    and _same_verifier(entry.get("verifier"), signed.verifier):
                return None
        return "it logs another signature or certificate"
    return f"its kind {str(kind)[:40]!r} is not one this registry reads (hashedrekord, dsse)"


def trusted_time(entries: Iterable[LogEntry], signed: Signed, keys: Mapping[str, LogKey]) \
        -> tuple[float | None, str]:
    """The integrated time of the first entry a configured log vouches for and that names `signed`, and "";
    else None and why no entry's time is trusted (for the verdict's reason)."""
    why = "the signature has no transparency-log entry"
    for entry in entries:
        key = keys.get(entry.log_id)
        if key is None:
            why = ("no configured transparency-log key (signer.rekor_public_keys, signer.sigstore_trusted_root) is the "
                   f"key of its log ({entry.log_id[:16]}…)" if keys else
                   "no transparency-log key is configured (signer.rekor_public_keys or signer.sigstore_trusted_root) "
                   "to check its entry's time")
            continue
        if not verify_any(key.key, entry.signed_entry_timestamp, set_payload(entry)):
            why = "its transparency-log entry's signed timestamp does not verify with the log's key"
            continue
        if not key.covers(entry.integrated_time):
            why = "its transparency-log entry's time is outside the validity of the log's key"
            continue
        problem = names(entry.body, signed)
        if problem:
            why = f"its transparency-log entry does not vouch for this signature: {problem}"
            continue
        return float(entry.integrated_time), ""
    return None, why
