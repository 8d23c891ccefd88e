"""The SQLite adapter's read lanes: a point read is not queued behind a scan of many documents (the scan lane
has a connection of its own), and a big page is decoded off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from services.core.storage import sqlite as sqlite_adapter
from services.core.storage.documents import background
from services.core.storage.sqlite import SqliteDocumentStore


async def test_a_get_does_not_wait_behind_a_find(tmp_path: Path, monkeypatch: Any) -> None:
    store = SqliteDocumentStore(tmp_path / "m.db")
    try:
        for i in range(5):
            await store.insert("things", {"_id": f"k{i}", "n": i})
        release = threading.Event()
        scanning = asyncio.Event()
        loop = asyncio.get_running_loop()
        scan = await store._db("scan")

        def stuck(*_: Any) -> int:
            loop.call_soon_threadsafe(scanning.set)
            release.wait(10)
            return 0

        # Hold the scan lane's thread, as a long scan page would.
        blocker = asyncio.ensure_future(scan._execute(stuck))  # type: ignore[no-untyped-call]
        await scanning.wait()
        finding = asyncio.ensure_future(store.find("things"))
        got = await asyncio.wait_for(store.get("things", "k3"), 5)
        assert got == {"_id": "k3", "n": 3}
        assert not finding.done()
        release.set()
        await blocker
        assert len(await finding) == 5
    finally:
        await store.close()


async def test_a_big_page_is_decoded_in_a_worker_thread(tmp_path: Path, monkeypatch: Any) -> None:
    store = SqliteDocumentStore(tmp_path / "m.db")
    try:
        n = sqlite_adapter._DECODE_ON_LOOP_MAX + 1
        await asyncio.gather(*(store.insert("things", {"_id": f"k{i:04d}", "n": i}) for i in range(n)))
        threads: list[str] = []
        decode = SqliteDocumentStore._decode.__func__  # type: ignore[attr-defined]

        def recording(cls: Any, rows: Any, projected: Any) -> Any:
            threads.append(threading.current_thread().name)
            return decode(cls, rows, projected)

        monkeypatch.setattr(SqliteDocumentStore, "_decode", classmethod(recording))
        assert [d["n"] for d in await store.find("things")] == list(range(n))
        assert [d["n"] for d in await store.find("things", limit=3, fields=("n",))] == [0, 1, 2]
        assert threads[0] != threading.main_thread().name
        assert threads[1] == threading.main_thread().name
    finally:
        await store.close()


def record_groups(monkeypatch: Any) -> list[list[str]]:
    """The collections of each group commit's writes, in commit order."""
    groups: list[list[str]] = []
    commit = SqliteDocumentStore._commit_group

    def recording(self: SqliteDocumentStore, group: Any) -> None:
        groups.append([w.table for w in group])
        commit(self, group)

    monkeypatch.setattr(SqliteDocumentStore, "_commit_group", recording)
    return groups


async def test_background_work_reads_on_a_lane_of_its_own_and_writes_behind_requests(tmp_path: Path,
                                                                                    monkeypatch: Any) -> None:
    """documents.background (GC runs): a request's read never queues behind a run's page, and a request's write
    goes in the next group commit with only a few of the run's writes beside it."""
    store = SqliteDocumentStore(tmp_path / "m.db")
    try:
        await store.insert("requests", {"_id": "first"})
        with background():
            assert await store.find("requests") == [{"_id": "first"}]
        assert "background" in store._conns and "scan" not in store._conns
        groups = record_groups(monkeypatch)
        with background():
            run = [asyncio.ensure_future(store.insert("run", {"_id": f"r{i}"})) for i in range(300)]
        request = asyncio.ensure_future(store.insert("requests", {"_id": "second"}))
        await asyncio.gather(request, *run)
        first = groups[0]
        assert "requests" in first and first.count("run") <= sqlite_adapter._BACKGROUND_BESIDE, first
        assert all(len(g) <= sqlite_adapter._BACKGROUND_ALONE for g in groups[1:]), [len(g) for g in groups]
        assert sum(g.count("run") for g in groups) == 300
    finally:
        await store.close()


async def test_background_writes_ride_a_requests_commit_while_requests_write(tmp_path: Path,
                                                                             monkeypatch: Any) -> None:
    """While requests write, a run's writes wait a little for a request's group rather than commit (and fsync)
    alone, which a request arriving meanwhile would wait out; on an idle store they commit at once."""
    store = SqliteDocumentStore(tmp_path / "m.db")
    try:
        groups = record_groups(monkeypatch)
        with background():
            await store.insert("run", {"_id": "idle"})  # nobody writing: alone, at once
        assert groups == [["run"]]
        await store.insert("requests", {"_id": "first"})
        # A hold far longer than the test: the background write can only go with the next request's commit.
        monkeypatch.setattr(sqlite_adapter, "_BACKGROUND_HOLD_SECONDS", 60.0)
        with background():
            run = asyncio.ensure_future(store.insert("run", {"_id": "busy"}))
        await asyncio.sleep(0.05)  # a chance to commit alone, which it must not take
        assert not run.done() and groups == [["run"], ["requests"]], groups
        await store.insert("requests", {"_id": "second"})
        await run
        assert groups[-1] == ["requests", "run"]
        monkeypatch.undo()  # the real hold, and nothing recorded from here on
        groups = record_groups(monkeypatch)
        with background():
            await asyncio.wait_for(store.insert("run", {"_id": "late"}), 1.0)  # the hold is bounded
        assert groups == [["run"]]
    finally:
        await store.close()
