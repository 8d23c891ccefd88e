"""A partial change's consecutive deletes go together (delete_each) with exactly the per-operation results
that applying them one by one gives, replays included."""

from __future__ import annotations

import time
from pathlib import Path

from services.core.events.outbox import Delete, Operation, Put, apply_operations
from services.core.storage.sqlite import SqliteDocumentStore


async def test_partial_deletes_report_each_operation_as_applied_alone(tmp_path: Path) -> None:
    docs = SqliteDocumentStore(tmp_path / "m.db")
    try:
        for i in range(4):
            await docs.insert("links", {"_id": f"r@{i}", "created": float(i)})
        ops: list[Operation] = [
            Delete("links", "r@0", expect={"created": 0.0}),  # matches
            Delete("links", "r@1", expect={"created": 9.0}),  # re-linked since: stays, not applied
            Delete("links", "r@7", expect={"created": 7.0}),  # already absent: applied (a replay)
            Put("other", {"_id": "x"}),
            Delete("links", "r@2"),
            Delete("links", "r@2", expect={"created": 5.0}),  # the same key again: after the first, absent
            Delete("links", "r@3", expect={"created": 3.0}),
        ]
        committed = await apply_operations(docs, ops, partial=True)
        assert committed.applied == (True, False, True, True, True, True, True)
        assert [d["_id"] for d in await docs.find("links")] == ["r@1"]
        # Replayed after a crash (the relay recovering the intent): the same answer where the effect holds.
        again = await apply_operations(docs, ops, partial=True)
        assert again.applied == (True, False, True, True, True, True, True)
    finally:
        await docs.close()


async def test_a_paced_change_applies_one_operation_at_a_time_with_the_same_results(tmp_path: Path) -> None:
    """`pace` (a GC run behind requests) is awaited after each operation, none in flight meanwhile."""
    docs = SqliteDocumentStore(tmp_path / "m.db")
    try:
        for i in range(3):
            await docs.insert("links", {"_id": f"r@{i}", "created": float(i)})
        ops: list[Operation] = [Delete("links", "r@0", expect={"created": 0.0}),
                                Delete("links", "r@1", expect={"created": 9.0}), Delete("links", "r@2")]
        paced: list[int] = []

        async def pace(started: float) -> None:
            assert started <= time.monotonic()
            paced.append(await docs.count("links"))  # what is left after each operation

        committed = await apply_operations(docs, ops, partial=True, pace=pace)
        assert committed.applied == (True, False, True)
        assert paced == [2, 2, 1]
    finally:
        await docs.close()


async def test_a_whole_change_stops_at_its_first_losing_delete(tmp_path: Path) -> None:
    docs = SqliteDocumentStore(tmp_path / "m.db")
    try:
        await docs.insert("links", {"_id": "a", "v": 1})
        await docs.insert("links", {"_id": "b", "v": 1})
        committed = await apply_operations(docs, [Delete("links", "a", expect={"v": 2}), Delete("links", "b")],
                                           partial=False)
        assert committed.applied == (False, False) and await docs.count("links") == 2
    finally:
        await docs.close()
