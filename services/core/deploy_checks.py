"""Whether an image may be deployed: the scan and signature verdicts `image.deployable` waits for, read from
the scanner's and signer's stored results (never by calling those services).

`DeployChecks` is the port; `MetadataDeployChecks` reads:
- `scan_reports` (services/core/scan/store.py, written by the scanner), `_id` `<repository>@<digest>`:
  `status` (pending, scanning, complete, failed, unsupported), `scanned_at` (set once a scan completed; the
  findings are those of the last complete scan, kept during a re-scan) and `findings[]` with `id`, `aliases`
  and `severity` (critical, high, medium, low, unknown);
- `signer_signatures` (services/core/signing/results.py, written by the signer): one document per signature
  with `repository`, `subject` (the signed digest), `state` (verified, failed, pending), `format`, `key_id`,
  `identity`, `issuer`;
- the effective policy of the repository (services/core/policy/store.py): `scan.ignore` drops findings, and a
  verified signature counts only when the policy trusts its key or identity, exactly as the pull gate
  (services/core/signing/gate.py) decides.

A verdict is `pass`, `fail` or `unknown` (nothing stored yet, a scan in its first run, a signature pending):
only `pass` lets an image become deployable; the next scan or signature event asks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from services.core.policy.document import SEVERITY_ORDER, PolicyDocument
from services.core.policy.merge import effective
from services.core.policy.store import PolicyStore, PolicyTarget
from services.core.scan.store import ReportStore
from services.core.signing.gate import trusted
from services.core.signing.results import FAILED, SignatureResults
from services.core.storage.documents import DocumentStore

State = Literal["pass", "fail", "unknown"]
_LEVEL = {s: i for i, s in enumerate(SEVERITY_ORDER)}


@dataclass(frozen=True, slots=True)
class Verdict:
    state: State
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.state == "pass"


class DeployChecks(Protocol):
    async def scan_verdict(self, repository: str, digest: str, *, gate: str) -> Verdict:
        """`pass` when the last complete scan of the manifest has no unignored finding at or above `gate`
        (`none`: any complete scan passes); `fail` when it has; `unknown` before a complete scan."""
        ...

    async def signature_verdict(self, repository: str, digest: str) -> Verdict:
        """`pass` when a signature of the manifest is verified by a key or identity the repository's policy
        trusts; `fail` when every recorded signature failed; `unknown` when none is recorded or some pend."""
        ...


class MetadataDeployChecks:
    def __init__(self, docs: DocumentStore, *, default_policy: PolicyDocument) -> None:
        self.reports = ReportStore(docs)
        self.signatures = SignatureResults(docs)
        self.policies = PolicyStore(docs)
        self.default = default_policy

    async def policy(self, repository: str) -> PolicyDocument:
        namespace = repository.partition("/")[0]
        ns = await self.policies.get(PolicyTarget(namespace))
        repo = await self.policies.get(PolicyTarget(namespace, repository))
        return effective(self.default, namespace=ns.document if ns else None,
                         repository=repo.document if repo else None)

    async def scan_verdict(self, repository: str, digest: str, *, gate: str) -> Verdict:
        doc = await self.reports.get(repository, digest)
        if doc is None or not doc.get("scanned_at"):
            status = (doc or {}).get("status", "not scanned")
            return Verdict("unknown", f"no complete scan yet ({status})")
        level = _LEVEL.get(gate, 0)
        if level == 0:
            return Verdict("pass", "scanned")
        ignore = set((await self.policy(repository)).scan.ignore)
        bad = [f for f in doc.get("findings") or ()
               if f.get("id") not in ignore and not ignore.intersection(f.get("aliases") or ())
               and _LEVEL.get(str(f.get("severity")), -1) >= level]
        if bad:
            return Verdict("fail", f"{len(bad)} finding(s) at or above {gate}")
        return Verdict("pass", f"no finding at or above {gate}")

    async def signature_verdict(self, repository: str, digest: str) -> Verdict:
        results = await self.signatures.for_image(repository, digest)
        if not results:
            return Verdict("unknown", "no signature recorded")
        policy = await self.policy(repository)
        good = [r for r in results if trusted(r, policy)]
        if good:
            r = good[0]
            return Verdict("pass", f"{r.format} signature by {r.key_id or r.identity or 'a trusted signer'}")
        if all(r.state == FAILED or r.verified for r in results):
            return Verdict("fail", "no signature verifies with a key or identity the policy trusts")
        return Verdict("unknown", "signature verification pending")

    async def setup(self) -> None:
        """Create the collections read here if their writers have not yet (idempotent, same indexes)."""
        await self.reports.setup()
        await self.signatures.setup()
        await self.policies.setup()
