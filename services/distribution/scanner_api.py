"""Scanning over the management API, and the scan gate at pull.

- `GET /v1/registry/{repository}/{reference}/vulnerabilities` (reader): the last report of a manifest, with
  the policy's `scan.ignore` applied; an index also answers per platform.
- `POST /v1/registry/{repository}/{reference}/scan` (writer): queue a re-scan (the scanner takes it).
- `GET /v1/registry/{repository}/{reference}/sbom` (reader): the CycloneDX SBOM the scanner pushed.
- `POST|GET /v1/registry/admin/vulndb` (registry admin): import OSV records / the database's state.

The scan gate reads stored reports only (services/core/scan/store.py). A report keeps the findings of the
last complete scan while a re-scan runs or after one fails, so a re-scan never blocks a pull that the last
report allowed. In the embedded assembly the scanner stores reports through this process's outbox, and
each commit makes the gate look for reports stored since it last looked and forget their decisions at
once; other replicas see them within registry.pull_gate_cache_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from services.core.auth.audit import AuditRecord, Outcome
from services.core.auth.errors import InvalidRequestError, NotFoundError
from services.core.auth.scopes import PUSH
from services.core.bootstrap import Container
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.policy.document import SEVERITY_ORDER, PolicyDocument
from services.core.policy.gates import PullGates, Refusal
from services.core.policy.merge import effective
from services.core.policy.store import PolicyStore, PolicyTarget
from services.core.scan import osv
from services.core.scan.store import SEVERITIES, ReportStore, VulnDbStore
from services.core.storage.documents import DocumentStore
from services.core.storage.meta import ManifestRecord
from services.distribution.keys import GATES, REGISTRY, SETTINGS
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Response, maybe_timestamp

MAX_IMPORT_BYTES = 512 * 1024 * 1024
MAX_SBOM_BYTES = 64 * 1024 * 1024
_GATE_LEVEL = {s: i for i, s in enumerate(SEVERITY_ORDER)}


# models


class Summary(Response):
    critical: int = 0
    high: int = 0
    medium: int = 0
    low: int = 0
    unknown: int = 0


class VulnerabilityFinding(Response):
    id: str = Field(description="Advisory id (CVE, GHSA, DSA, GO, PYSEC ...; HANZO-MODEL-... for model files)")
    aliases: list[str] = Field(description="Other ids of the same vulnerability")
    package: str
    version: str
    ecosystem: str = Field(description="OSV ecosystem, e.g. Debian:12, PyPI; `model` for a model-file finding")
    purl: str
    fixed_version: str | None = Field(description="First fixed version; null when unfixed")
    severity: str = Field(description="critical, high, medium, low or unknown")
    cvss_score: float | None
    layer: str = Field(description="Digest of the layer the package came from")
    ignored: bool = Field(description="The policy's scan.ignore names it: not counted by the gate")
    title: str = ""


class PlatformReport(Response):
    digest: str
    platform: str
    status: str
    error: str = ""
    summary: Summary
    vulnerabilities: list[VulnerabilityFinding]


class VulnerabilityReport(Response):
    repository: str
    digest: str
    status: str = Field(description="pending, scanning, complete, failed or unsupported")
    error: str = ""
    scanned_at: datetime | None = Field(description="When the findings were made (the last complete scan)")
    db_updated_at: datetime | None = Field(description="When the vulnerability database last changed")
    summary: Summary = Field(description="Unignored findings per severity")
    vulnerabilities: list[VulnerabilityFinding]
    platforms: list[PlatformReport] = Field(default_factory=list, description="Per platform image of an index")
    sbom: str | None = Field(None, description="Digest of the SBOM referrer")


class ScanQueued(Response):
    digest: str
    queued: bool = Field(description="False when a re-scan was already queued")


class Sbom(Response):
    model_config = ConfigDict(extra="allow")


class VulnDbImported(Response):
    imported: int = Field(description="Records new to the database")
    updated: int = Field(description="Records that replaced a different stored version")


class VulnDbLastImport(Response):
    at: datetime | None
    source: str
    imported: int
    updated: int
    unchanged: int = 0


class VulnDbState(Response):
    records: dict[str, int] = Field(description="Records per OSV ecosystem")
    total: int
    generation: int = Field(description="Bumped by every import that changed something")
    updated_at: datetime | None
    last_import: VulnDbLastImport | None


# helpers


async def effective_policy(call: Call, repository: str) -> PolicyDocument:
    store = PolicyStore(call.request.app[REGISTRY].meta.docs)
    namespace = repository.partition("/")[0]
    ns = await store.get(PolicyTarget(namespace))
    repo = await store.get(PolicyTarget(namespace, repository))
    return effective(call.request.app[SETTINGS].policy.default, namespace=ns.document if ns else None,
                     repository=repo.document if repo else None)


def ignored_by(policy: PolicyDocument) -> Any:
    ignore = set(policy.scan.ignore)

    def test(f: dict[str, Any]) -> bool:
        return f.get("id") in ignore or bool(ignore.intersection(f.get("aliases") or ()))

    return test


def _summary(findings: list[dict[str, Any]], ignored: Any) -> Summary:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        if not ignored(f):
            sev = f.get("severity", "unknown")
            counts[sev if sev in counts else "unknown"] += 1
    return Summary(**counts)


def _findings(findings: list[dict[str, Any]], ignored: Any) -> list[VulnerabilityFinding]:
    return [VulnerabilityFinding(
        id=f["id"], aliases=list(f.get("aliases") or []), package=f["package"], version=f.get("version", ""),
        ecosystem=f.get("ecosystem", ""), purl=f.get("purl", ""), fixed_version=f.get("fixed_version"),
        severity=f.get("severity", "unknown"), cvss_score=f.get("cvss_score"), layer=f.get("layer", ""),
        ignored=ignored(f), title=f.get("title", "")) for f in findings]


async def _resolve(call: Call) -> ManifestRecord:
    assert call.repository is not None
    reference = call.param("reference")
    try:
        ref: Tag | Digest = Digest.parse(reference) if ":" in reference else Tag(reference)
    except ValueError:
        raise InvalidRequestError(f"reference {reference[:100]!r} is neither a tag nor a digest") from None
    return await call.request.app[REGISTRY].resolve(RepositoryName(call.repository), ref)


def _reports(call: Call) -> ReportStore:
    return ReportStore(call.request.app[REGISTRY].meta.docs)


# handlers


async def get_vulnerabilities(call: Call) -> VulnerabilityReport:
    assert call.repository is not None
    record = await _resolve(call)
    digest = str(record.digest)
    reports = _reports(call)
    doc = await reports.get(call.repository, digest)
    ignored = ignored_by(await effective_policy(call, call.repository))
    if doc is None:
        return VulnerabilityReport(repository=call.repository, digest=digest, status="pending", scanned_at=None,
                                   db_updated_at=None, summary=Summary(), vulnerabilities=[])
    findings = doc.get("findings", [])
    status = doc.get("status", "pending")
    if status not in ("scanning",) and await reports.queued(call.repository, digest):
        status = "pending"
    platforms = [PlatformReport(digest=i["digest"], platform=i.get("platform", ""), status=i.get("status", ""),
                                error=i.get("error", ""), summary=_summary(i.get("findings", []), ignored),
                                vulnerabilities=_findings(i.get("findings", []), ignored))
                 for i in doc.get("images", []) if i.get("platform")]
    return VulnerabilityReport(
        repository=call.repository, digest=digest, status=status, error=doc.get("error", ""),
        scanned_at=maybe_timestamp(doc.get("scanned_at")), db_updated_at=maybe_timestamp(doc.get("db_updated_at")),
        summary=_summary(findings, ignored), vulnerabilities=_findings(findings, ignored), platforms=platforms,
        sbom=(doc.get("sbom") or {}).get("manifest"))


async def post_scan(call: Call) -> ScanQueued:
    assert call.repository is not None
    if not call.who.admin:
        await call.access.authorize(call.request, call.who.principal, call.repository, {PUSH})
    record = await _resolve(call)
    queued = await _reports(call).request_scan(call.repository, str(record.digest), actor=call.who.name)
    return ScanQueued(digest=str(record.digest), queued=queued)


async def get_sbom(call: Call) -> Sbom:
    assert call.repository is not None
    record = await _resolve(call)
    doc = await _reports(call).get(call.repository, str(record.digest))
    sbom = (doc or {}).get("sbom")
    if not sbom:
        raise NotFoundError(f"{call.repository}@{record.digest} has no SBOM yet")
    registry = call.request.app[REGISTRY]
    data = bytearray()
    async for chunk in registry.read_blob(RepositoryName(call.repository), Digest.parse(sbom["blob"])):
        data += chunk
        if len(data) > MAX_SBOM_BYTES:
            raise InvalidRequestError("the SBOM is too large to serve here; pull its referrer")
    return Sbom.model_validate_json(bytes(data))


async def import_vulndb(call: Call) -> VulnDbImported:
    request = call.request
    if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
        raise InvalidRequestError(f"an import is limited to {MAX_IMPORT_BYTES} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 20):
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise InvalidRequestError(f"an import is limited to {MAX_IMPORT_BYTES} bytes")
    zip_body = True if request.content_type == "application/zip" else None
    store = VulnDbStore(request.app[REGISTRY].meta.docs)
    try:
        records = await asyncio.to_thread(lambda: list(osv.records(bytes(body), zip_body=zip_body)))
    except osv.OsvInvalidError as exc:
        raise InvalidRequestError(str(exc)[:1000]) from None
    result = await store.import_records(records, source=f"upload by {call.who.name}")
    await call.access.service.record(AuditRecord(
        call.who.name, "vulndb.import", "vulndb", Outcome.SUCCESS, call.who.source,
        {"imported": str(result.imported), "updated": str(result.updated)}))
    return VulnDbImported(imported=result.imported, updated=result.updated)


async def get_vulndb(call: Call) -> VulnDbState:
    state = await VulnDbStore(call.request.app[REGISTRY].meta.docs).state()
    counts = {k: int(v) for k, v in sorted((state.get("counts") or {}).items())}
    last = state.get("last_import")
    return VulnDbState(
        records=counts, total=sum(counts.values()), generation=int(state.get("generation") or 0),
        updated_at=maybe_timestamp(state.get("updated_at")),
        last_import=VulnDbLastImport(at=maybe_timestamp(last.get("at")), source=last.get("source", ""),
                                     imported=last.get("imported", 0), updated=last.get("updated", 0),
                                     unchanged=last.get("unchanged", 0)) if last else None)


def scanner_routes() -> list[Route]:
    """Before the namespace routes; each path ends in a fixed word, so none shadows another route."""
    R = Requirement
    item = "/{repository:.+}/{reference}"
    return [
        Route("POST", "/admin/vulndb", import_vulndb, R.REGISTRY_ADMIN,
              "Import OSV records: one record or an array (application/json), or an OSV export zip "
              "(application/zip)", response=VulnDbImported),
        Route("GET", "/admin/vulndb", get_vulndb, R.REGISTRY_ADMIN,
              "The vulnerability database: records per ecosystem and the last import", response=VulnDbState),
        Route("GET", f"{item}/vulnerabilities", get_vulnerabilities, R.REPOSITORY_READER,
              "The vulnerability report of a manifest (per platform for an index)", response=VulnerabilityReport,
              errors=(404,)),
        Route("POST", f"{item}/scan", post_scan, R.REPOSITORY_READER,
              "Queue a re-scan of a manifest (needs push on the repository)", status=202, response=ScanQueued,
              errors=(404,)),
        Route("GET", f"{item}/sbom", get_sbom, R.REPOSITORY_READER,
              "The CycloneDX SBOM of a manifest (also pushed as its referrer)", response=Sbom, errors=(404,)),
    ]


# the gate


class ScanGate:
    """Refuses pulls of manifests whose last complete report has an unignored finding at or above the
    policy's scan.severity_gate; scan.unscanned decides before the first complete report."""

    name = "scan"

    def __init__(self, docs: DocumentStore) -> None:
        self.reports = ReportStore(docs)

    def applies(self, policy: PolicyDocument) -> bool:
        scan = policy.scan
        return scan.enabled and (scan.severity_gate != "none" or scan.unscanned == "block")

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        scan = policy.scan
        doc = await self.reports.get(repository, str(manifest.digest))
        if doc is None or not doc.get("scanned_at"):
            if scan.unscanned == "block":
                why = f"its scan failed: {doc.get('error', '')[:200]}" if doc and doc.get("status") == "failed" \
                    else "it has not been scanned yet"
                return Refusal(self.name, "scan.unscanned: block", why)
            return None
        if scan.severity_gate == "none":
            return None
        level = _GATE_LEVEL[scan.severity_gate]
        ignored = ignored_by(policy)
        bad = [f for f in doc.get("findings", [])
               if not ignored(f) and _GATE_LEVEL.get(f.get("severity", ""), -1) >= level]
        if not bad:
            return None
        bad.sort(key=lambda f: (-_GATE_LEVEL.get(f["severity"], 0), -(f.get("cvss_score") or 0.0), f["id"]))
        worst = ", ".join(f"{f['id']} ({f['severity']}, {f['package']} {f.get('version', '')})".replace(" )", ")")
                          for f in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return Refusal(self.name, f"scan.severity_gate: {scan.severity_gate}",
                       f"{len(bad)} finding(s) at or above {scan.severity_gate}: {worst}{more}")


class _Invalidator:
    """Forgets gate decisions about reports stored since it last looked; woken by this process's outbox."""

    def __init__(self, gates: PullGates, docs: DocumentStore) -> None:
        self.gates = gates
        self.reports = ReportStore(docs)
        self.since = time.time()
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def wake(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to do
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            with contextlib.suppress(Exception):
                for d in await self.reports.changed_since(self.since):
                    self.gates.invalidate(digest=str(d["digest"]))
                    self.since = max(self.since, float(d.get("updated_at") or 0))


def install_scan_gate(c: Container, gates: PullGates) -> PullGates:
    """Add the scan gate to `gates` and keep it fresh (see the module docstring)."""
    gates.add(ScanGate(c.docs))
    c.outbox.on_commit(_Invalidator(gates, c.docs).wake)
    return gates


__all__ = ["GATES", "ScanGate", "install_scan_gate", "scanner_routes"]
