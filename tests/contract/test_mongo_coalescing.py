"""MongoDB adapter on the real server: concurrent gets and inserts of one collection share commands
(services/core/storage/coalesce.py), and each caller still gets its own answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.core.storage.documents import DuplicateKeyError, insert_each
from services.core.storage.mongo import MongoDocumentStore
from tests.conftest import infra

pytestmark = pytest.mark.mongo


@pytest.fixture
async def store() -> AsyncIterator[tuple[MongoDocumentStore, str]]:
    s = MongoDocumentStore(infra("HANZO_TEST_MONGO_URI"), "hanzo_registry_contract")
    collection = f"coalesce_{uuid.uuid4().hex[:12]}"
    try:
        yield s, collection
    finally:
        await s.drop_collection(collection)
        await s.close()


async def test_concurrent_inserts_share_commands_and_duplicates_fail_alone(
    store: tuple[MongoDocumentStore, str],
) -> None:
    s, coll = store
    await s.insert(coll, {"_id": "taken", "n": 0})
    sent = s._inserts.commands

    async def insert(i: int) -> str:
        try:
            await s.insert(coll, {"_id": "taken" if i % 8 == 0 else f"k{i:03d}", "n": i, "data": b"\x00" * i})
        except DuplicateKeyError:
            return "duplicate"
        return "ok"

    outcomes = await asyncio.gather(*(insert(i) for i in range(96)))
    assert outcomes.count("duplicate") == 12 and outcomes.count("ok") == 84
    assert s._inserts.commands - sent < 48  # shared: far fewer commands than inserts
    assert await s.count(coll) == 85
    assert (await s.get(coll, "k005")) == {"_id": "k005", "n": 5, "data": b"\x00" * 5}
    # The same new key from two callers at once: one wins, one is told it lost.
    results = await asyncio.gather(s.insert(coll, {"_id": "twice"}), s.insert(coll, {"_id": "twice"}),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["DuplicateKeyError", "NoneType"]


async def test_insert_each_sends_a_batch_as_one_command(store: tuple[MongoDocumentStore, str]) -> None:
    """What GC's marks, claims and tombstones rely on: a batch is one insert_many, not a command a document."""
    s, coll = store
    await s.insert(coll, {"_id": "k007"})
    sent = s._inserts.commands
    inserted = await insert_each(s, coll, [{"_id": f"k{i:03d}"} for i in range(128)], batch=64)
    assert inserted == [i != 7 for i in range(128)]
    assert s._inserts.commands - sent == 2


async def test_concurrent_gets_share_commands_and_never_share_documents(
    store: tuple[MongoDocumentStore, str],
) -> None:
    s, coll = store
    for i in range(20):
        await s.insert(coll, {"_id": f"k{i:02d}", "n": i, "tags": ["a"]})
    sent = s._gets.commands
    keys = [f"k{i % 25:02d}" for i in range(100)]  # k20..k24 do not exist; every key asked 4 times
    docs = await asyncio.gather(*(s.get(coll, k) for k in keys))
    assert s._gets.commands - sent < 50
    for key, doc in zip(keys, docs, strict=True):
        if int(key[1:]) >= 20:
            assert doc is None
        else:
            assert doc == {"_id": key, "n": int(key[1:]), "tags": ["a"]}
    first, second = docs[0], docs[25]
    assert first == second and first is not second
    assert first is not None and second is not None
    first["tags"].append("b")
    assert second["tags"] == ["a"]


async def test_concurrent_gets_of_one_key_share_a_command_and_see_every_write_before_them(
    store: tuple[MongoDocumentStore, str],
) -> None:
    # 32 pulls of one tag: on FerretDB too (one find_one per distinct key), they share commands.
    s, coll = store
    await s.insert(coll, {"_id": "tag", "v": 0})
    sent = s._gets.commands
    docs = await asyncio.gather(*(s.get(coll, "tag") for _ in range(64)))
    assert all(d == {"_id": "tag", "v": 0} for d in docs)
    assert s._gets.commands - sent < 32
    # A get that starts after a write returns never joins a command sent before it: it sees the write.
    for v in range(1, 30):
        readers = [asyncio.create_task(s.get(coll, "tag")) for _ in range(8)]
        await s.update(coll, "tag", {"v": v})
        assert (await s.get(coll, "tag")) == {"_id": "tag", "v": v}
        await asyncio.gather(*readers)
