"""A run's pacing (sweep.Collector._yield/_pace): it pauses for requests only while this process serves some
(RequestActivity), so an idle registry's run goes at full speed and a busy one's yields."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest

from services.core.activity import RequestActivity
from services.core.policy.document import PolicyDocument
from services.core.settings import TopicSettings
from services.core.storage.sqlite import SqliteDocumentStore
from services.gc import sweep
from services.gc.mark import BlobCandidate, LinkFacts
from services.gc.sweep import LINKS_PER_CLAIM, Collector, _by_links


def test_requests_keep_the_process_busy_for_a_moment_after_they_end() -> None:
    now = [100.0]
    activity = RequestActivity(clock=lambda: now[0], linger=0.5)
    assert not activity.busy()
    activity.started()
    activity.started()
    now[0] += 60
    activity.ended()
    assert activity.busy() and activity.in_flight == 1
    activity.ended()
    now[0] += 0.4
    assert activity.busy()
    now[0] += 0.2
    assert not activity.busy()


async def test_a_run_pauses_only_while_requests_come(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = SqliteDocumentStore(tmp_path / "m.db")
    busy = [False]
    try:
        gc = Collector(docs=docs, blobs=cast(Any, None), outbox=cast(Any, None), topics=TopicSettings(),
                       default_policy=PolicyDocument(), blob_grace_seconds=0, upload_expiry_seconds=0,
                       settle_seconds=0, yield_ratio=2.0, busy=lambda: busy[0])
        pauses: list[float] = []
        real_sleep = asyncio.sleep

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        started = time.monotonic() - 0.01
        await gc._yield(started)
        await gc._pace()
        assert pauses == [0.0]  # idle: no pause after work, a bare turn in planning
        busy[0] = True
        pauses.clear()
        await gc._yield(started)
        assert pauses and pauses[0] >= 0.02  # twice the 10 ms of work
    finally:
        await docs.close()


async def test_replicas_beacon_while_they_serve_and_a_gc_service_reads_it(tmp_path: Path) -> None:
    """Distributed: the gc service shares only the store with the replicas that serve requests; their beacons
    (one write a second while requests come) tell it when to pace."""
    from services.core.activity import ActivityBeacon, SharedActivity

    docs = SqliteDocumentStore(tmp_path / "m.db")
    now = [1000.0]
    try:
        activity = RequestActivity()
        beacon = ActivityBeacon(activity, docs, clock=lambda: now[0], holds=3.0)
        shared = SharedActivity(docs, clock=lambda: now[0])
        assert not await beacon.beat(), "no request yet: no write"
        await shared.refresh()
        assert not shared.busy()
        activity.started()
        assert await beacon.beat()
        await shared.refresh()
        assert shared.busy()
        activity.ended()
        assert await beacon.beat(), "a request came since the last beat"
        assert not await beacon.beat(), "none since: the beacon is left to expire"
        now[0] += 2.9
        await shared.refresh()
        assert shared.busy()
        now[0] += 0.2
        assert not shared.busy()
    finally:
        await docs.close()


async def test_the_shared_view_reads_in_the_background_at_most_once_a_period(tmp_path: Path) -> None:
    from services.core.activity import BEACON, SharedActivity
    from services.core.events.outbox import LEASES

    docs = SqliteDocumentStore(tmp_path / "m.db")
    reads = [0]
    real_get = docs.get

    async def get(collection: str, key: str) -> Any:
        reads[0] += 1
        return await real_get(collection, key)

    docs.get = get  # type: ignore[method-assign]
    try:
        await docs.ensure_collection(LEASES)
        await docs.put(LEASES, {"_id": BEACON, "until": time.time() + 60})
        shared = SharedActivity(docs, every=60)
        assert not shared.busy(), "answers from the last read (none yet) and starts one"
        for _ in range(5):
            await asyncio.sleep(0.01)
            shared.busy()
        assert shared.busy() and reads[0] == 1
    finally:
        await docs.close()


async def test_while_requests_come_a_run_keeps_fewer_steps_in_flight_and_reads_smaller_pages(tmp_path: Path) -> None:
    """On a remote store every push waits behind what a run keeps in flight there: while requests come, a run
    keeps `busy_concurrency` steps in flight (not `concurrency`) and reads pages of `busy_page`."""
    docs = SqliteDocumentStore(tmp_path / "m.db")
    busy = [True]
    try:
        gc = Collector(docs=docs, blobs=cast(Any, None), outbox=cast(Any, None), topics=TopicSettings(),
                       default_policy=PolicyDocument(), blob_grace_seconds=0, upload_expiry_seconds=0,
                       settle_seconds=0, concurrency=16, page=2000, busy=lambda: busy[0], busy_concurrency=2,
                       busy_page=200)
        assert gc._page() == 200
        in_flight = [0]
        most = [0]

        async def step(_: object) -> None:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            await asyncio.sleep(0.01)
            in_flight[0] -= 1

        await gc._each(range(20), step)
        assert most[0] == 2
        busy[0] = False
        assert gc._page() == 2000
        most[0] = 0
        await gc._each(range(40), step)
        assert most[0] == 16, "idle: at full concurrency"
    finally:
        await docs.close()


async def test_old_marks_go_in_paced_batches_one_delete_at_a_time_while_requests_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run removes three documents of every blob a run deleted TOMBSTONE_SECONDS ago; in one burst (16 deletes
    in flight on FerretDB) those of 1,000 blobs held the store from pushes for seconds. While requests come on a
    remote store they go REMOVE_BATCH at a time, one delete in flight, with a pause after each batch."""
    docs = SqliteDocumentStore(tmp_path / "m.db")
    busy = [True]
    try:
        gc = Collector(docs=docs, blobs=cast(Any, None), outbox=cast(Any, None), topics=TopicSettings(),
                       default_policy=PolicyDocument(), blob_grace_seconds=0, upload_expiry_seconds=0,
                       settle_seconds=0, concurrency=16, yield_ratio=1.0, busy=lambda: busy[0], busy_concurrency=1)
        keys = [f"t:r:b:sha256:{i:064x}" for i in range(sweep.REMOVE_BATCH * 2 + 1)]
        for key in keys:
            await docs.insert("gc_marks", {"_id": key, "state": "deleted"})
        in_flight, most, pauses = [0], [0], [0]
        real_delete = docs.delete

        async def delete(collection: str, key: str, **kwargs: Any) -> bool:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                return await real_delete(collection, key, **kwargs)
            finally:
                in_flight[0] -= 1

        async def counted_yield(started: float) -> None:
            pauses[0] += 1

        monkeypatch.setattr(docs, "delete", delete)
        monkeypatch.setattr(gc, "_yield", counted_yield)
        await gc._remove_marks(keys)
        assert await docs.count("gc_marks") == 0
        assert most[0] == 1 and pauses[0] == 3  # three batches, each followed by its pause
    finally:
        await docs.close()


def test_blobs_are_claimed_in_shares_of_at_most_500_links() -> None:
    """A share's links are deleted within DELETE_WITHIN_SECONDS of its claim, paced behind requests or not."""
    def blob(i: int, links: int) -> BlobCandidate:
        return BlobCandidate(f"sha256:{i:064x}", 1, [LinkFacts(f"r{j}", f"sha256:{i:064x}", 1, 0.0)
                                                     for j in range(links)])

    def shares(counts: list[int]) -> list[list[int]]:
        return [[len(c.links) for c in share]
                for share in _by_links([blob(i, n) for i, n in enumerate(counts)], LINKS_PER_CLAIM)]

    assert LINKS_PER_CLAIM == 500
    assert shares([1] * 501) == [[1] * 500, [1]]
    assert shares([300, 300, 200, 600, 1]) == [[300], [300, 200], [600], [1]]
    assert shares([]) == []


def test_the_link_deletes_pause_longer_only_while_the_share_fits_well_within_its_window() -> None:
    """sweep.unlink_pause: UNLINK_PAUSE times an outbox change's time, unless that would take the share's
    unlinking past half of DELETE_WITHIN_SECONDS (then its bytes could not go: they go only within the window)."""
    half = sweep.DELETE_WITHIN_SECONDS / 2
    assert sweep.unlink_pause(0.3, since_claim=1.0, left=450, per_item=0.012) == pytest.approx(0.3 * sweep.UNLINK_PAUSE)
    assert sweep.unlink_pause(0.3, since_claim=half - 0.5, left=0, per_item=0.012) == 0.0  # the pause alone is late
    assert sweep.unlink_pause(0.3, since_claim=1.0, left=1000, per_item=0.02) == 0.0  # what is left would be late
    assert sweep.unlink_pause(0.0, since_claim=1.0, left=10, per_item=0.01) == 0.0
