"""A push waiting on a collector's claim (gcmarks._Wait): it takes over once the claim's lease is over, or
WAIT_SECONDS after it first saw that claim; a new claim (a later run finishing a dead one's deletion) starts the
wait again, and a takeover lost to one waits for it instead of believing the blob kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from services.core.events.outbox import LEASES
from services.core.oci.digest import Digest
from services.core.storage import gcmarks as gm
from services.core.storage.meta import MANIFESTS
from services.core.storage.sqlite import SqliteDocumentStore

BLOB = "sha256:" + "b" * 64
KEY = gm.blob_key(BLOB)


def _clock_and_sleep(now: list[float], at: dict[float, Callable[[], Awaitable[None]]]
                     ) -> tuple[Callable[[], float], Callable[[float], Awaitable[None]]]:
    """A clock that a push's sleep moves by a second, running what `at` schedules once its time comes."""
    async def sleep(_: float) -> None:
        now[0] += 1.0
        for when in sorted(at):
            if now[0] >= when:
                await at.pop(when)()

    return lambda: now[0], sleep


@contextlib.asynccontextmanager
async def _run_going(tmp_path: Path, now: list[float], at: dict[float, Callable[[], Awaitable[None]]]
                     ) -> AsyncIterator[tuple[SqliteDocumentStore, gm.GcMarks]]:
    """The push side's marks, with run r1 announced."""
    docs = SqliteDocumentStore(tmp_path / "m.db")
    clock, sleep = _clock_and_sleep(now, at)
    try:
        marks = gm.GcMarks(docs, clock=clock, sleep=sleep)
        await marks.setup()
        await docs.put(LEASES, {"_id": gm.COLLECTING, "run": "r1", "until": now[0] + 86400})
        yield docs, marks
    finally:
        await docs.close()


async def _exists() -> bool:
    return True  # the bytes are still there: a push that takes over keeps the blob


async def test_a_push_takes_over_a_claim_only_once_its_wait_for_that_claim_is_over(tmp_path: Path) -> None:
    now = [1000.0]
    at: dict[float, Callable[[], Awaitable[None]]] = {}
    async with _run_going(tmp_path, now, at) as (docs, marks):
        await marks.mark(KEY, run="r1", verdict=True)
        # A claim with a long lease (a collector of the previous version held claims for 600 s).
        assert await marks.claim_verdicts([KEY], run="r1", until=now[0] + 600) == {KEY}
        started = now[0]
        assert await marks.after_link(Digest.parse(BLOB), exists=_exists) is True
        waited = now[0] - started
        assert gm.WAIT_SECONDS <= waited < gm.WAIT_SECONDS + 3
        verdict = await docs.get(gm.GC_MARKS, gm.verdict_key("r1", KEY))
        assert verdict is not None and verdict["state"] == gm.RESCUED and verdict["took_over"] is True


async def test_a_new_claim_starts_the_wait_again_and_a_lost_takeover_waits_for_it(tmp_path: Path) -> None:
    now = [1000.0]
    at: dict[float, Callable[[], Awaitable[None]]] = {}
    vkey = gm.verdict_key("r1", KEY)
    async with _run_going(tmp_path, now, at) as (docs, marks):
        await marks.mark(KEY, run="r1", verdict=True)
        assert await marks.claim_verdicts([KEY], run="r1", until=now[0] + 600) == {KEY}

        async def repair_takes_over() -> None:
            # A later run finishes the deletion under a claim of its own (sweep.py: take_over, a new `until`).
            verdict = await docs.get(gm.GC_MARKS, vkey)
            assert verdict is not None
            assert await docs.update(gm.GC_MARKS, vkey, {"until": now[0] + 600},
                                     expect={"until": verdict["until"]})

        deleted = asyncio.Event()

        async def repair_deletes() -> None:
            deleted.set()
            await docs.insert(gm.GC_MARKS, {"_id": gm.tombstone_key("r1", KEY), "state": gm.DELETED, "run": "r1",
                                            "at": now[0]})

        async def exists() -> bool:
            return not deleted.is_set()

        started = now[0]
        at[started + 30] = repair_takes_over
        at[started + 80] = repair_deletes  # past the first claim's wait, within the second's
        # Waited for the second claim and found the bytes gone (the client sends the blob again), instead of
        # taking over at the first claim's deadline, finding the bytes there and keeping a link the repair
        # then left without bytes.
        assert await marks.after_link(Digest.parse(BLOB), exists=exists) is False
        verdict = await docs.get(gm.GC_MARKS, vkey)
        assert verdict is not None and verdict["state"] == gm.DELETING, "a push took over the second claim"
        assert now[0] - started >= 80


async def test_a_takeover_lost_to_a_new_claim_of_a_previous_kind_mark_waits_for_it(tmp_path: Path) -> None:
    now = [1000.0]
    at: dict[float, Callable[[], Awaitable[None]]] = {}
    async with _run_going(tmp_path, now, at) as (docs, marks):
        # A mark of the previous kind, claimed by a run that died (its lease is over).
        await docs.put(gm.GC_MARKS, {"_id": KEY, "state": gm.DELETING, "run": "dead", "until": now[0] - 1})
        real_update = docs.update
        renewed = asyncio.Event()

        async def update(collection: str, key: str, *args: object, **kwargs: object) -> bool:
            if collection == gm.GC_MARKS and key == KEY and not renewed.is_set():
                # The next run's repair takes the claim over first (a new `until`): the push's CAS loses.
                renewed.set()
                await real_update(gm.GC_MARKS, KEY, {"run": "next", "until": now[0] + 600},
                                  expect={"run": "dead"})
                at[now[0] + 5] = bury
            return await real_update(collection, key, *args, **kwargs)  # type: ignore[arg-type]

        async def bury() -> None:
            await docs.put(gm.GC_MARKS, {"_id": KEY, "state": gm.DELETED, "at": now[0]})

        docs.update = update  # type: ignore[method-assign]

        async def exists() -> bool:  # the bytes are there until the repair buries the mark
            mark = await docs.get(gm.GC_MARKS, KEY)
            return mark is None or mark["state"] != gm.DELETED

        # It waited for the new claim and found the bytes gone, instead of checking them while the repair was
        # about to delete them.
        assert await marks.after_link(Digest.parse(BLOB), exists=exists) is False
        mark = await docs.get(gm.GC_MARKS, KEY)
        assert mark is not None and mark["state"] == gm.DELETED  # the new claim was never taken over


async def test_a_manifest_delete_that_stalls_past_a_takeover_loses(tmp_path: Path) -> None:
    """A push of an index whose child a collector claimed and then stalled on (past the claim's lease): the push
    takes the claim over and keeps the child, and the collector's late delete (as it read the child: its
    generation) no longer applies, so the index's reference does not dangle."""
    now = [1000.0]
    at: dict[float, Callable[[], Awaitable[None]]] = {}
    child = "sha256:" + "c" * 64
    key = gm.manifest_key("team/app", child)
    async with _run_going(tmp_path, now, at) as (docs, marks):
        await docs.put(MANIFESTS, {"_id": f"team/app@{child}", "repository": "team/app", "digest": child,
                                   "generation": "as-read"})
        await marks.mark(key, run="r1", extra={"generation": "as-read"})
        assert await marks.claim(key, run="r1", until=now[0] + 60)
        assert await marks.before_manifest("team/app", [], [child]) == []  # kept: the index may be stored
        assert now[0] >= 1060, "took over before the claim's lease was over"
        # The collector wakes up and deletes the child as it read it.
        assert await docs.delete(MANIFESTS, f"team/app@{child}", expect={"generation": "as-read"}) is False
        assert await docs.get(MANIFESTS, f"team/app@{child}") is not None
