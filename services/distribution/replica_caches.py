"""Keep this replica's caches fresh from the event log, so other replicas' changes show within a second, not
only after the caches' TTLs:
- pull-gate decisions (`registry.pull_gate_cache_seconds`): a scan report or a signature result for a digest,
  or a policy change, drops the decisions it makes stale, so a newly verified signature unblocks its image;
- tag listings (`registry.tag_list_cache_seconds`, storage/meta.py): a tag created or deleted drops its
  repository's names. This replica's own commits changed them at once, so their events are skipped: under
  a burst of pushes the follower lags, and each late event would drop names read after its change.

Each replica reads the topics in a consumer group of its own (every replica must see every event). A new
group starts from the beginning of the topics; replaying old events only drops cache entries, which is
harmless, and the topics' retention bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from services.core.events.envelope import EnvelopeDecodeError, decode, payload_field, payload_of
from services.core.events.log import EventLog
from services.core.events.outbox import Outbox
from services.core.policy.gates import PullGates
from services.core.storage.meta import MetadataStore

log = logging.getLogger(__name__)


def replica_group() -> str:
    # The name predates tag listings; kept so that a rolling upgrade reuses the groups' offsets.
    return f"distribution-gates-{socket.gethostname()}-{os.getpid()}"


class ReplicaCacheInvalidation:
    def __init__(self, events: EventLog, topics: list[str], gates: PullGates, meta: MetadataStore, outbox: Outbox,
                 *, group: str | None = None) -> None:
        self._events = events
        self._topics = topics
        self._gates = gates
        self._meta = meta
        self._outbox = outbox
        self._group = group or replica_group()

    def apply(self, value: bytes) -> None:
        """Drop what one event makes stale (pure but for the cache)."""
        try:
            env = decode(value)
            kind = payload_field(env)
        except EnvelopeDecodeError:
            return
        payload = payload_of(env)
        if kind in ("scan_completed", "signature_verified"):
            self._gates.invalidate(digest=str(getattr(payload, "digest", "")))
        elif kind == "policy_changed":
            self._gates.invalidate(namespace=str(getattr(payload, "namespace", "")) or None)
        elif kind == "manifest_deleted":
            self._gates.invalidate(digest=str(getattr(payload, "digest", "")))
        elif self._changes_tag_set(kind, payload) and not self._outbox.committed_here(env.id):
            self._meta.tag_set_changed(str(getattr(payload, "repository", "")))

    @staticmethod
    def _changes_tag_set(kind: str, payload: object) -> bool:
        """A tag created (no previous digest) or deleted; a moved tag keeps the names."""
        return (kind == "tag_updated" and not getattr(payload, "previous_digest", "")) or kind == "tag_deleted"

    async def _follow(self, topic: str, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                # A group per topic: members of one group on different topics would rebalance each other.
                sub = await self._events.subscribe(topic, f"{self._group}-{topic}")
                try:
                    async for delivery in sub:
                        self.apply(delivery.record.value)
                        await delivery.ack()
                        backoff = 0.5
                        if stop.is_set():
                            break
                finally:
                    await sub.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cache's TTL covers the gap; keep following
                log.debug("cache invalidation on %s: %s; retrying in %.1fs", topic, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._follow(topic, stop)) for topic in self._topics]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
