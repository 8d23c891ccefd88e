"""A partial change's consecutive deletes go together (delete_each) with exactly the per-operation results
that applying them one by one gives, replays included."""

from __future__ import annotations

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
