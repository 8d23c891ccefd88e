"""MongoDB adapter in FerretDB mode (lease locks, forced on so it runs on MongoDB too): writers of one document
queue in the process, and unconditional updates of the same fields that wait together go out as one command."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.core.storage.documents import DuplicateKeyError, Index
from services.core.storage.mongo import LOCKS_COLLECTION, MongoDocumentStore
from tests.conftest import infra

pytestmark = pytest.mark.mongo


class Counting(MongoDocumentStore):
    """Counts the update commands sent to the server."""

    sent = 0

    async def _update_one(self, coll: Any, query: dict[str, Any], ops: dict[str, Any]) -> bool:  # type: ignore[override]
        self.sent += 1
        return await MongoDocumentStore._update_one(coll, query, ops)


@pytest.fixture
async def store() -> AsyncIterator[Counting]:
    s = Counting(infra("HANZO_TEST_MONGO_URI"), "hanzo_registry_contract", serialize_writes=True)
    collection = f"combine_{uuid.uuid4().hex[:12]}"
    s.collection = collection  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        await s.drop_collection(collection)
        locks = [d["_id"] for d in await s.find(LOCKS_COLLECTION) if d["_id"].startswith(collection)]
        await s.close()
        assert locks == []


async def test_concurrent_touches_of_one_document_share_commands(store: Counting) -> None:
    c: str = store.collection  # type: ignore[attr-defined]
    await store.insert(c, {"_id": "m", "generation": "g0", "kept": 1})
    results = await asyncio.gather(*(store.update(c, "m", {"generation": f"g{i}"}) for i in range(1, 51)))
    assert results == [True] * 50
    doc = await store.get(c, "m")
    assert doc is not None and doc["kept"] == 1 and doc["generation"] in {f"g{i}" for i in range(1, 51)}
    # The first writer goes alone; the 49 others wait for its lock together: a few commands, not 50.
    assert store.sent <= 5, store.sent
    assert store._blind == {} and store._local == {}


async def test_a_write_after_a_combined_one_is_not_lost(store: Counting) -> None:
    c: str = store.collection  # type: ignore[attr-defined]
    await store.insert(c, {"_id": "m", "v": 0})
    first = [asyncio.create_task(store.update(c, "m", {"v": i})) for i in range(1, 6)]
    await asyncio.sleep(0)
    await asyncio.gather(*first)
    assert await store.update(c, "m", {"v": 99}) is True
    assert await store.get(c, "m") == {"_id": "m", "v": 99}


async def test_different_fields_and_conditions_do_not_combine(store: Counting) -> None:
    c: str = store.collection  # type: ignore[attr-defined]
    await store.insert(c, {"_id": "m", "v": 0})
    await asyncio.gather(
        *(store.update(c, "m", {f"f{i}": i}) for i in range(10)),
        *(store.update(c, "m", {"v": 1}, expect={"v": 0}) for _ in range(5)),
    )
    assert await store.get(c, "m") == {"_id": "m", "v": 1, **{f"f{i}": i for i in range(10)}}


async def test_a_missing_document_is_reported_to_every_combined_writer(store: Counting) -> None:
    c: str = store.collection  # type: ignore[attr-defined]
    await store.ensure_collection(c)
    assert await asyncio.gather(*(store.update(c, "absent", {"g": i}) for i in range(10))) == [False] * 10


async def test_a_failed_combined_command_fails_only_the_writer_whose_values_it_sent(store: Counting) -> None:
    c: str = store.collection  # type: ignore[attr-defined]
    await store.ensure_collection(c, [Index(("u",), unique=True)])
    await store.insert(c, {"_id": "a", "u": 1})
    await store.insert(c, {"_id": "b", "u": 2})
    # Someone holds b's lock, so that the two writers below wait for it together.
    blocker = asyncio.Event()

    async def hold() -> None:
        async with store._locked(c, "b"):
            await blocker.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    ok = asyncio.create_task(store.update(c, "b", {"u": 3}))  # the leader
    await asyncio.sleep(0)
    clash = asyncio.create_task(store.update(c, "b", {"u": 1}))  # joins last: its values are sent
    await asyncio.sleep(0)
    blocker.set()
    await holder
    assert await ok is True  # sent alone after the combined command failed
    with pytest.raises(DuplicateKeyError):
        await clash
    assert await store.get(c, "b") == {"_id": "b", "u": 3}
