"""Notary Project signatures (pure): JWS and COSE envelopes, verified against a trust store and trust policy
as the Notary Project specifies (integrity, authenticity, authentic timestamp, expiry; revocation is not
checked offline), with the verification levels strict, permissive, audit and skip and their overrides."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from services.core.signing.artifacts import NOTATION_COSE, NOTATION_JWS
from services.signer.crypto import (
    VerificationFailedError,
    check_validity,
    load_certificates,
    raw_to_der,
    subject_attributes,
    verify_chain,
)
from services.signer.verdict import Verdict, failed

MAX_ENVELOPE = 1024 * 1024
PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
SCHEMES = ("notary.x509", "notary.x509.signingAuthority")
KNOWN_CRITICAL = frozenset({
    "io.cncf.notary.signingScheme", "io.cncf.notary.expiry", "io.cncf.notary.authenticSigningTime",
    "io.cncf.notary.verificationPlugin", "io.cncf.notary.verificationPluginMinVersion", "alg", "cty", "crit",
    1, 2, 3,
})
_HASH: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_COSE_ALGS = {-7: "ES256", -35: "ES384", -36: "ES512", -37: "PS256", -38: "PS384", -39: "PS512"}
LEVELS: dict[str, dict[str, str]] = {
    "strict": {"integrity": "enforce", "authenticity": "enforce", "authenticTimestamp": "enforce",
               "expiry": "enforce", "revocation": "enforce"},
    "permissive": {"integrity": "enforce", "authenticity": "enforce", "authenticTimestamp": "log",
                   "expiry": "log", "revocation": "log"},
    "audit": {"integrity": "enforce", "authenticity": "log", "authenticTimestamp": "log", "expiry": "log",
              "revocation": "log"},
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an envelope says, whatever its encoding."""

    payload: bytes
    signed: bytes
    signature: bytes
    algorithm: str
    scheme: str
    signing_time: datetime | None
    expiry: datetime | None
    chain: tuple[x509.Certificate, ...]
    critical: tuple[Any, ...]
    protected: Mapping[Any, Any]


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    name: str
    scopes: tuple[str, ...]
    level: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    stores: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NotationTrust:
    """Trust stores (`ca:<name>`, `signingAuthority:<name>` -> root certificates) and trust policies."""

    stores: Mapping[str, Sequence[x509.Certificate]] = field(default_factory=dict)
    policies: Sequence[TrustPolicy] = ()


# parsing


def _b64url(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationFailedError(f"the JWS {what} is missing")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise VerificationFailedError(f"the JWS {what} is not base64url") from None


def _time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise VerificationFailedError(f"the {what} is not a time")


def _chain(ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_der_x509_certificate(d) for d in ders)
    except (ValueError, TypeError):
        raise VerificationFailedError("a certificate of the envelope's chain is unreadable (truncated?)") from None


def parse_jws(data: bytes) -> Envelope:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailedError("the JWS envelope is not JSON") from None
    if not isinstance(doc, dict) or "signatures" in doc:
        raise VerificationFailedError("the JWS envelope is not in flattened JSON serialization")
    protected_raw = doc.get("protected")
    protected_bytes = _b64url(protected_raw, "protected header")
    try:
        protected = json.loads(protected_bytes)
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailedError("the JWS protected header is not JSON") from None
    if not isinstance(protected, dict):
        raise VerificationFailedError("the JWS protected header is not an object")
    payload = _b64url(doc.get("payload"), "payload")
    signature = _b64url(doc.get("signature"), "signature")
    header = doc.get("header") if isinstance(doc.get("header"), dict) else {}
    x5c = (header or {}).get("x5c")
    if not isinstance(x5c, list) or not x5c:
        raise VerificationFailedError("the JWS header has no certificate chain (x5c)")
    try:
        ders = [base64.b64decode(c, validate=True) for c in x5c]
    except (binascii.Error, ValueError, TypeError):
        raise VerificationFailedError("the JWS certificate chain (x5c) is not base64") from None
    crit = protected.get("crit") or []
    return Envelope(
        payload=payload, signed=f"{protected_raw}.{doc.get('payload')}".encode(), signature=signature,
        algorithm=str(protected.get("alg", "")), scheme=str(protected.get("io.cncf.notary.signingScheme", "")),
        signing_time=_time(protected.get("io.cncf.notary.signingTime")
                           or protected.get("io.cncf.notary.authenticSigningTime"), "signing time"),
        expiry=_time(protected.get("io.cncf.notary.expiry"), "expiry"), chain=_chain(ders),
        critical=tuple(crit) if isinstance(crit, list) else (), protected=protected,
    )


def parse_cose(data: bytes) -> Envelope:
    try:
        message = cbor2.loads(data)
    except Exception:  # cbor2 raises several types for malformed input
        raise VerificationFailedError("the COSE envelope is not CBOR") from None
    if isinstance(message, cbor2.CBORTag):
        if message.tag != 18:
            raise VerificationFailedError(f"the COSE envelope is tagged {message.tag}, not COSE_Sign1 (18)")
        message = message.value
    if not isinstance(message, (list, tuple)) or len(message) != 4:
        raise VerificationFailedError("the COSE envelope is not a COSE_Sign1 message")
    protected_bytes, unprotected, payload, signature = message
    if not isinstance(protected_bytes, bytes) or not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise VerificationFailedError("the COSE_Sign1 message is malformed")
    try:
        protected = cbor2.loads(protected_bytes) if protected_bytes else {}
    except Exception:
        raise VerificationFailedError("the COSE protected header is not CBOR") from None
    if not isinstance(protected, Mapping) or not isinstance(unprotected, Mapping):
        raise VerificationFailedError("the COSE headers are not maps")
    chain = unprotected.get(33)
    ders = [chain] if isinstance(chain, bytes) else list(chain) if isinstance(chain, (list, tuple)) else None
    if not ders or not all(isinstance(d, bytes) for d in ders):
        raise VerificationFailedError("the COSE header has no certificate chain (x5chain)")
    alg = protected.get(1)
    crit = protected.get(2) or []
    signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    algorithm = _COSE_ALGS.get(alg, str(alg)) if isinstance(alg, int) else str(alg)
    return Envelope(
        payload=payload, signed=signed, signature=signature, algorithm=algorithm,
        scheme=str(protected.get("io.cncf.notary.signingScheme", "")),
        signing_time=_time(protected.get("io.cncf.notary.signingTime")
                           or protected.get("io.cncf.notary.authenticSigningTime"), "signing time"),
        expiry=_time(protected.get("io.cncf.notary.expiry"), "expiry"), chain=_chain(ders),
        critical=tuple(crit) if isinstance(crit, (list, tuple)) else (), protected=protected,
    )


def parse_envelope(data: bytes, media_type: str) -> Envelope:
    if len(data) > MAX_ENVELOPE:
        raise VerificationFailedError(f"the envelope is larger than {MAX_ENVELOPE} bytes")
    if media_type == NOTATION_JWS:
        return parse_jws(data)
    if media_type == NOTATION_COSE:
        return parse_cose(data)
    raise VerificationFailedError(f"the envelope type {media_type[:80]!r} is not JWS or COSE")


# checks


def check_signature(envelope: Envelope) -> None:
    """The envelope's signature over its signed bytes, with the leaf's key and the declared algorithm."""
    key = envelope.chain[0].public_key()
    alg = envelope.algorithm
    size = alg[2:]
    if size not in _HASH or alg[:2] not in ("PS", "ES"):
        raise VerificationFailedError(f"the signature algorithm {alg[:20]!r} is not one Notary allows")
    algorithm = _HASH[size]()
    try:
        if alg.startswith("PS"):
            if not isinstance(key, rsa.RSAPublicKey):
                raise VerificationFailedError(f"the algorithm {alg} does not match the signing key (not RSA)")
            key.verify(envelope.signature, envelope.signed,
                       padding.PSS(padding.MGF1(algorithm), algorithm.digest_size), algorithm)
        else:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise VerificationFailedError(f"the algorithm {alg} does not match the signing key (not EC)")
            key.verify(raw_to_der(envelope.signature), envelope.signed, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise VerificationFailedError("the signature does not verify with the signing certificate's key") from None


def check_payload(envelope: Envelope, *, digest: str, media_type: str | None, size: int | None) -> None:
    try:
        target = json.loads(envelope.payload)["targetArtifact"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise VerificationFailedError("the payload has no targetArtifact") from None
    if not isinstance(target, dict) or target.get("digest") != digest:
        named = target.get("digest") if isinstance(target, dict) else None
        raise VerificationFailedError(f"the payload signs another artifact ({str(named)[:80]}), not {digest}")
    if media_type is not None and target.get("mediaType") != media_type:
        raise VerificationFailedError(f"the payload's media type {str(target.get('mediaType'))[:80]} is not the "
                                      f"artifact's ({media_type})")
    if size is not None and target.get("size") != size:
        raise VerificationFailedError(f"the payload's size {target.get('size')} is not the artifact's ({size})")


def select_policy(trust: NotationTrust, repository: str) -> TrustPolicy | None:
    """The policy whose registryScopes name the repository (`<registry>/<repository>`), else the `*` one."""
    for policy in trust.policies:
        if any(s != "*" and (s == repository or s.endswith("/" + repository)) for s in policy.scopes):
            return policy
    return next((p for p in trust.policies if "*" in p.scopes), None)


def identity_matches(patterns: Sequence[str], leaf: x509.Certificate) -> bool:
    if "*" in patterns:
        return True
    have = subject_attributes(leaf.subject)
    for pattern in patterns:
        if not pattern.startswith("x509.subject:"):
            continue
        wanted: dict[str, str] = {}
        for part in pattern.removeprefix("x509.subject:").split(","):
            key, _, value = part.strip().partition("=")
            wanted[key.strip()] = value.strip()
        if wanted and all(have.get(k) == v for k, v in wanted.items()):
            return True
    return False


def verify_notation(data: bytes, media_type: str, *, repository: str, digest: str, trust: NotationTrust,
                    subject_media_type: str | None = None, subject_size: int | None = None,
                    now: datetime | None = None) -> Verdict:
    """Verify a Notary signature of the artifact `digest` in `repository` (notation's verification steps)."""
    now = now or datetime.now(UTC)
    policy = select_policy(trust, repository)
    if policy is None:
        return failed(f"no Notary trust policy applies to {repository}")
    if policy.level == "skip":
        return Verdict(True, f"trust policy {policy.name!r} skips verification")
    actions = dict(LEVELS.get(policy.level, LEVELS["strict"]))
    actions.update({k: v for k, v in policy.overrides.items() if k in actions and k != "integrity"})
    notes: list[str] = []
    try:
        envelope = parse_envelope(data, media_type)
        unknown = [c for c in envelope.critical if c not in KNOWN_CRITICAL]
        if unknown:
            raise VerificationFailedError(f"unknown critical headers {unknown[:3]}")
        if "io.cncf.notary.verificationPlugin" in envelope.protected:
            raise VerificationFailedError("the signature needs a verification plugin, which this registry "
                                          "does not run")
        if envelope.scheme not in SCHEMES:
            raise VerificationFailedError(f"the signing scheme {envelope.scheme[:40]!r} is not one Notary defines")
        check_signature(envelope)
        check_payload(envelope, digest=digest, media_type=subject_media_type, size=subject_size)
    except VerificationFailedError as exc:
        return failed(str(exc))
    leaf = envelope.chain[0]
    signed_at = envelope.signing_time.timestamp() if envelope.signing_time else None
    identity = leaf.subject.rfc4514_string()
    fields: dict[str, Any] = {"identity": identity, "signed_at": signed_at}

    def outcome(check: str, problem: str) -> Verdict | None:
        if actions.get(check) == "enforce":
            return failed(problem, **fields)
        if actions.get(check) == "log":
            notes.append(f"{check} not enforced: {problem}")
        return None

    kind = "signingAuthority" if envelope.scheme == "notary.x509.signingAuthority" else "ca"
    roots = [c for name in policy.stores if name.split(":", 1)[0] == kind for c in trust.stores.get(name, ())]
    at = envelope.signing_time or now
    try:
        verify_chain(envelope.chain, roots, at=at)
        if not identity_matches(policy.identities, leaf):
            raise VerificationFailedError(f"the signing certificate's subject ({identity}) is not a trusted "
                                          f"identity of trust policy {policy.name!r}")
    except VerificationFailedError as exc:
        refused = outcome("authenticity", str(exc))
        if refused:
            return refused
    try:
        for position, cert in enumerate(envelope.chain):
            check_validity(cert, now, "signing" if position == 0 else "chain")
    except VerificationFailedError as exc:
        refused = outcome("authenticTimestamp", str(exc))
        if refused:
            return refused
    if envelope.expiry is not None and now > envelope.expiry:
        refused = outcome("expiry", f"the signature expired at {envelope.expiry:%Y-%m-%dT%H:%M:%SZ}")
        if refused:
            return refused
    note = f" ({'; '.join(notes)})" if notes else ""
    return Verdict(True, f"verified by trust policy {policy.name!r} ({policy.level}){note}", **fields)


# configuration


def load_trust(store_dir: Path | None, policy_file: Path | None) -> NotationTrust:
    """The trust store (`x509/{ca,signingAuthority,tsa}/<name>/*.pem|crt|cer`) and trust policy
    (`trustpolicy.json` or `trustpolicy.oci.json`, version 1.0) from disk. ValueError names a bad file."""
    stores: dict[str, list[x509.Certificate]] = {}
    if store_dir is not None:
        base = store_dir / "x509" if (store_dir / "x509").is_dir() else store_dir
        for kind in ("ca", "signingAuthority", "tsa"):
            for named in sorted((base / kind).glob("*")) if (base / kind).is_dir() else []:
                certs: list[x509.Certificate] = []
                for path in sorted(named.iterdir()):
                    if path.is_symlink() or path.suffix not in (".pem", ".crt", ".cer"):
                        continue
                    try:
                        certs += load_certificates(path.read_bytes())
                    except ValueError:
                        raise ValueError(f"{path}: not a certificate") from None
                stores[f"{kind}:{named.name}"] = certs
    policies: list[TrustPolicy] = []
    if policy_file is not None:
        try:
            doc = json.loads(policy_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{policy_file}: {exc}") from None
        for raw in doc.get("trustPolicies") or []:
            verification = raw.get("signatureVerification") or {}
            policies.append(TrustPolicy(
                name=str(raw.get("name", "")), scopes=tuple(raw.get("registryScopes") or ()),
                level=str(verification.get("level", "strict")),
                overrides={str(k): str(v) for k, v in (verification.get("override") or {}).items()},
                stores=tuple(raw.get("trustStores") or ()), identities=tuple(raw.get("trustedIdentities") or ()),
            ))
    return NotationTrust(stores, policies)
