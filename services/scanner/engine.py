"""The scanner's work: scan a manifest (every platform image of an index), store its report with a
ScanCompleted event, push its SBOM as a referrer, re-match stored inventories when the database changes.

Layers are read from the blob store through the content model (Registry.read_blob) by a worker thread
that pulls chunks from the event loop: a layer is never held in memory, and the loop stays free. Inventories
are stored per image manifest digest (content-addressed, so shared by every repository holding the image)
and matched again without reading layers when the vulnerability database changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Any

from services.core.content.artifacts import ArtifactBlob, push_referrer
from services.core.content.events import Built, outbound
from services.core.content.graph import ManifestNode, walk
from services.core.content.registry import Registry
from services.core.errors import ManifestUnknownError, RegistryError
from services.core.events.envelope import new_envelope
from services.core.events.outbox import Outbox, Put
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.scan.store import REPORTS, SEVERITIES, ReportStore, VulnDbStore, report_id
from services.core.settings import ScannerSettings, TopicSettings
from services.core.storage.documents import DocumentStore
from services.core.telemetry import inject_headers
from services.scanner import models as mdl
from services.scanner.inventory.layers import decompressed
from services.scanner.inventory.limits import HostileLayerError, Limits
from services.scanner.inventory.scan import Inventory, scan_image
from services.scanner.matcher import Finding, VulnIndex
from services.scanner.metrics import ScannerMetrics
from services.scanner.sbom import MEDIA_TYPE as SBOM_TYPE
from services.scanner.sbom import build_sbom

log = logging.getLogger(__name__)

INVENTORIES = "scan_inventories"
SCANNER = "hanzo-scanner/1.0"
SCANNER_ANNOTATION = "dev.hanzo.registry.scanner"
ACTOR = "scanner"
_READ_TIMEOUT = 120.0
_STATUS_PB = {"complete": pb.SCAN_STATUS_SUCCEEDED, "failed": pb.SCAN_STATUS_FAILED,
              "unsupported": pb.SCAN_STATUS_UNSUPPORTED}
MODEL_CONFIG_PREFIXES = ("application/vnd.cncf.model.", "application/vnd.kitops.")


class _BlobReader(io.RawIOBase):
    """A blob's bytes for a worker thread, pulled chunk by chunk from an async iterator on `loop`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: AsyncIterator[bytes], *, deadline: float) -> None:
        self._loop = loop
        self._it = chunks
        self._buf = memoryview(b"")
        self._eof = False
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._it)
        except StopAsyncIteration:
            return None

    def readinto(self, b: Any) -> int:
        while not len(self._buf) and not self._eof:
            if time.monotonic() > self._deadline:
                raise HostileLayerError("the scan took longer than scanner.scan_timeout_seconds")
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result(_READ_TIMEOUT)
            if chunk is None:
                self._eof = True
            else:
                self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            aclose = getattr(self._it, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                asyncio.run_coroutine_threadsafe(aclose(), self._loop)
        super().close()


@dataclass
class ImageResult:
    digest: str
    platform: str
    status: str
    error: str = ""
    inventory: Inventory | None = None
    model_findings: tuple[Finding, ...] = ()


def platform_name(node: ManifestNode) -> str:
    p = node.platform
    if p is None:
        return ""
    return "/".join(x for x in (p.os, p.architecture, p.variant or "") if x)


def _is_attestation(node: ManifestNode) -> bool:
    return node.platform is not None and node.platform.os == "unknown" and node.platform.architecture == "unknown"


def summary(findings: list[dict[str, Any]], ignored: Callable[[dict[str, Any]], bool] = lambda f: False
            ) -> dict[str, int]:
    out = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        if not ignored(f):
            out[f.get("severity", "unknown") if f.get("severity") in out else "unknown"] += 1
    return out


class ScanEngine:
    def __init__(self, *, registry: Registry, docs: DocumentStore, outbox: Outbox, settings: ScannerSettings,
                 topics: TopicSettings, clock: Callable[[], float] = time.time,
                 metrics: ScannerMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.docs = docs
        self.outbox = outbox
        self.settings = settings
        self.topics = topics
        self.reports = ReportStore(docs)
        self.vulndb = VulnDbStore(docs)
        self.index = VulnIndex()
        self.limits = Limits(max_layer_bytes=settings.max_layer_bytes, max_entries=settings.max_files)
        self._clock = clock
        self._index_lock = asyncio.Lock()
        self.rematched_generation = 0
        """The database generation the stored reports were last re-matched against (Loops)."""

    async def setup(self) -> None:
        await self.reports.setup()
        await self.vulndb.setup()
        await self.docs.ensure_collection(INVENTORIES)
        await self.refresh_index(force=True)
        self.rematched_generation = self.index.generation

    # vulnerability database

    async def refresh_index(self, *, force: bool = False) -> bool:
        """Reload the index when the stored database changed (or `force`); True when reloaded."""
        async with self._index_lock:
            state = await self.vulndb.state()
            generation = int(state.get("generation") or 0)
            if not force and generation == self.index.generation:
                return False
            index = VulnIndex()
            async for record in self.vulndb.records():
                index.add(record)
            index.generation = generation
            index.updated_at = state.get("updated_at")
            self.index = index
            log.info("vulnerability database generation %d: %d records", generation, index.records)
            return True

    # scanning

    async def scan(self, repository: str, digest: str, *, force: bool = False, trigger: str = "push"
                   ) -> dict[str, Any] | None:
        """Scan a manifest and store its report (with its event); None when the manifest is gone."""
        started = time.monotonic()
        doc = await self._scan(repository, digest, force=force)
        if doc is not None and self.metrics is not None:
            self.metrics.scans.labels(trigger=trigger, status=doc["status"]).inc()
            self.metrics.duration.labels(trigger=trigger).observe(time.monotonic() - started)
        return doc

    async def _scan(self, repository: str, digest: str, *, force: bool) -> dict[str, Any] | None:
        # The database as stored now (one read): the loop reloads it only every rematch interval, and a scan
        # asked for right after an import matched the old records (`scan --rescan --wait` returned that report).
        await self.refresh_index()
        try:
            node = await walk(self.registry.meta, repository, Digest.parse(digest))
        except ManifestUnknownError:
            return None
        await self._mark_scanning(repository, digest, node)
        deadline = time.monotonic() + self.settings.scan_timeout_seconds
        results: list[ImageResult] = []
        for image in node.images():
            if _is_attestation(image):
                continue
            results.append(await self._scan_image(repository, image, deadline=deadline, force=force))
        sbom = None
        inventories = [(r.platform, r.inventory) for r in results if r.inventory is not None]
        if inventories and self.settings.sbom:
            try:
                sbom = await self._push_sbom(repository, digest, inventories)
            except (RegistryError, OSError) as exc:
                log.warning("SBOM of %s@%s not pushed: %s", repository, digest, exc)
        return await self._store(repository, digest, node.media_type, results, sbom=sbom)

    async def _mark_scanning(self, repository: str, digest: str, node: ManifestNode) -> None:
        rid = report_id(repository, digest)
        if not await self.docs.update(REPORTS, rid, {"status": "scanning"}):
            await self.docs.put(REPORTS, {"_id": rid, "repository": repository, "digest": digest,
                                          "media_type": node.media_type, "status": "scanning", "scanned_at": None,
                                          "updated_at": 0.0, "findings": [], "images": []})

    async def _scan_image(self, repository: str, image: ManifestNode, *, deadline: float, force: bool
                          ) -> ImageResult:
        digest = str(image.digest)
        platform = platform_name(image)
        config = image.parsed.config.media_type if image.parsed.config else ""
        layers = list(image.parsed.layers)
        tar_layers = [d for d in layers if d.media_type in mt.IMAGE_LAYER_TYPES]
        if config in mt.CONFIG_TYPES and tar_layers and len(tar_layers) == len(layers):
            if not force:
                cached = await self.docs.get(INVENTORIES, digest)
                if cached is not None:
                    return ImageResult(digest, platform, "complete", inventory=Inventory.from_doc(cached["inventory"]))
            try:
                inventory = await self._inventory(repository, [str(d.digest) for d in tar_layers], deadline)
            except HostileLayerError as exc:
                return ImageResult(digest, platform, "failed", str(exc)[:500])
            await self.docs.put(INVENTORIES, {"_id": digest, "inventory": inventory.to_doc(), "at": self._clock()})
            return ImageResult(digest, platform, "complete", inventory=inventory)
        return await self._scan_model(repository, image, platform, deadline=deadline)

    def _opener(self, loop: asyncio.AbstractEventLoop, repository: str, digest: str, deadline: float
                ) -> Callable[[], IO[bytes]]:
        def open_layer() -> IO[bytes]:
            chunks = self.registry.read_blob(RepositoryName(repository), Digest.parse(digest))
            return io.BufferedReader(_BlobReader(loop, chunks, deadline=deadline), 1 << 16)

        return open_layer

    async def _inventory(self, repository: str, layers: list[str], deadline: float) -> Inventory:
        loop = asyncio.get_running_loop()
        openers = [(d, self._opener(loop, repository, d, deadline)) for d in layers]
        try:
            return await asyncio.to_thread(scan_image, openers, self.limits)
        except HostileLayerError:
            raise
        except (RegistryError, OSError, TimeoutError) as exc:
            raise HostileLayerError(f"a layer could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None

    async def _scan_model(self, repository: str, image: ManifestNode, platform: str, *, deadline: float
                          ) -> ImageResult:
        digest = str(image.digest)
        loop = asyncio.get_running_loop()
        issues: list[mdl.ModelIssue] = []
        scanned = 0
        for layer in image.parsed.layers:
            ann = layer.annotations or {}
            name = ann.get(mdl.TITLE_ANNOTATION) or ann.get(mdl.MODEL_FILEPATH_ANNOTATION) or ""
            is_tar = ".tar" in layer.media_type or layer.media_type in mt.IMAGE_LAYER_TYPES
            if not (mdl.is_pickle_name(name) or is_tar):
                continue
            if layer.size > self.settings.max_model_file_bytes:
                issues.append(mdl.ModelIssue(name or str(layer.digest), "unknown",
                                             f"not scanned: {layer.size} bytes, over scanner.max_model_file_bytes"))
                continue
            opener = self._opener(loop, repository, str(layer.digest), deadline)
            try:
                if is_tar and not mdl.is_pickle_name(name):
                    found = await asyncio.to_thread(self._model_tar, opener)
                    if found is None:
                        continue
                    scanned += 1
                    issues += found
                else:
                    scanned += 1
                    issues += await asyncio.to_thread(self._model_file, opener, name)
            except HostileLayerError as exc:
                return ImageResult(digest, platform, "failed", str(exc)[:500])
            except (RegistryError, OSError) as exc:
                return ImageResult(digest, platform, "failed", f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        if not scanned:
            return ImageResult(digest, platform, "unsupported", "no image layers or pickle-based model files")
        findings = tuple(
            Finding(mdl.issue_id(i), (), i.file, "", "model", "", None, i.severity, None, "", i.what, kind="model")
            for i in issues)
        return ImageResult(digest, platform, "complete", model_findings=findings)

    @staticmethod
    def _model_file(opener: Callable[[], IO[bytes]], name: str) -> list[mdl.ModelIssue]:
        src = opener()
        try:
            with tempfile.TemporaryFile(prefix="hanzo-model-") as tmp:
                while chunk := src.read(1 << 20):
                    tmp.write(chunk)
                tmp.seek(0)
                return mdl.scan_model_file(name, tmp)
        finally:
            src.close()

    def _model_tar(self, opener: Callable[[], IO[bytes]]) -> list[mdl.ModelIssue] | None:
        src = opener()
        try:
            _, stream = decompressed(src, self.limits)
            try:
                return mdl.scan_model_tar(stream)
            except tarfile.TarError:
                return None
        finally:
            src.close()

    async def _push_sbom(self, repository: str, digest: str, inventories: list[tuple[str, Inventory]]
                         ) -> dict[str, str]:
        data = await asyncio.to_thread(build_sbom, repository, digest, inventories)
        blob = ArtifactBlob(SBOM_TYPE, data, {"org.opencontainers.image.title": "sbom.cdx.json"})
        pushed = await push_referrer(self.registry, RepositoryName(repository), Digest.parse(digest),
                                     artifact_type=SBOM_TYPE, blobs=[blob], actor=ACTOR,
                                     annotations={SCANNER_ANNOTATION: SCANNER})
        try:
            await self._drop_older_sboms(repository, Digest.parse(digest), pushed.digest)
        except RegistryError as exc:
            log.warning("earlier SBOMs of %s@%s not removed: %s", repository, digest, exc)
        return {"manifest": str(pushed.digest), "blob": str(blob.digest)}

    async def _drop_older_sboms(self, repository: str, subject: Digest, pushed: Digest) -> None:
        """A re-scan's SBOM replaces the scanner's earlier ones of the image (as Harbor's does): every scan made
        a new one (CycloneDX serial numbers are unique), and the referrers list grew by one per scan. Only
        those older than `pushed`, by (created, digest), so two scans racing leave the newer; one somebody
        tagged stays; none when deletes are off (`registry.delete_enabled`)."""
        if not self.registry.settings.delete_enabled:
            return
        mine = [r for r in await self.registry.meta.referrers(repository, subject)
                if r.artifact_type == SBOM_TYPE and SCANNER_ANNOTATION in r.annotations]  # any version of ours
        new = next((r for r in mine if r.digest == pushed), None)
        if new is None:
            return
        for record in mine:
            if (record.created, str(record.digest)) >= (new.created, str(new.digest)):
                continue
            if await self.registry.meta.tags_of(repository, record.digest):
                continue
            with contextlib.suppress(ManifestUnknownError):  # another replica's scan removed it first
                await self.registry.delete_manifest(RepositoryName(repository), record.digest, actor=ACTOR)

    # reports

    def _findings(self, results: list[ImageResult]) -> list[tuple[ImageResult, list[Finding]]]:
        return [(r, [*(self.index.match(r.inventory) if r.inventory else []), *r.model_findings]) for r in results]

    async def _store(self, repository: str, digest: str, media_type: str, results: list[ImageResult], *,
                     sbom: dict[str, str] | None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self._clock()
        images: list[dict[str, Any]] = []
        merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for result, findings in self._findings(results):
            docs = [f.to_doc() for f in findings]
            images.append({"digest": result.digest, "platform": result.platform, "status": result.status,
                           "error": result.error, "findings": docs,
                           "os": (result.inventory.os.pretty_name or result.inventory.os.id)
                           if result.inventory and result.inventory.os else "",
                           "packages": len(result.inventory.packages) if result.inventory else 0})
            for d in docs:
                merged.setdefault((d["id"], d["package"], d["version"], d["purl"]), d)
        statuses = [i["status"] for i in images]
        status = ("unsupported" if not statuses or all(s == "unsupported" for s in statuses)
                  else "failed" if any(s == "failed" for s in statuses) else "complete")
        error = "; ".join(f"{i['platform'] or i['digest'][:19]}: {i['error']}" for i in images
                          if i["status"] == "failed")[:1000]
        old = previous if previous is not None else await self.reports.get(repository, digest) or {}
        doc: dict[str, Any] = {
            "_id": report_id(repository, digest), "repository": repository, "digest": digest,
            "media_type": media_type, "status": status, "error": error, "scanner": SCANNER,
            "updated_at": now, "db_generation": self.index.generation, "db_updated_at": self.index.updated_at,
            "images": images, "sbom": sbom or old.get("sbom"),
            "findings": sorted(merged.values(), key=lambda d: (d["package"], d["id"])),
            "scanned_at": now,
        }
        if status == "failed" and old.get("scanned_at"):
            # the last complete verdict holds: a failed re-scan never changes what the gate decides
            doc |= {"findings": old.get("findings", []), "scanned_at": old["scanned_at"]}
        elif status == "failed":
            doc["scanned_at"] = None
        counts = summary(doc["findings"])
        if self.metrics is not None and status != "failed":
            for severity, n in counts.items():
                if n:
                    self.metrics.findings.labels(severity=severity).inc(n)
        event = new_envelope(
            pb.ScanCompleted(repository=repository, digest=digest, scanner=SCANNER, severity_counts=counts,
                             report_id=doc["_id"], status=_STATUS_PB[status]),
            repository=repository, actor=ACTOR, trace_headers=inject_headers())
        await self.outbox.commit([Put(REPORTS, doc)], [outbound(Built(event), self.topics)])
        log.info("scan of %s@%s: %s, %s", repository, digest, status,
                 ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no findings")
        return doc

    # re-matching

    async def rematch_all(self, *, page: int = 200) -> int:
        """Match every stored report's inventories against the current index; store (with an event) each
        report whose findings changed. Returns how many changed. Layers are not read."""
        changed = 0
        after: str | None = None
        while True:
            docs = await self.docs.find(REPORTS, after=after, limit=page)
            inv_ids = sorted({i["digest"] for d in docs for i in d.get("images", []) if i.get("status") == "complete"})
            inventories = {k: Inventory.from_doc(v["inventory"])
                           for k, v in (await self.docs.get_many(INVENTORIES, inv_ids)).items()} if inv_ids else {}
            for d in docs:
                if d.get("status") not in ("complete",) or d.get("db_generation") == self.index.generation:
                    continue
                results = []
                for i in d.get("images", []):
                    inv = inventories.get(i["digest"])
                    models = tuple(Finding.from_doc(f) for f in i.get("findings", []) if f.get("kind") == "model")
                    results.append(ImageResult(i["digest"], i.get("platform", ""), i["status"], i.get("error", ""),
                                               inventory=inv, model_findings=models))
                before = {(f["id"], f["package"], f["version"], f["severity"], f.get("fixed_version"))
                          for f in d.get("findings", [])}
                new = self._findings(results)
                after_set = {(f.id, f.package, f.version, f.severity, f.fixed_version) for _, fs in new for f in fs}
                if before == after_set:
                    await self.docs.update(REPORTS, str(d["_id"]), {"db_generation": self.index.generation,
                                                                    "db_updated_at": self.index.updated_at})
                    continue
                await self._store(d["repository"], d["digest"], d.get("media_type", ""), results,
                                  sbom=d.get("sbom"), previous=d)
                if self.metrics is not None:
                    self.metrics.scans.labels(trigger="rematch", status="complete").inc()
                changed += 1
            if len(docs) < page:
                return changed
            after = str(docs[-1]["_id"])

    async def process_requests(self) -> int:
        done = 0
        if self.metrics is not None:
            self.metrics.queued.set(await self.reports.pending())
        for request in await self.reports.requests(limit=20):
            try:
                await self.scan(request["repository"], request["digest"], force=True, trigger="request")
            finally:
                await self.reports.done(request)
            done += 1
        return done
