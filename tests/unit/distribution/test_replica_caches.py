"""Other replicas' events drop what they make stale in this replica's caches: a created or deleted tag its
repository's tag names (a moved tag keeps them), a scan report its digest's pull-gate decisions. The follower
starts at the topics' heads: old events are not replayed, new ones arrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.core.content import events
from services.core.events.envelope import encode
from services.core.events.local import LocalEventLog
from services.core.events.log import Subscription
from services.core.oci.digest import Digest
from services.distribution.replica_caches import ReplicaCacheInvalidation

D1 = Digest.parse("sha256:" + "1" * 64)
D2 = Digest.parse("sha256:" + "2" * 64)


class _Gates:
    def __init__(self) -> None:
        self.dropped: list[dict[str, Any]] = []

    def invalidate(self, **kwargs: Any) -> None:
        self.dropped.append(kwargs)


class _Meta:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.kept: list[float] = []  # keep_tag_names' calls

    def tag_set_changed(self, repository: str) -> None:
        self.changed.append(repository)

    def keep_tag_names(self, seconds: float) -> None:
        self.kept.append(seconds)


class _Outbox:
    def __init__(self, own: set[str]) -> None:
        self.own = own

    def committed_here(self, event_id: str) -> bool:
        return event_id in self.own


def _follower(own: set[str] | None = None) -> tuple[ReplicaCacheInvalidation, _Gates, _Meta]:
    gates, meta = _Gates(), _Meta()
    follower = ReplicaCacheInvalidation(None, [], gates, meta, _Outbox(own or set()))  # type: ignore[arg-type]
    return follower, gates, meta


def test_created_and_deleted_tags_drop_their_repositorys_names_and_moves_keep_them() -> None:
    follower, gates, meta = _follower()
    created = events.tag_updated("team/app", "v1", D1, None, actor="a", forced=False)
    moved = events.tag_updated("team/app", "latest", D2, D1, actor="a", forced=False)
    deleted = events.tag_deleted("team/other", "v1", D1, actor="a")
    for built in (created, moved, deleted):
        follower.apply(encode(built.envelope))
    assert meta.changed == ["team/app", "team/other"]
    assert gates.dropped == []


def test_this_replicas_own_tag_events_are_skipped_its_commits_dropped_the_names_already() -> None:
    mine = events.tag_updated("team/app", "v1", D1, None, actor="a", forced=False)
    theirs = events.tag_deleted("team/app", "v0", D1, actor="a")
    follower, _, meta = _follower({mine.envelope.id})
    for built in (mine, theirs):
        follower.apply(encode(built.envelope))
    assert meta.changed == ["team/app"]


def test_undecodable_events_are_ignored() -> None:
    follower, gates, meta = _follower()
    follower.apply(b"\x00not an envelope")
    assert meta.changed == [] and gates.dropped == []


TOPICS = ["registry.tags", "registry.scans"]


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[LocalEventLog]:
    events_log = LocalEventLog(tmp_path / "events.db", poll_interval=0.02)
    yield events_log
    await events_log.close()


@contextlib.asynccontextmanager
async def _following(follower: ReplicaCacheInvalidation) -> AsyncIterator[None]:
    """The follower runs, and has subscribed to every topic, inside the block."""
    stop = asyncio.Event()
    running = asyncio.create_task(follower.run(stop))
    try:
        async with asyncio.timeout(10):
            await follower.ready.wait()
        yield
    finally:
        stop.set()
        await running


async def _until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_follower_started_after_old_events_does_not_replay_them_and_sees_a_new_one(
    log: LocalEventLog,
) -> None:
    for i in range(200):
        old = events.tag_updated(f"team/old-{i}", "v1", D1, None, actor="a", forced=False)
        await log.publish("registry.tags", f"team/old-{i}", encode(old.envelope))
    gates, meta = _Gates(), _Meta()
    follower = ReplicaCacheInvalidation(log, TOPICS, gates, meta, _Outbox(set()),  # type: ignore[arg-type]
                                        group="replica", tag_list_seconds=5.0)
    async with _following(follower):
        # Tag names are kept only once every topic is followed; decisions made before are dropped.
        assert meta.kept == [5.0]
        assert {} in gates.dropped
        new = events.tag_deleted("team/new", "v1", D1, actor="b")
        await log.publish("registry.tags", "team/new", encode(new.envelope))
        await _until(lambda: meta.changed)
        await asyncio.sleep(0.2)
        assert meta.changed == ["team/new"]
    # A restart (same group): the new event is not read again either.
    meta2 = _Meta()
    again = ReplicaCacheInvalidation(log, TOPICS, _Gates(), meta2, _Outbox(set()),  # type: ignore[arg-type]
                                     group="replica")
    async with _following(again):
        later = events.tag_deleted("team/later", "v1", D1, actor="b")
        await log.publish("registry.tags", "team/later", encode(later.envelope))
        await _until(lambda: meta2.changed)
        assert meta2.changed == ["team/later"] and meta2.kept == []  # no TTL given: keep_tag_names left alone


class _Failing:
    """An EventLog whose first subscription to the tags topic ends in an error after it was positioned."""

    def __init__(self, inner: LocalEventLog) -> None:
        self.inner = inner
        self.failed = False
        self.broken = asyncio.Event()

    async def subscribe(self, topic: str, group: str, *, from_end: bool = False) -> Subscription:
        sub = await self.inner.subscribe(topic, group, from_end=from_end)
        if topic != "registry.tags" or self.failed:
            return sub
        self.failed = True
        outer = self

        class Broken:
            def __aiter__(self) -> Broken:
                return self

            async def __anext__(self) -> Any:
                await outer.broken.wait()
                raise ConnectionError("the event log went away")

            async def commit(self, record: Any) -> None:
                pass

            async def close(self) -> None:
                await sub.close()

        return Broken()


async def test_tag_names_are_not_kept_while_a_topic_is_lost_and_decisions_drop_when_it_is_back(
    log: LocalEventLog,
) -> None:
    events_log = _Failing(log)
    gates, meta = _Gates(), _Meta()
    follower = ReplicaCacheInvalidation(events_log, TOPICS, gates, meta, _Outbox(set()),  # type: ignore[arg-type]
                                        group="replica", tag_list_seconds=5.0)
    async with _following(follower):
        assert meta.kept == [5.0]
        dropped = len(gates.dropped)
        events_log.broken.set()
        await _until(lambda: meta.kept == [5.0, 0])
        assert not follower.ready.is_set()
        # Resubscribed (after its backoff) at the head: what was published meanwhile is never delivered, so
        # every decision is dropped again before names are kept again.
        async with asyncio.timeout(10):
            await follower.ready.wait()
        assert meta.kept == [5.0, 0, 5.0]
        assert gates.dropped[dropped:] == [{}]
        new = events.tag_deleted("team/new", "v1", D1, actor="b")
        await log.publish("registry.tags", "team/new", encode(new.envelope))
        await _until(lambda: meta.changed == ["team/new"])
