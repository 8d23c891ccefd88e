"""Signature checks over raw keys and x509 chains (pure): the schemes cosign, Sigstore and Notary use."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384,
                                                  "sha512": hashes.SHA512}


class VerificationFailedError(Exception):
    """The reason a signature does not verify, worded for a person ("... because <message>")."""


def verify_any(key: PublicKeyTypes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` over `data` verifies with `key` under any scheme cosign uses for that key type:
    ECDSA (DER) with SHA-256/384/512, RSA PKCS#1 v1.5 or PSS with SHA-256/384/512, Ed25519."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            for name in ("sha256", "sha384", "sha512"):
                try:
                    key.verify(signature, data, ec.ECDSA(_HASHES[name]()))
                    return True
                except InvalidSignature:
                    continue
            return False
        if isinstance(key, rsa.RSAPublicKey):
            for name in ("sha256", "sha384", "sha512"):
                algorithm = _HASHES[name]()
                for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)):
                    try:
                        key.verify(signature, data, pad, algorithm)
                        return True
                    except InvalidSignature:
                        continue
            return False
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def verify_prehashed(key: PublicKeyTypes, signature: bytes, digest: bytes, algorithm: str = "sha256") -> bool:
    """A signature over a message known only by its digest (Sigstore's messageSignature)."""
    chosen = _HASHES.get(algorithm)
    if chosen is None:
        return False
    prehashed = utils.Prehashed(chosen())
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            for pad in (padding.PKCS1v15(), padding.PSS(padding.MGF1(chosen()), padding.PSS.AUTO)):
                try:
                    key.verify(signature, digest, pad, prehashed)
                    return True
                except InvalidSignature:
                    continue
    except (InvalidSignature, ValueError):
        return False
    return False


def raw_to_der(signature: bytes) -> bytes:
    """JOSE/COSE ECDSA signatures are r || s; cryptography takes DER."""
    half = len(signature) // 2
    if half == 0 or len(signature) % 2:
        raise VerificationFailedError("the ECDSA signature has an odd length")
    return utils.encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_validity(cert: x509.Certificate, at: datetime, what: str) -> None:
    if at < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc
        raise VerificationFailedError(f"the {what} certificate is not valid before {start:%Y-%m-%dT%H:%M:%SZ}")
    if at > cert.not_valid_after_utc:
        end = cert.not_valid_after_utc
        raise VerificationFailedError(f"the {what} certificate expired at {end:%Y-%m-%dT%H:%M:%SZ}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], *, at: datetime,
                 code_signing: bool = True) -> x509.Certificate:
    """Check that `chain` (leaf first, intermediates, optionally the root) leads to one of `roots`, every
    certificate valid `at`; the root it anchors in. VerificationFailedError says why not."""
    if not chain:
        raise VerificationFailedError("there is no certificate")
    if not roots:
        raise VerificationFailedError("no trusted root certificates are configured")
    leaf = chain[0]
    check_validity(leaf, at, "signing")
    if code_signing:
        try:
            usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.digital_signature:
                raise VerificationFailedError("the signing certificate's key usage lacks digitalSignature")
        except x509.ExtensionNotFound:
            pass
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
                raise VerificationFailedError("the signing certificate is not for code signing (extended key usage)")
        except x509.ExtensionNotFound:
            pass
    root_prints = {r.fingerprint(hashes.SHA256()): r for r in roots}
    current = leaf
    for depth, issuer in enumerate([*chain[1:], None]):
        anchor = root_prints.get(current.fingerprint(hashes.SHA256()))
        if anchor is not None and depth > 0:
            return anchor
        for root in roots:
            if root.subject == current.issuer:
                try:
                    current.verify_directly_issued_by(root)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                check_validity(root, at, "root")
                return root
        if issuer is None:
            break
        if not _is_ca(issuer):
            raise VerificationFailedError(f"certificate {issuer.subject.rfc4514_string()} in the chain is not a CA")
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise VerificationFailedError(
                f"certificate {current.subject.rfc4514_string()} is not signed by the next one in the chain") from None
        check_validity(issuer, at, "intermediate")
        current = issuer
    raise VerificationFailedError(
        f"the certificate chain does not lead to a trusted root (it ends at {current.issuer.rfc4514_string()})")


def subject_attributes(name: x509.Name) -> dict[str, str]:
    """An x509 name as Notary writes identities: C, ST, L, O, OU, CN (last value of each)."""
    short = {NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
             NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN"}
    out: dict[str, str] = {}
    for attribute in name:
        label = short.get(attribute.oid, attribute.oid.dotted_string)
        out[label] = str(attribute.value)
    return out


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or one DER certificate). ValueError for neither."""
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]
