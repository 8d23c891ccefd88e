"""Signatures made with libraries, for the tests: cosign simple-signing layers, Sigstore bundles (DSSE and
message signature, key and certificate), Notary JWS and COSE envelopes under a test CA."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.oci.digest import Digest
from services.core.signing.sign import sign_bytes, simple_signing_payload
from services.signer import tlog

FULCIO_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def pem(private: PrivateKeyTypes) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def cosign_layer(private: PrivateKeyTypes, subject: str, *, reference: str = "r/x") -> tuple[bytes, dict[str, str]]:
    payload = simple_signing_payload(Digest.parse(subject), reference)
    return payload, {"dev.cosignproject.cosign/signature": base64.b64encode(sign_bytes(private, payload)).decode()}


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                      "Hanzo Test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test Root", *, days: int = 3650) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=30))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Ca(key, cert)


def make_leaf(ca: Ca, *, cn: str = "signer", key: PrivateKeyTypes | None = None, not_before: datetime | None = None,
              not_after: datetime | None = None, email: str | None = None, issuer_url: str | None = None
              ) -> tuple[PrivateKeyTypes, x509.Certificate]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
               .not_valid_before(not_before or now - timedelta(hours=1))
               .not_valid_after(not_after or now + timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False))
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    if issuer_url:
        raw = issuer_url.encode()
        builder = builder.add_extension(x509.UnrecognizedExtension(FULCIO_ISSUER_V2, b"\x0c" + bytes([len(raw)]) + raw),
                                        critical=False)
    return key, builder.sign(ca.key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def in_toto(subject: str) -> bytes:
    return json.dumps({"_type": "https://in-toto.io/Statement/v1",
                       "subject": [{"name": "r/x", "digest": {"sha256": subject.partition(":")[2]}}],
                       "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}).encode()


@dataclass
class Log:
    """A transparency log for the tests: its key signs entries' timestamps as Rekor v1 does."""

    key: ec.EllipticCurvePrivateKey

    @property
    def log_id(self) -> str:
        return tlog.log_id(self.key.public_key())

    def keys(self) -> dict[str, tlog.LogKey]:
        return {self.log_id: tlog.LogKey(self.key.public_key())}

    def entry(self, body: dict[str, Any], integrated_time: int, *, index: int = 7) -> tlog.LogEntry:
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        unsigned = tlog.LogEntry(raw, integrated_time, index, self.log_id, b"")
        return dataclasses.replace(unsigned, signed_entry_timestamp=sign_bytes(self.key, tlog.set_payload(unsigned)))


def make_log() -> Log:
    return Log(ec.generate_private_key(ec.SECP256R1()))


def verifier_b64(verifier: x509.Certificate | PrivateKeyTypes) -> str:
    raw = verifier.public_bytes(serialization.Encoding.PEM) if isinstance(verifier, x509.Certificate) \
        else pem(verifier).encode()
    return base64.b64encode(raw).decode()


def hashedrekord(artifact: bytes, signature: bytes, verifier: x509.Certificate | PrivateKeyTypes) -> dict[str, Any]:
    return {"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(artifact).hexdigest()}},
        "signature": {"content": base64.b64encode(signature).decode(),
                      "publicKey": {"content": verifier_b64(verifier)}}}}


def dsse_body(payload: bytes, signature: bytes, verifier: x509.Certificate | PrivateKeyTypes) -> dict[str, Any]:
    return {"apiVersion": "0.0.1", "kind": "dsse", "spec": {
        "envelopeHash": {"algorithm": "sha256", "value": "00" * 32},
        "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
        "signatures": [{"signature": base64.b64encode(signature).decode(), "verifier": verifier_b64(verifier)}]}}


def cosign_bundle_annotation(entry: tlog.LogEntry) -> str:
    """cosign's `dev.sigstore.cosign/bundle` annotation for `entry`."""
    return json.dumps({"SignedEntryTimestamp": base64.b64encode(entry.signed_entry_timestamp).decode(),
                       "Payload": {"body": base64.b64encode(entry.body).decode(),
                                   "integratedTime": entry.integrated_time, "logIndex": entry.log_index,
                                   "logID": entry.log_id}})


def dsse_bundle(private: PrivateKeyTypes, subject: str, *, cert: x509.Certificate | None = None,
                integrated_time: int | None = None, log: Log | None = None,
                body: dict[str, Any] | None = None) -> bytes:
    """A bundle signing `subject`; with `integrated_time`, a log entry: signed by `log` (else by a log nobody
    trusts), its body `body` or one naming this signature."""
    from services.signer.bundle import pae

    payload = in_toto(subject)
    signature = sign_bytes(private, pae("application/vnd.in-toto+json", payload))
    material: dict[str, Any] = {"tlogEntries": []}
    if cert is not None:
        material["certificate"] = {"rawBytes": base64.b64encode(der(cert)).decode()}
    else:
        material["publicKey"] = {"hint": "k"}
    if integrated_time is not None:
        entry = (log or make_log()).entry(body or dsse_body(payload, signature, cert or private), integrated_time)
        material["tlogEntries"] = [{"logIndex": str(entry.log_index),
                                    "logId": {"keyId": base64.b64encode(bytes.fromhex(entry.log_id)).decode()},
                                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                                    "integratedTime": str(integrated_time),
                                    "inclusionPromise": {"signedEntryTimestamp":
                                                         base64.b64encode(entry.signed_entry_timestamp).decode()},
                                    "inclusionProof": {"logIndex": "1", "rootHash": base64.b64encode(b"r").decode(),
                                                       "treeSize": "2", "hashes": [],
                                                       "checkpoint": {"envelope": "x"}},
                                    "canonicalizedBody": base64.b64encode(entry.body).decode()}]
    return json.dumps({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": material,
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": "application/vnd.in-toto+json",
                         "signatures": [{"sig": base64.b64encode(signature).decode()}]},
    }).encode()


def message_bundle(private: ec.EllipticCurvePrivateKey, subject: str) -> bytes:
    digest = bytes.fromhex(subject.partition(":")[2])
    signature = private.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    return json.dumps({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
        "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
                             "signature": base64.b64encode(signature).decode()},
    }).encode()


def notary_payload(subject: str, media_type: str, size: int) -> bytes:
    return json.dumps({"targetArtifact": {"mediaType": media_type, "digest": subject, "size": size}}).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _raw_signature(private: PrivateKeyTypes, data: bytes) -> tuple[str, bytes]:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return "ES256", r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert isinstance(private, rsa.RSAPrivateKey)
    return "PS256", private.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def jws(private: PrivateKeyTypes, chain: list[x509.Certificate], payload: bytes, *,
        signing_time: datetime | None = None, expiry: datetime | None = None, extra_crit: Sequence[str] = ()) -> bytes:
    alg = "ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "PS256"
    protected: dict[str, Any] = {"alg": alg, "cty": "application/vnd.cncf.notary.payload.v1+json",
                                 "io.cncf.notary.signingScheme": "notary.x509",
                                 "io.cncf.notary.signingTime": (signing_time or datetime.now(UTC)).isoformat(),
                                 "crit": ["io.cncf.notary.signingScheme", *extra_crit]}
    if expiry is not None:
        protected["io.cncf.notary.expiry"] = expiry.isoformat()
        protected["crit"].append("io.cncf.notary.expiry")
    for name in extra_crit:
        protected[name] = "x"
    header = _b64url(json.dumps(protected).encode())
    body = _b64url(payload)
    _, signature = _raw_signature(private, f"{header}.{body}".encode())
    return json.dumps({"payload": body, "protected": header, "signature": _b64url(signature),
                       "header": {"x5c": [base64.b64encode(der(c)).decode() for c in chain]}}).encode()


def cose(private: PrivateKeyTypes, chain: list[x509.Certificate], payload: bytes) -> bytes:
    protected = cbor2.dumps({1: -7, 2: ["io.cncf.notary.signingScheme"],
                             3: "application/vnd.cncf.notary.payload.v1+json",
                             "io.cncf.notary.signingScheme": "notary.x509",
                             "io.cncf.notary.signingTime": cbor2.CBORTag(1, int(datetime.now(UTC).timestamp()))})
    signed = cbor2.dumps(["Signature1", protected, b"", payload])
    _, signature = _raw_signature(private, signed)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {33: [der(c) for c in chain]}, payload, signature]))


def trust_policy(store: str = "test", *, level: str = "strict", identities: list[str] | None = None,
                 scopes: list[str] | None = None) -> dict[str, Any]:
    return {"version": "1.0", "trustPolicies": [{
        "name": "p", "registryScopes": scopes or ["*"], "signatureVerification": {"level": level},
        "trustStores": [f"ca:{store}"], "trustedIdentities": identities or ["*"]}]}
