"""The signer's verification results, one document per signature (and per image it signs), in the
`signer_signatures` collection: written by the signer service only, read by the signature gate and the
gateway's GET .../signatures.

A signature artifact is recorded as soon as the signer has seen it; `state` says where verification stands:
`verified`, `failed` (with the reason) or `pending` (e.g. a Notary signature whose image is not pushed yet).
Results are kept per subject digest, so a signature pushed before its image is already there when the image
arrives, and several signatures on one image are all kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.core.storage.documents import DocumentStore, Index

SIGNATURES = "signer_signatures"

VERIFIED, FAILED, PENDING = "verified", "failed", "pending"


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """What the signer knows about one signature of one image."""

    repository: str
    subject: str
    """Digest of the signed image."""
    signature: str
    """Digest of the signature artifact (its manifest); cosign's tag-scheme manifest holds several."""
    index: int
    """Position of the signature inside its artifact (cosign: the layer), 0 for the others."""
    format: str
    state: str
    reason: str
    key_id: str = ""
    """`sha256:<hex>` of the verifying public key (SubjectPublicKeyInfo DER), when a key verified it."""
    identity: str = ""
    """Certificate identity: the Sigstore certificate's subject (e-mail, URI), or a Notary leaf's x509 subject."""
    issuer: str = ""
    """OIDC issuer of a Sigstore certificate."""
    signed_at: float | None = None
    checked: float = 0.0
    namespace: str = ""

    @property
    def verified(self) -> bool:
        return self.state == VERIFIED

    @property
    def id(self) -> str:
        return f"{self.repository}@{self.subject}|{self.signature}|{self.index}"

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.id, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SignatureResult:
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**fields)


class SignatureResults:
    """The `signer_signatures` collection."""

    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def setup(self) -> None:
        await self.docs.ensure_collection(
            SIGNATURES,
            [Index(("repository", "subject")), Index(("repository", "signature")), Index(("namespace",))],
        )

    async def for_image(self, repository: str, subject: str) -> list[SignatureResult]:
        """Every signature recorded for `subject` in `repository`, in signature order."""
        docs = await self.docs.find(SIGNATURES, {"repository": repository, "subject": subject})
        return sorted((SignatureResult.from_doc(d) for d in docs), key=lambda r: (r.signature, r.index))

    async def of_signature(self, repository: str, signature: str) -> list[SignatureResult]:
        docs = await self.docs.find(SIGNATURES, {"repository": repository, "signature": signature})
        return [SignatureResult.from_doc(d) for d in docs]

    async def in_namespace(self, namespace: str, *, after: str | None = None, limit: int = 500
                           ) -> list[SignatureResult]:
        docs = await self.docs.find(SIGNATURES, {"namespace": namespace}, after=after, limit=limit)
        return [SignatureResult.from_doc(d) for d in docs]

    async def replace(self, repository: str, signature: str, results: Sequence[SignatureResult]) -> None:
        """Store `results` as everything known about `signature` (idempotent): entries it no longer yields go."""
        keep = {r.id for r in results}
        for old in await self.of_signature(repository, signature):
            if old.id not in keep:
                await self.docs.delete(SIGNATURES, old.id)
        for result in results:
            await self.docs.put(SIGNATURES, result.to_doc())

    async def forget_signature(self, repository: str, signature: str) -> list[SignatureResult]:
        """Drop the results of a deleted signature artifact; returns what was dropped."""
        gone = await self.of_signature(repository, signature)
        await self.docs.delete_many(SIGNATURES, [r.id for r in gone])
        return gone


def now() -> float:
    return time.time()
