"""The signature gate: with the policy's `signing.verify_signature` on, a pull needs a verified signature by a
key or identity the policy trusts (or a Notary signature the configured trust policy accepts).

From metadata only: the signer's results (results.py), and for "is a signature there at all" the image's
referrers and cosign's `.sig` tag. States, in the order they are decided:
- exempt: the manifest is itself a signature, attestation or SBOM (a referrer of that kind, or cosign's
  tag-scheme `.sig`/`.att`/`.sbom` manifest), so clients can fetch what they verify;
- verified by a trusted key or identity: the pull goes through;
- pending: a signature is there but the signer has not checked it yet (refused, "retry shortly");
- not verified: every signature failed (refused, with the reasons);
- no signature: `signing.unsigned` decides (block by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

from services.core.bootstrap import Container
from services.core.oci.digest import Digest
from services.core.policy.document import PolicyDocument
from services.core.policy.gates import PullGates, Refusal
from services.core.signing.artifacts import (
    SIGNATURE_ARTIFACT_TYPES,
    SignatureFormat,
    is_cosign_tag,
    is_supply_chain_artifact,
    signature_tag,
)
from services.core.signing.keys import pem_key_id
from services.core.signing.notices import notices_for
from services.core.signing.results import FAILED, PENDING, SignatureResult, SignatureResults
from services.core.storage.meta import ManifestRecord, MetadataStore

RULE = "signing.verify_signature"
MAX_REASONS = 3


@lru_cache(maxsize=1024)
def _key_id(pem: str) -> str:
    return pem_key_id(pem)


def trusted(result: SignatureResult, policy: PolicyDocument) -> bool:
    """Whether a verified result counts under `policy`: its key is one of the policy's keys, or its
    certificate identity one of the policy's identities. A Notary result was decided by the configured
    trust store and trust policy, which the signer applied."""
    if not result.verified:
        return False
    if result.format == SignatureFormat.NOTATION:
        return True
    signing = policy.signing
    if result.key_id and result.key_id in {_key_id(k) for k in signing.keys}:
        return True
    return bool(result.identity) and any(
        i.issuer == result.issuer and i.subject == result.identity for i in signing.identities
    )


def layer_types(manifest: ManifestRecord) -> list[str]:
    """The layer media types of an image manifest (empty for anything unreadable or an index)."""
    try:
        doc = json.loads(manifest.data)
        layers = doc.get("layers") if isinstance(doc, dict) else None
        return [str(layer.get("mediaType", "")) for layer in layers or () if isinstance(layer, dict)]
    except (ValueError, TypeError):
        return []


class SignatureGate:
    name = "signature"

    def __init__(self, meta: MetadataStore, results: SignatureResults) -> None:
        self.meta = meta
        self.results = results
        self._ready = False

    def applies(self, policy: PolicyDocument) -> bool:
        return policy.signing.verify_signature

    async def exempt(self, repository: str, manifest: ManifestRecord) -> bool:
        if is_supply_chain_artifact(manifest.artifact_type, layer_types=layer_types(manifest)):
            return True
        tags = await self.meta.tags_of(repository, manifest.digest)
        return any(is_cosign_tag(t.name) for t in tags)

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        if await self.exempt(repository, manifest):
            return None
        if not self._ready:
            await self.results.setup()
            self._ready = True
        results = await self.results.for_image(repository, str(manifest.digest))
        if any(trusted(r, policy) for r in results):
            return None
        if results:
            return self._not_verified(results, policy)
        if await self.signature_present(repository, manifest.digest):
            return Refusal(self.name, RULE, "its signature has not been verified yet (verification pending); "
                                            "retry in a moment")
        if policy.signing.unsigned == "allow":
            return None
        return Refusal(self.name, "signing.unsigned=block",
                       "it has no signature (cosign, Sigstore bundle or Notary); sign it with a key or identity "
                       "the policy trusts")

    def _not_verified(self, results: Sequence[SignatureResult], policy: PolicyDocument) -> Refusal:
        pending = [r for r in results if r.state == PENDING]
        failed = [r for r in results if r.state == FAILED]
        untrusted = [r for r in results if r.verified]
        if pending and not failed and not untrusted:
            return Refusal(self.name, RULE, f"{len(pending)} signature(s) not verified yet (verification "
                                            f"pending: {pending[0].reason}); retry in a moment")
        reasons = [f"{r.format} signature {r.signature[:19]}…: {r.reason}" for r in failed[:MAX_REASONS]]
        reasons += [f"{r.format} signature {r.signature[:19]}… is valid but by "
                    f"{r.key_id or r.identity or 'a signer'}, which the policy does not trust"
                    for r in untrusted[: max(0, MAX_REASONS - len(reasons))]]
        reasons += [f"{len(pending)} pending" for _ in pending[:1]]
        what = "keys" if policy.signing.keys else "identities" if policy.signing.identities else "keys or identities"
        return Refusal(self.name, RULE, f"no signature verifies with the policy's trusted {what}: "
                       + "; ".join(reasons))

    async def signature_present(self, repository: str, digest: Digest) -> bool:
        """A signature artifact for `digest` is stored (a referrer of a signature type, or cosign's tag)."""
        if await self.meta.tag(repository, signature_tag(str(digest))) is not None:
            return True
        return any(r.artifact_type in SIGNATURE_ARTIFACT_TYPES for r in await self.meta.referrers(repository, digest))


def with_signature_gate(c: Container, gates: PullGates) -> PullGates:
    """`gates` with the signature gate added, forgetting a decision as soon as this process's signer stores
    a result for that image."""
    gates.add(SignatureGate(c.meta, SignatureResults(c.docs)))
    notices_for(c.docs).subscribe(lambda digest: gates.invalidate(digest=digest))
    return gates
