"""The replicator: turns registry events into queued work per rule, and workers that copy it to the targets.

- `handle(envelope)` (the consumer of the manifest and tag topics): one durable queue item per matching
  event-mode rule, then it returns, so the event is acknowledged only once its work is stored.
- `run(stop)` (a loop): the head item of each (rule, repository) is claimed (a lease), done, removed; a
  failure is recorded with its reason and retried with backoff, forever (a target that is down catches up
  when it is back). Work is state-based: a tag item copies what the tag points at *now*, a delete item deletes
  only what the source no longer has, so redelivered, reordered or repeated items converge.
- Periodic rules enqueue a full sync on their schedule; `resync` does the same on demand.
- Each copied manifest sends a `ReplicationCompleted` event (through the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from services.core.client import (
    ClientOptions,
    OciClient,
    OciClientError,
    OciConnectionError,
    OciNotFoundError,
    OciResponseError,
    OciUnauthorizedError,
    RemoteRepository,
)
from services.core.content import events as content_events
from services.core.cron import CronExpression
from services.core.events.envelope import new_envelope, payload_field
from services.core.events.outbox import Outbox
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.secrets import MasterKeyMissingError, SecretBox, secret_box
from services.core.settings import ReplicationSettings, Settings, TopicSettings
from services.core.ssrf import Trust, UrlPolicy, guarded_connector
from services.core.storage.blobs import BlobReader
from services.core.storage.documents import DocumentStore
from services.core.storage.meta import ManifestRecord, MetadataStore
from services.replicator.copier import GraphCopier
from services.replicator.metrics import ReplicatorMetrics
from services.replicator.queue import ReplicationQueue, RuleStatus, WorkItem, backoff
from services.replicator.rules import RULES, Rule, RuleInvalidError, rule_from_doc, rule_from_settings

log = logging.getLogger(__name__)

LEASE_SECONDS = 20.0
"""A claimed item's lease, renewed every third of it while the copy runs: work of a replicator that died is
taken by the next one (or by itself, restarted) within this time."""
RULES_CACHE_SECONDS = 1.0
CLOCK_SKEW_SECONDS = 1.0
"""Allowed difference between the clocks of the process that wrote an event and the replicator's."""


class RuleNotFoundError(LookupError):
    """No rule of that name."""


def _reason(exc: BaseException) -> str:
    """A bounded failure category for metrics."""
    if isinstance(exc, OciConnectionError):
        return "unreachable"
    if isinstance(exc, OciUnauthorizedError):
        return "unauthorized"
    if isinstance(exc, OciResponseError):
        return f"http-{exc.status}"
    if isinstance(exc, OciClientError):
        return "protocol"
    return "internal"


@dataclass
class _Clients:
    key: tuple[Any, ...]
    client: OciClient


class Replicator:
    def __init__(self, *, docs: DocumentStore, meta: MetadataStore, blobs: BlobReader, outbox: Outbox,
                 settings: Settings, metrics: ReplicatorMetrics, clock: Callable[[], float] = time.time) -> None:
        self.docs, self.meta, self.blobs, self.outbox = docs, meta, blobs, outbox
        self.settings: ReplicationSettings = settings.replication
        self.topics: TopicSettings = settings.topics
        self.max_manifest_bytes = settings.registry.max_manifest_bytes
        self.metrics = metrics
        self.queue = ReplicationQueue(docs, clock=clock)
        self._clock = clock
        self._box: SecretBox | None
        try:
            self._box = secret_box(settings.signer.master_key)
        except MasterKeyMissingError:
            self._box = None
        self._static = [rule_from_settings(r) for r in self.settings.rules]
        self._rules: dict[str, Rule] = {}
        self._rules_read = -1e9
        self._rules_read_at = -1e9  # the same moment on the wall clock (compared with event times)
        self._clients: dict[str, _Clients] = {}
        self._wake = asyncio.Event()
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def setup(self) -> None:
        await self.queue.setup()
        await self.docs.ensure_collection(RULES)

    async def close(self) -> None:
        for entry in self._clients.values():
            await entry.client.close()
        self._clients.clear()

    # rules

    async def rules(self, *, fresh: bool = False, newer_than: float | None = None) -> dict[str, Rule]:
        """Every rule (settings file and API), re-read at most every RULES_CACHE_SECONDS, and whenever they were
        last read before `newer_than` (an event's time): a rule made just before a push applies to that push."""
        now = time.monotonic()
        if newer_than is not None and self._rules_read_at < newer_than + CLOCK_SKEW_SECONDS:
            fresh = True
        if fresh or now - self._rules_read > RULES_CACHE_SECONDS:
            read_at = self._clock()
            rules = {r.name: r for r in self._static}
            for doc in await self.docs.find(RULES, limit=10_000):
                try:
                    rule = rule_from_doc(doc, self._box)
                except RuleInvalidError as exc:
                    log.warning("replication rule %s is unusable: %s", doc.get("_id"), exc)
                    continue
                rules.setdefault(rule.name, rule)
            self._rules, self._rules_read, self._rules_read_at = rules, now, read_at
        return self._rules

    async def rule(self, name: str) -> Rule:
        rule = (await self.rules(fresh=True)).get(name)
        if rule is None:
            raise RuleNotFoundError(f"no replication rule {name!r}")
        return rule

    def _client(self, rule: Rule) -> OciClient:
        target = rule.target
        key = (target.url, target.username, target.password, target.insecure, target.ca_file)
        entry = self._clients.get(rule.name)
        if entry is not None and entry.key == key:
            return entry.client
        if entry is not None:
            old = entry.client
            asyncio.get_running_loop().create_task(old.close())
        # Targets are set by registry admins or the settings file: trusted URLs, which may be private but never
        # link-local or cloud metadata addresses (services/core/ssrf.py); checked on every connection.
        session = aiohttp.ClientSession(connector=guarded_connector(UrlPolicy(Trust.TRUSTED)), auto_decompress=False)
        options = ClientOptions(registries={target.registry: target.options()},
                                max_manifest_bytes=self.max_manifest_bytes, user_agent="hanzo-registry-replicator")
        client = OciClient(options, session=session)
        # The client does not own a passed session: close it with the client.
        original_close = client.close

        async def close() -> None:
            await original_close()
            await session.close()

        client.close = close  # type: ignore[method-assign]
        self._clients[rule.name] = _Clients(key, client)
        return client

    # events

    async def handle(self, envelope: pb.Envelope) -> None:
        """Queue the work an event means for each event-mode rule that matches it."""
        field = payload_field(envelope)
        if field not in ("manifest_pushed", "manifest_deleted", "tag_updated", "tag_deleted"):
            return
        payload = getattr(envelope, field)
        repository = payload.repository or envelope.repository
        when = envelope.time.ToDatetime(tzinfo=UTC).timestamp() if envelope.HasField("time") else self._clock()
        queued = False
        for rule in (await self.rules(newer_than=when)).values():
            if not rule.event_driven or not rule.matches_repository(repository):
                continue
            item: dict[str, str] | None = None
            if field == "tag_updated" and rule.matches_tag(payload.tag):
                item = {"kind": "tag", "reference": payload.tag, "digest": payload.digest}
            elif field == "manifest_pushed" and payload.subject_digest and rule.include_referrers:
                # A referrer pushed by digest (oras attach, an SBOM); tagged manifests come with their tag events.
                item = {"kind": "manifest", "reference": payload.digest, "digest": payload.digest}
            elif field == "tag_deleted" and rule.delete and rule.matches_tag(payload.tag):
                item = {"kind": "delete_tag", "reference": payload.tag, "digest": payload.digest}
            elif field == "manifest_deleted" and rule.delete:
                item = {"kind": "delete_manifest", "reference": payload.digest, "digest": payload.digest}
            if item is None:
                continue
            await self.queue.enqueue(rule=rule.name, repository=repository, event_id=envelope.id, event_time=when,
                                     **item)
            queued = True
        if queued:
            self._wake.set()

    async def resync(self, name: str, *, repository: str = "") -> int:
        """Queue a full sync of a rule (or of one repository of it); waiting retries become due now."""
        rule = await self.rule(name)
        await self.queue.retry_now(rule.name)
        if repository:
            await self.queue.enqueue(rule=rule.name, repository=repository, kind="sync_repository")
        else:
            await self.queue.enqueue(rule=rule.name, repository="", kind="sync_rule")
        self._wake.set()
        return 1

    async def status(self, name: str = "") -> list[tuple[Rule, RuleStatus]]:
        rules = await self.rules(fresh=True)
        if name and name not in rules:
            raise RuleNotFoundError(f"no replication rule {name!r}")
        chosen = [rules[name]] if name else sorted(rules.values(), key=lambda r: r.name)
        return [(rule, await self.queue.status(rule.name)) for rule in chosen]

    # workers

    async def run(self, stop: asyncio.Event) -> None:
        """Take due work until `stop`; work in flight is finished (or its lease runs out) on shutdown."""
        try:
            while not stop.is_set():
                # Cleared before looking at the queue, never after: work queued (or finished) while `_dispatch`
                # awaits the store sets it again, and the wait below returns at once instead of after a poll.
                self._wake.clear()
                try:
                    await self._dispatch()
                except Exception as exc:  # the metadata store is away: try again shortly
                    log.warning("replication queue unavailable: %s", exc)
                timeout = self.settings.poll_interval_seconds
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await _first(stop.wait(), self._wake.wait())
            if self._busy:
                await asyncio.wait(list(self._busy.values()), timeout=5.0)
        finally:
            for task in self._busy.values():
                task.cancel()
            await self.close()

    async def _dispatch(self) -> None:
        for done in [g for g, t in self._busy.items() if t.done()]:
            del self._busy[done]
        free = self.settings.concurrency - len(self._busy)
        if free <= 0:
            return
        for item in await self.queue.ready():
            if free <= 0:
                break
            if item.group in self._busy:
                continue
            if not await self.queue.claim(item, lease_seconds=LEASE_SECONDS):
                continue
            task = asyncio.create_task(self._work(item), name=f"replicate:{item.rule}:{item.repository}")
            self._busy[item.group] = task
            free -= 1

    async def _work(self, item: WorkItem) -> None:
        keeper = asyncio.create_task(self._keep_lease(item))
        try:
            await self.process(item)
        finally:
            keeper.cancel()
            self._wake.set()

    async def _keep_lease(self, item: WorkItem) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(Exception):
                await self.queue.extend(item, lease_seconds=LEASE_SECONDS)

    async def process(self, item: WorkItem) -> None:
        """Do one claimed item: on success remove it and count it; on failure record why and retry later."""
        rule = (await self.rules()).get(item.rule)
        if rule is None or not rule.enabled:
            await self.queue.done(item)  # the rule went (or was disabled): its work with it
            return
        try:
            copied, nbytes = await self._do(rule, item)
        except Exception as exc:
            reason = _reason(exc)
            message = f"{item.kind} {item.repository} {item.reference}: {exc}".strip()
            if reason == "internal":
                log.exception("replication %s failed", rule.name)
            else:
                log.warning("replication %s to %s failed (attempt %d): %s", rule.name, rule.target.registry,
                            item.attempts + 1, message)
            self.metrics.failures.labels(rule=rule.name, reason=reason).inc()
            delay = backoff(item.attempts + 1, initial=self.settings.backoff_initial_seconds,
                            maximum=self.settings.backoff_max_seconds)
            await self.queue.failed(item, message, delay=delay)
            await self.queue.record(rule.name, error=message)
            if item.attempts == 0 and item.kind in ("tag", "manifest"):
                await self._announce(rule, item.repository, [(item.digest, item.reference)], error=message)
            return
        lag = max(0.0, self._clock() - item.event_time) if item.event_id else None
        await self.queue.done(item)
        if lag is not None:
            self.metrics.lag.labels(rule=rule.name).observe(lag)
        self.metrics.bytes.labels(rule=rule.name).inc(nbytes)
        self.metrics.manifests.labels(rule=rule.name).inc(len(copied))
        await self.queue.record(rule.name, item=item, manifests=len(copied), nbytes=nbytes, lag=lag)
        if copied:
            tag = item.reference if item.kind == "tag" else ""
            await self._announce(rule, item.repository, [(str(r.digest), tag) for r in copied])

    async def _do(self, rule: Rule, item: WorkItem) -> tuple[list[ManifestRecord], int]:
        if item.kind == "sync_rule":
            await self._expand(rule)
            return [], 0
        copier = self._copier(rule, item.repository)
        if item.kind == "tag":
            await self._copy_tag(copier, item.reference)
        elif item.kind == "manifest":
            record = await self.meta.manifest(item.repository, Digest.parse(item.reference))
            if record is not None and (record.subject is None or await copier._target_has(record.subject)):
                await copier.copy_manifest(record)  # else: it comes along when its subject is copied
        elif item.kind == "sync_repository":
            after: str | None = None
            while True:
                tags = await self.meta.list_tags(item.repository, after=after, limit=500)
                for tag in tags:
                    if rule.matches_tag(tag):
                        await self._copy_tag(copier, tag)
                if len(tags) < 500:
                    break
                after = tags[-1]
        elif item.kind == "delete_tag":
            await self._delete_tag(rule, copier, item)
        elif item.kind == "delete_manifest":
            await self._delete_manifest(copier, item)
        return copier.result.manifests, copier.result.bytes_uploaded

    async def _copy_tag(self, copier: GraphCopier, tag: str) -> None:
        current = await self.meta.tag(copier.source, tag)
        if current is None:
            return  # deleted meanwhile: its delete event says what to do
        record = await self.meta.manifest(copier.source, current.digest)
        if record is None:
            return
        await copier.copy_tag(tag, record)

    async def _delete_tag(self, rule: Rule, copier: GraphCopier, item: WorkItem) -> None:
        if await self.meta.tag(item.repository, item.reference) is not None:
            return  # pushed again since
        try:
            await copier.client.delete_manifest(copier.target, Tag(item.reference))
        except OciNotFoundError:
            return
        except OciResponseError as exc:
            if exc.status not in (400, 405) or not item.digest:
                raise
            # A registry that deletes manifests only (CNCF Distribution 2.x): delete the tag's manifest when
            # the source no longer has it either (its ManifestDeleted item does the same).
            digest = Digest.parse(item.digest)
            if await self.meta.manifest(item.repository, digest) is None:
                with contextlib.suppress(OciNotFoundError):
                    await copier.client.delete_manifest(copier.target, digest)
            else:
                log.info("rule %s: %s cannot delete tag %s alone (%s); left in place", rule.name,
                         rule.target.registry, item.reference, exc.code)

    async def _delete_manifest(self, copier: GraphCopier, item: WorkItem) -> None:
        digest = Digest.parse(item.reference)
        if await self.meta.manifest(item.repository, digest) is not None:
            return  # pushed again since
        with contextlib.suppress(OciNotFoundError):
            await copier.client.delete_manifest(copier.target, digest)

    async def _expand(self, rule: Rule) -> None:
        after: str | None = None
        while True:
            names = await self.meta.list_repositories(after=after, limit=500)
            for name in names:
                if rule.matches_repository(name):
                    await self.queue.enqueue(rule=rule.name, repository=name, kind="sync_repository")
            if len(names) < 500:
                break
            after = names[-1]

    def _copier(self, rule: Rule, repository: str) -> GraphCopier:
        client = self._client(rule)
        target = RemoteRepository(rule.target.registry, RepositoryName(rule.destination(repository)))

        async def mount_candidates(digest: Digest) -> AsyncIterator[str]:
            for other in await self.meta.repositories_linking(digest, limit=5):
                if other != repository and rule.matches_repository(other):
                    yield rule.destination(other)

        return GraphCopier(meta=self.meta, blobs=self.blobs, client=client, source=repository, target=target,
                           include_referrers=rule.include_referrers, mount_candidates=mount_candidates,
                           blob_concurrency=self.settings.blob_concurrency,
                           chunked_above=self.settings.chunked_above_bytes, chunk_size=self.settings.chunk_bytes,
                           max_manifest_bytes=self.max_manifest_bytes)

    async def _announce(self, rule: Rule, repository: str, copied: list[tuple[str, str]], *, error: str = "") -> None:
        """`ReplicationCompleted` per manifest (SUCCEEDED, or FAILED with the reason), through the outbox."""
        status = pb.REPLICATION_STATUS_FAILED if error else pb.REPLICATION_STATUS_SUCCEEDED
        outbound = []
        for digest, tag in copied:
            payload = pb.ReplicationCompleted(rule=rule.name, target_registry=rule.target.registry,
                                              repository=repository, digest=digest, status=status, error=error,
                                              tag=tag)
            envelope = new_envelope(payload, repository=repository, actor="replicator")
            outbound.append(content_events.outbound(content_events.Built(envelope), self.topics))
        try:
            await self.outbox.commit([], outbound)
        except Exception as exc:  # the copy is done; an event that cannot be stored now is not worth redoing it
            log.warning("replication events of rule %s not stored: %s", rule.name, exc)

    # periodic rules

    async def schedule_loop(self, stop: asyncio.Event) -> None:
        """Queue a full sync of each periodic rule when its schedule comes (checked every few seconds)."""
        last: dict[str, datetime] = {}
        while not stop.is_set():
            now = datetime.now(UTC)
            try:
                for rule in (await self.rules()).values():
                    if not rule.enabled or rule.mode != "periodic" or not rule.schedule:
                        continue
                    if await self.queue.first_seen(rule.name):
                        # A new periodic rule copies what is already there at once, then on its schedule.
                        last[rule.name] = now
                        await self.resync(rule.name)
                        continue
                    since = last.setdefault(rule.name, now)
                    if CronExpression.parse(rule.schedule).next_after(since) <= now:
                        last[rule.name] = now
                        await self.resync(rule.name)
                await self._report_pending()
            except Exception as exc:
                log.warning("replication schedule check failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await stop.wait()

    async def _report_pending(self) -> None:
        for rule in (await self.rules()).values():
            count, _ = await self.queue.pending(rule.name)
            self.metrics.pending.labels(rule=rule.name).set(count)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
