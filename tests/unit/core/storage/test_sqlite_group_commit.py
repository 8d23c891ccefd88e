"""The SQLite adapter's group commit: concurrent writes share transactions, and each still succeeds or fails
alone (the DocumentStore contract suite covers the semantics of every write)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from services.core.storage.documents import DuplicateKeyError
from services.core.storage.sqlite import SqliteDocumentStore


async def test_concurrent_writes_share_commits_and_fail_alone(tmp_path: Path) -> None:
    store = SqliteDocumentStore(tmp_path / "m.db")
    try:
        await store.insert("things", {"_id": "taken", "n": 0})
        before = store.group_commits

        async def write(i: int) -> str:
            try:
                await store.insert("things", {"_id": "taken" if i % 10 == 0 else f"k{i}", "n": i})
            except DuplicateKeyError:
                return "duplicate"
            return "ok"

        outcomes = await asyncio.gather(*(write(i) for i in range(200)))
        assert outcomes.count("duplicate") == 20 and outcomes.count("ok") == 180
        # Far fewer transactions than writes: the writes queued during one commit went in the next.
        assert store.group_commits - before < 100
        assert await store.count("things") == 181
        assert await store.update("things", "k1", {"n": -1}, expect={"n": 1})
        assert not await store.update("things", "k1", {"n": -2}, expect={"n": 1})
        assert not await store.delete("missing_collection", "x")  # matches nothing, creates nothing
        assert "missing_collection" not in await store.collection_names()
    finally:
        await store.close()
    # Durable and visible to another connection once answered.
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT count(*) FROM things").fetchone()[0] == 181


async def test_a_write_after_close_is_refused(tmp_path: Path) -> None:
    store = SqliteDocumentStore(tmp_path / "m.db")
    await store.insert("things", {"_id": "a"})
    await store.close()
    with pytest.raises(RuntimeError):
        await store.insert("things", {"_id": "b"})
