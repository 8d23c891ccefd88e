"""The outcome of checking one signature, and the trust material checks run against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from services.signer.tlog import LogKey


@dataclass(frozen=True, slots=True)
class Verdict:
    verified: bool
    reason: str
    """Why not (`not verified, because <reason>`), or what verified it."""
    key_id: str = ""
    identity: str = ""
    issuer: str = ""
    signed_at: float | None = None
    pending: bool = False


def failed(reason: str, **fields: object) -> Verdict:
    return Verdict(False, reason, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str


@dataclass(frozen=True, slots=True)
class CosignTrust:
    """What cosign and Sigstore signatures are checked against: public keys by key id (the policy's and the
    namespace's managed keys), keyless identities, the CA roots of keyless certificates, and the transparency
    logs' keys by log id, whose signed entry timestamps date keyless signatures (`tlog`)."""

    keys: Mapping[str, PublicKeyTypes] = field(default_factory=dict)
    identities: Sequence[Identity] = ()
    roots: Sequence[x509.Certificate] = ()
    log_keys: Mapping[str, LogKey] = field(default_factory=dict)
