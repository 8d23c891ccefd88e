"""Keep this replica's caches fresh from the event log, so other replicas' changes show within a second, not
only after the caches' TTLs:
- pull-gate decisions (`registry.pull_gate_cache_seconds`): a scan report or a signature result for a digest,
  or a policy change, drops the decisions it makes stale, so a newly verified signature unblocks its image;
- tag listings (`registry.tag_list_cache_seconds`, storage/meta.py): a tag created or deleted drops its
  repository's names. This replica's own commits changed them at once, so their events are skipped: under
  a burst of pushes the follower lags, and each late event would drop names read after its change.

Each replica reads every partition of the topics by itself (every replica must see every event), from their
heads as they are when it subscribes (`from_end`): the caches are empty when a replica starts, so older
events would only delay the new ones (a replica restarted after months replayed the topics' whole retention
before it saw a new tag). The events published while no subscription is open are never delivered, so each
(re)subscription drops every pull-gate decision, and tag names are kept only while every topic is followed
(`keep_tag_names`, turned on once all are positioned, which refuses names read before; off while one is lost,
which drops the names kept).
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
    # Names the follower only: its subscriptions from the end join no group and commit nothing. (The name
    # predates tag listings.)
    return f"distribution-gates-{socket.gethostname()}-{os.getpid()}"


class ReplicaCacheInvalidation:
    def __init__(self, events: EventLog, topics: list[str], gates: PullGates, meta: MetadataStore, outbox: Outbox,
                 *, group: str | None = None, tag_list_seconds: float = 0.0) -> None:
        self._events = events
        self._topics = topics
        self._gates = gates
        self._meta = meta
        self._outbox = outbox
        self._group = group or replica_group()
        # `registry.tag_list_cache_seconds`, for `keep_tag_names` once every topic is followed (0: left alone).
        self._tag_list_seconds = tag_list_seconds
        self._followed: set[str] = set()
        self.ready = asyncio.Event()
        """Set while every topic is followed: each event published since then will be applied."""

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

    def _positioned(self, topic: str) -> None:
        # What was published before (or while no subscription was open) is never delivered; a decision made
        # meanwhile may be stale. (Kept tag names were dropped when the topic was lost: `_lost`.)
        self._gates.invalidate()
        self._followed.add(topic)
        if self._followed >= set(self._topics) and not self.ready.is_set():
            if self._tag_list_seconds > 0:
                self._meta.keep_tag_names(self._tag_list_seconds)
            self.ready.set()

    def _lost(self, topic: str) -> None:
        self._followed.discard(topic)
        if self.ready.is_set():
            self.ready.clear()
            if self._tag_list_seconds > 0:
                self._meta.keep_tag_names(0)

    async def _follow(self, topic: str, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                sub = await self._events.subscribe(topic, f"{self._group}-{topic}", from_end=True)
                self._positioned(topic)
                try:
                    async for delivery in sub:
                        self.apply(delivery.record.value)
                        await delivery.ack()
                        backoff = 0.5
                        if stop.is_set():
                            break
                finally:
                    self._lost(topic)
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
