"""Scanner service: scans pushed manifests (manifest-pushed events), takes re-scan requests, re-matches
stored inventories when the vulnerability database changes, syncs the database from
`scanner.vulndb.sources` on a schedule, and serves the Scanner gRPC contract (GetReport, Rescan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.core.bootstrap import Container
from services.core.content.registry import Registry
from services.core.events.envelope import payload_field
from services.core.models.index import ModelIndexer, ModelIndexHandler
from services.core.proto.hanzo.registry.v1 import events_pb2 as epb
from services.core.proto.hanzo.registry.v1 import scanner_pb2 as spb
from services.core.proto.hanzo.registry.v1 import scanner_pb2_grpc
from services.core.runtime import ServiceParts
from services.core.scan import osv
from services.core.scan.store import ReportStore
from services.core.settings import VulnDbSettings
from services.scanner.engine import ScanEngine, summary
from services.scanner.metrics import ScannerMetrics

log = logging.getLogger(__name__)


def build_registry(c: Container) -> Registry:
    return Registry(blobs=c.blobs, meta=c.meta, outbox=c.outbox, settings=c.settings.registry, topics=c.settings.topics)


class Handler:
    """Handles manifest-pushed events: a manifest with a subject (a signature, our own SBOM) is not scanned."""

    def __init__(self, engine: ScanEngine) -> None:
        self.engine = engine

    async def __call__(self, envelope: epb.Envelope) -> None:
        if payload_field(envelope) != "manifest_pushed":
            return
        pushed = envelope.manifest_pushed
        if pushed.subject_digest:
            return
        await self.engine.scan(pushed.repository, pushed.digest)


class Loops:
    """The scanner's periodic work: re-scan requests, database changes (re-match), scheduled syncs."""

    def __init__(self, engine: ScanEngine, interval: float, vulndb: VulnDbSettings) -> None:
        self.engine = engine
        self.interval = interval
        self.vulndb = vulndb
        self._next_sync = 0.0

    async def once(self) -> None:
        await self.engine.process_requests()
        await self.engine.refresh_index()
        # Compared with what the reports were re-matched against, not with the index: a scan reloads the index
        # too (ScanEngine._scan), and the reports scanned before that still need the new records.
        generation = self.engine.index.generation
        if generation != self.engine.rematched_generation:
            changed = await self.engine.rematch_all()
            self.engine.rematched_generation = generation
            log.info("vulnerability database changed: %d reports changed", changed)
        if self.vulndb.sources and time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + self.vulndb.sync_interval_seconds
            await self.sync()

    async def sync(self) -> None:
        timeout = aiohttp.ClientTimeout(total=3600, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for url in self.vulndb.sources:
                try:
                    body = await _download(session, url, self.vulndb.max_download_bytes)
                    result = await self.engine.vulndb.import_records(osv.records(body), source=url)
                    log.info("vulndb sync from %s: %d imported, %d updated", url, result.imported, result.updated)
                except (aiohttp.ClientError, TimeoutError, osv.OsvInvalidError, ValueError) as exc:
                    log.warning("vulndb sync from %s failed: %s", url, str(exc)[:300])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except Exception as exc:  # a loop of the service must survive any single failure
                log.exception("scanner loop: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


async def _download(session: aiohttp.ClientSession, url: str, limit: int) -> bytes:
    async with session.get(url) as response:
        response.raise_for_status()
        out = bytearray()
        async for chunk in response.content.iter_chunked(1 << 20):
            out += chunk
            if len(out) > limit:
                raise ValueError(f"{url} is larger than scanner.vulndb.max_download_bytes ({limit})")
        return bytes(out)


def _ts(value: float | None) -> Timestamp:
    ts = Timestamp()
    if value:
        ts.FromNanoseconds(int(value * 1e9))
    return ts


_STATUS = {"complete": epb.SCAN_STATUS_SUCCEEDED, "failed": epb.SCAN_STATUS_FAILED,
           "unsupported": epb.SCAN_STATUS_UNSUPPORTED}


def report_pb(doc: dict[str, Any]) -> spb.ScanReport:
    findings = doc.get("findings", [])
    return spb.ScanReport(
        report_id=doc["_id"], repository=doc["repository"], digest=doc["digest"], scanner=doc.get("scanner", ""),
        status=_STATUS.get(doc.get("status", ""), epb.SCAN_STATUS_UNSPECIFIED),
        severity_counts=summary(findings), scanned_at=_ts(doc.get("scanned_at")), error=doc.get("error", ""),
        vulnerabilities=[spb.Vulnerability(
            id=f["id"], package_name=f["package"], installed_version=f["version"],
            fixed_version=f.get("fixed_version") or "", severity=f["severity"], title=f.get("title", ""),
            aliases=f.get("aliases", []), ecosystem=f.get("ecosystem", ""), purl=f.get("purl", ""),
            cvss_score=f.get("cvss_score") or 0.0, layer=f.get("layer", "")) for f in findings],
        state=doc.get("status", ""), db_updated_at=_ts(doc.get("db_updated_at")))


class ScannerServicer(scanner_pb2_grpc.ScannerServicer):
    def __init__(self, reports: ReportStore) -> None:
        self.reports = reports

    async def GetReport(self, request: spb.GetReportRequest, context: grpc.aio.ServicerContext
                        ) -> spb.GetReportResponse:
        doc = await self.reports.get(request.repository, request.digest)
        if doc is None or (doc.get("status") == "scanning" and not doc.get("scanned_at")):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.repository}@{request.digest} has no report")
        assert doc is not None
        return spb.GetReportResponse(report=report_pb(doc))

    async def Rescan(self, request: spb.RescanRequest, context: grpc.aio.ServicerContext
                     ) -> spb.RescanResponse:
        if not request.repository or not request.digest.startswith("sha256:"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "repository and a sha256 digest are required")
        queued = await self.reports.request_scan(request.repository, request.digest, actor="grpc")
        return spb.RescanResponse(queued=queued)


async def build(c: Container) -> ServiceParts:
    s = c.settings.scanner
    engine = ScanEngine(registry=build_registry(c), docs=c.docs, outbox=c.outbox, settings=s,
                        topics=c.settings.topics, metrics=ScannerMetrics(c.metrics))
    await engine.setup()
    loops = Loops(engine, s.rematch_interval_seconds, s.vulndb)
    servicer = ScannerServicer(engine.reports)
    scan = Handler(engine)
    # The model view is indexed on push here (it reads the same manifests, and a second consumer of the topic
    # in this service's group would split its partitions with the scan's).
    models = ModelIndexHandler(ModelIndexer(engine.registry))

    async def on_manifest(envelope: epb.Envelope) -> None:
        await models(envelope)
        await scan(envelope)

    return ServiceParts(
        name="scanner",
        consumes=[(c.settings.topics.manifests, on_manifest)],
        produces=[c.settings.topics.scans],
        grpc=[lambda server: scanner_pb2_grpc.add_ScannerServicer_to_server(servicer, server)],
        loops=[loops.run],
    )
