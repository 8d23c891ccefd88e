"""DocumentStore contract: one behavioural suite run by every adapter (SQLite file, real MongoDB API)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from services.core.storage.documents import (
    DocumentStore,
    DuplicateKeyError,
    Index,
    delete_each,
    insert_each,
    update_each,
)
from services.core.storage.mongo import LOCKS_COLLECTION, DocumentLockTimeoutError, MongoDocumentStore
from services.core.storage.sqlite import SqliteDocumentStore
from tests.conftest import infra

MONGO_TEST_DATABASE = "hanzo_registry_contract"
ROOT = Path(__file__).resolve().parents[2]


class _AdminStore(DocumentStore, Protocol):
    async def collection_names(self) -> list[str]: ...


@dataclass
class Backend:
    """The store under test, a way to open a second instance on the same data, and the names to clean."""

    store: _AdminStore
    open_another: Callable[[], Awaitable[_AdminStore]]
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    others: list[_AdminStore] = field(default_factory=list)

    def name(self, base: str = "c") -> str:
        return f"{base}_{self.suffix}"

    async def another(self) -> _AdminStore:
        other = await self.open_another()
        self.others.append(other)
        return other

    async def leftovers(self) -> list[str]:
        names = [n for n in await self.store.collection_names() if n.endswith(self.suffix)]
        if isinstance(self.store, MongoDocumentStore):
            # Lease locks (FerretDB) are released after every write: none may stay behind.
            locks = await self.store.find(LOCKS_COLLECTION)
            names += [f"lock:{d['_id']}" for d in locks if self.suffix in d["_id"]]
        return names


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "metadata.db"

        async def open_sqlite() -> _AdminStore:
            return SqliteDocumentStore(path)

        opener = open_sqlite
    else:
        uri = infra("HANZO_TEST_MONGO_URI")

        async def open_mongo() -> _AdminStore:
            return MongoDocumentStore(uri, MONGO_TEST_DATABASE)

        opener = open_mongo
    b = Backend(store=await opener(), open_another=opener)
    await b.store.ping()
    try:
        yield b
    finally:
        for name in await b.leftovers():
            await b.store.drop_collection(name)
        remaining = await b.leftovers()
        for other in b.others:
            await other.close()
        await b.store.close()
    assert remaining == [], f"collections left behind: {remaining}"


EVERY_TYPE: dict[str, Any] = {
    "_id": "doc-1",
    "text": "plain",
    "unicode": 'héllo wörld ✓ 😀 \u2028 "quoted" \\ back\n\t',
    "empty": "",
    "int": 42,
    "negative": -7,
    "big": 2**62,
    "max64": 2**63 - 1,
    "min64": -(2**63),
    "beyond53": 2**53 + 1,
    "float": 3.25,
    "tiny": 1e-300,
    "whole_float": 2.0,
    "true": True,
    "false": False,
    "none": None,
    "bytes": b"\x00\x01\xfe\xff binary",
    "empty_bytes": b"",
    "list": [1, "two", 3.5, None, True, b"\x02", {"five": [5, {"six": 6}]}],
    "empty_list": [],
    "nested": {"a": {"b": {"c": [1, 2, {"d": b"\x03"}]}}, "n": None, "big": 2**60, "nul": "a\u0000b"},
    "empty_dict": {},
}


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


async def test_insert_get_round_trips_every_value_type(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, EVERY_TYPE)
    got = await s.get(c, "doc-1")
    assert got is not None
    assert _same(got, EVERY_TYPE), got
    assert await s.get(c, "missing") is None


async def test_get_many_reads_existing_documents_in_batches(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, EVERY_TYPE)
    keys = [f"k{i:04d}" for i in range(1200)]  # more than one batch of either adapter
    for key in keys[::7]:
        await s.insert(c, {"_id": key, "n": int(key[1:])})
    found = await s.get_many(c, ["missing", *keys, "doc-1", "doc-1"])
    assert sorted(found) == sorted([*keys[::7], "doc-1"])
    assert found["k0007"] == {"_id": "k0007", "n": 7}
    assert _same(found["doc-1"], EVERY_TYPE)
    assert await s.get_many(c, []) == {}


async def test_get_and_find_on_a_missing_collection_find_nothing(backend: Backend) -> None:
    s, c = backend.store, backend.name("never")
    assert await s.get(c, "x") is None
    assert await s.find(c) == []
    assert await s.count(c) == 0
    assert await s.update(c, "x", {"a": 1}) is False
    assert await s.delete(c, "x") is False
    assert await s.delete_where(c, {"a": 1}) == 0


async def test_insert_creates_the_collection_implicitly(backend: Backend) -> None:
    s, c = backend.store, backend.name("implicit")
    await s.insert(c, {"_id": "a", "v": 1})
    assert await s.get(c, "a") == {"_id": "a", "v": 1}
    assert c in await s.collection_names()


async def test_insert_duplicate_id_raises(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "a", "v": 1})
    with pytest.raises(DuplicateKeyError):
        await s.insert(c, {"_id": "a", "v": 2})
    assert await s.get(c, "a") == {"_id": "a", "v": 1}


async def test_unique_index_is_enforced_on_insert_put_and_update(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("repo", "tag"), unique=True), Index(("digest",))])
    await s.ensure_collection(c, [Index(("repo", "tag"), unique=True), Index(("digest",))])  # idempotent
    await s.insert(c, {"_id": "1", "repo": "r", "tag": "latest", "digest": "d1"})
    await s.insert(c, {"_id": "2", "repo": "r", "tag": "v1", "digest": "d1"})  # non-unique index: fine
    await s.insert(c, {"_id": "3", "repo": "other", "tag": "latest", "digest": "d1"})
    with pytest.raises(DuplicateKeyError):
        await s.insert(c, {"_id": "4", "repo": "r", "tag": "latest", "digest": "d2"})
    with pytest.raises(DuplicateKeyError):
        await s.put(c, {"_id": "4", "repo": "r", "tag": "latest", "digest": "d2"})
    with pytest.raises(DuplicateKeyError):
        await s.put(c, {"_id": "2", "repo": "r", "tag": "latest", "digest": "d2"})  # replace onto a clash
    with pytest.raises(DuplicateKeyError):
        await s.update(c, "2", {"tag": "latest"})
    assert await s.get(c, "4") is None
    assert await s.get(c, "2") == {"_id": "2", "repo": "r", "tag": "v1", "digest": "d1"}
    await s.put(c, {"_id": "1", "repo": "r", "tag": "latest", "digest": "d9"})  # same doc keeps its key
    assert await s.count(c) == 3


async def test_unique_index_on_existing_duplicates_raises(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "1", "k": "same"})
    await s.insert(c, {"_id": "2", "k": "same"})
    with pytest.raises(DuplicateKeyError):
        await s.ensure_collection(c, [Index(("k",), unique=True)])


async def test_put_inserts_then_replaces_wholly_and_is_idempotent(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.put(c, {"_id": "a", "x": 1, "y": 2})
    await s.put(c, {"_id": "a", "x": 1, "y": 2})
    assert await s.get(c, "a") == {"_id": "a", "x": 1, "y": 2}
    await s.put(c, {"_id": "a", "z": b"\x00"})
    assert await s.get(c, "a") == {"_id": "a", "z": b"\x00"}
    assert await s.count(c) == 1


async def test_update_sets_and_unsets(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "a", "keep": "k", "drop": 1, "old": "o"})
    changes = {
        "old": "n",
        "new_int": 2**62,
        "new_bytes": b"\xff",
        "flag": True,
        "nothing": None,
        "obj": {"l": [1, "x"]},
        "s": "ünï",
    }
    assert await s.update(c, "a", changes, unset=["drop", "absent"]) is True
    got = await s.get(c, "a")
    assert got is not None
    assert _same(got, {"_id": "a", "keep": "k", **changes})
    assert await s.update(c, "missing", {"x": 1}) is False
    assert await s.get(c, "missing") is None  # update never upserts
    assert await s.update(c, "a", {}) is True  # no change: a pure existence check


async def test_uncontended_update_is_an_update(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "intent", "state": "pending", "ops": [1, 2]})
    assert await s.update(c, "intent", {"state": "ready"}, uncontended=True) is True
    assert await s.get(c, "intent") == {"_id": "intent", "state": "ready", "ops": [1, 2]}
    assert await s.update(c, "intent", {"state": "x"}, expect={"state": "pending"}, uncontended=True) is False
    assert await s.update(c, "gone", {"state": "ready"}, uncontended=True) is False
    assert await s.get(c, "gone") is None


async def test_update_with_expect_is_compare_and_set(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "tag", "digest": "sha256:a", "version": 1})
    assert (
        await s.update(c, "tag", {"digest": "sha256:b", "version": 2}, expect={"digest": "sha256:a", "version": 1})
        is True
    )
    # The same stale expectation now fails and changes nothing.
    assert (
        await s.update(c, "tag", {"digest": "sha256:c", "version": 2}, expect={"digest": "sha256:a", "version": 1})
        is False
    )
    assert await s.get(c, "tag") == {"_id": "tag", "digest": "sha256:b", "version": 2}
    # Types matter: "2" is not 2, True is not 1, 2.0 is 2.
    assert await s.update(c, "tag", {"x": 1}, expect={"version": "2"}) is False
    await s.update(c, "tag", {"flag": True})
    assert await s.update(c, "tag", {"x": 1}, expect={"flag": 1}) is False
    assert await s.update(c, "tag", {"x": 1}, expect={"flag": True, "version": 2.0}) is True


async def test_expect_none_matches_missing_and_null(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "a", "n": None})
    await s.insert(c, {"_id": "b"})
    await s.insert(c, {"_id": "d", "lock": "held"})
    assert await s.update(c, "a", {"lock": "me"}, expect={"lock": None, "n": None}) is True
    assert await s.update(c, "a", {"lock": "you"}, expect={"lock": None}) is False
    assert await s.update(c, "b", {"lock": "me"}, expect={"lock": None}) is True
    assert await s.update(c, "d", {"lock": "me"}, expect={"lock": None}) is False
    assert await s.update(c, "a", {}, expect={"lock": "me"}, unset=["lock"]) is True
    assert await s.get(c, "a") == {"_id": "a", "n": None}


async def test_delete_with_and_without_expect(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "a", "v": 1})
    await s.insert(c, {"_id": "b", "v": 1})
    assert await s.delete(c, "a", expect={"v": 2}) is False
    assert await s.get(c, "a") is not None
    assert await s.delete(c, "a", expect={"v": 1}) is True
    assert await s.delete(c, "a") is False
    assert await s.delete(c, "b", expect={"gone": None}) is True
    assert await s.count(c) == 0


async def test_find_where_order_after_limit(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("repo", "size"))])
    docs: list[dict[str, Any]] = [
        {"_id": "e", "repo": "r", "size": 5, "kind": "x"},
        {"_id": "a", "repo": "r", "size": 3, "kind": None},
        {"_id": "c", "repo": "r", "size": 3.5},
        {"_id": "b", "repo": "r", "size": 3, "kind": "y"},
        {"_id": "d", "repo": "other", "size": 1},
        {"_id": "f", "repo": "r", "size": -(2**62)},
        {"_id": "g", "repo": "r"},  # missing sorts first
        {"_id": "h", "repo": "r", "size": 2**62},
    ]
    for d in docs:
        await s.insert(c, d)

    def ids(found: list[dict[str, Any]]) -> list[str]:
        return [d["_id"] for d in found]

    assert ids(await s.find(c)) == ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert ids(await s.find(c, {"repo": "r"}, order_by="size")) == ["g", "f", "a", "b", "c", "e", "h"]
    assert ids(await s.find(c, {"repo": "r"}, order_by="size", after=3)) == ["c", "e", "h"]
    assert ids(await s.find(c, {"repo": "r"}, order_by="size", after=3.25, limit=2)) == ["c", "e"]
    assert ids(await s.find(c, {"repo": "r"}, order_by="size", limit=0)) == []
    assert ids(await s.find(c, after="c")) == ["d", "e", "f", "g", "h"]
    assert ids(await s.find(c, {"kind": None}, order_by="_id")) == ["a", "c", "d", "f", "g", "h"]
    assert ids(await s.find(c, {"repo": "r", "size": 3})) == ["a", "b"]
    assert ids(await s.find(c, {"size": 3.0})) == ["a", "b"]
    assert ids(await s.find(c, {"_id": "d"})) == ["d"]
    assert ids(await s.find(c, {"repo": "nope"})) == []
    assert await s.count(c) == 8
    assert await s.count(c, {"repo": "r"}) == 7
    assert await s.count(c, {"kind": None}) == 6


async def test_find_with_fields_returns_a_projection(backend: Backend) -> None:
    """A listing reads only the fields it needs (from a covering index where the adapter has one)."""
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("repo", "name"))])
    values: list[Any] = ["text", 7, 2.5, True, False, None, b"\x00b", [1, "x"], {"k": {"n": 1}}]
    for i, value in enumerate(values):
        await s.insert(c, {"_id": f"v{i}", "repo": "r", "name": f"n{i}", "value": value, "big": "x" * 100})
    await s.insert(c, {"_id": "w", "repo": "r", "name": "n9"})  # no "value"
    await s.insert(c, {"_id": "o", "repo": "other", "name": "n0"})
    got = await s.find(c, {"repo": "r"}, order_by="name", fields=["name"])
    assert got == [{"_id": f"v{i}", "name": f"n{i}"} for i in range(len(values))] + [{"_id": "w", "name": "n9"}]
    page = await s.find(c, {"repo": "r"}, order_by="name", after="n3", limit=2, fields=("name", "_id"))
    assert page == [{"_id": "v4", "name": "n4"}, {"_id": "v5", "name": "n5"}]
    typed = await s.find(c, {"repo": "r"}, order_by="name", fields=["value", "missing"])
    assert all(_same(d["value"], v) for d, v in zip(typed, values, strict=False)), typed
    assert [sorted(d) for d in typed] == [["_id", "value"]] * len(values) + [["_id"]]
    assert await s.find(c, fields=[]) == [{"_id": k} for k in ["o", *(f"v{i}" for i in range(len(values))), "w"]]


async def test_delete_many_deletes_by_id_in_batches(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    assert await s.delete_many(backend.name("never"), ["a"]) == 0
    await s.ensure_collection(c)
    keys = [f"k{i:04d}" for i in range(1200)]  # more than one batch of either adapter
    for key in keys[:600]:
        await s.insert(c, {"_id": key})
    assert await s.delete_many(c, [*keys[:300], "missing", keys[0]]) == 300
    assert await s.delete_many(c, keys[:300]) == 0
    assert await s.delete_many(c, []) == 0
    assert [d["_id"] for d in await s.find(c)] == keys[300:600]
    assert await s.delete_many(c, keys) == 300
    assert await s.count(c) == 0


async def test_find_matches_by_type(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("v",))])
    values: list[Any] = [1, "1", True, 1.0, b"1", None, False, 0, "true"]
    for i, v in enumerate(values):
        await s.insert(c, {"_id": str(i), "v": v})
    await s.insert(c, {"_id": "m"})

    async def ids(v: Any) -> set[str]:
        return {d["_id"] for d in await s.find(c, {"v": v})}

    assert await ids(1) == {"0", "3"}
    assert await ids("1") == {"1"}
    assert await ids(True) == {"2"}
    assert await ids(False) == {"6"}
    assert await ids(0) == {"7"}
    assert await ids(b"1") == {"4"}
    assert await ids(None) == {"5", "m"}
    assert await ids("true") == {"8"}


async def test_strings_order_by_code_point(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("name",), unique=True)])
    # Code point order, not locale, not case-folded, not UTF-16 (where U+1F600 would sort before
    # U+FF5E, the fullwidth tilde).
    names = ["é", "a", "B", "\uff5e", "\U0001f600", "ab", "Z", "a!", "~", ""]
    for i, n in enumerate(names):
        await s.insert(c, {"_id": f"{i:02d}", "name": n})
    expected = sorted(names)
    assert expected[:4] == ["", "B", "Z", "a"] and expected[-3:] == ["é", "\uff5e", "\U0001f600"]
    assert [d["name"] for d in await s.find(c, order_by="name")] == expected
    assert [d["name"] for d in await s.find(c, order_by="name", after="a")] == expected[4:]
    # The same order for _id.
    for n in names:
        await s.insert(c, {"_id": n})
    got = [d["_id"] for d in await s.find(c, {"name": None})]
    assert got == expected


async def test_paging_through_1000_documents_sees_each_once_in_order(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("n",), unique=True)])
    await asyncio.gather(*(s.insert(c, {"_id": f"k{i:04d}", "n": (i * 7919) % 1000}) for i in range(1000)))
    seen: list[int] = []
    after: Any = None
    while page := await s.find(c, order_by="n", after=after, limit=37):
        seen.extend(d["n"] for d in page)
        after = page[-1]["n"]
    assert seen == list(range(1000))
    seen_ids: list[str] = []
    after = None
    while page := await s.find(c, after=after, limit=100):
        seen_ids.extend(d["_id"] for d in page)
        after = page[-1]["_id"]
    assert seen_ids == [f"k{i:04d}" for i in range(1000)]
    assert await s.count(c) == 1000


async def test_batches_walk_every_document_once_in_order(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("n",)), Index(("repo", "n"))])
    # 1,000 documents, 10 per value of n (ties: a batch may end in the middle of a run of equal values), some
    # without n (they sort first), a few with a string n (after the numbers).
    docs: list[dict[str, Any]] = [{"_id": f"k{i:04d}", "n": (i * 7919) % 97, "repo": "r" if i % 3 else "q"}
                                  for i in range(1000)]
    docs += [{"_id": f"m{i}", "repo": "r"} for i in range(5)] + [{"_id": f"s{i}", "n": f"x{i % 2}"} for i in range(4)]
    await asyncio.gather(*(s.insert(c, d) for d in docs))

    async def walk(**kwargs: Any) -> list[list[dict[str, Any]]]:
        return [batch async for batch in s.batches(c, **kwargs)]

    for order_by in ("_id", "n"):
        for where in (None, {"repo": "r"}):
            expected = await s.find(c, where, order_by=order_by)
            sizes = iter([1, 7, 200, 3] * 1000)
            got = await walk(where=where, order_by=order_by, size=sizes.__next__)
            assert [d for batch in got for d in batch] == expected, (order_by, where)
            assert [len(b) for b in got[:4]] == [1, 7, 200, 3]
    by_n = await walk(order_by="n", after=50, size=64, fields=("repo",))
    flat = [d for batch in by_n for d in batch]
    assert all(len(b) <= 64 for b in by_n)
    assert [d["_id"] for d in flat] == [d["_id"] for d in await s.find(c, order_by="n", after=50)]
    assert all(set(d) <= {"_id", "repo"} for d in flat)  # the order field is not returned unless asked for
    assert await walk(where={"repo": "nope"}) == []
    assert await walk(where={"repo": "r"}, order_by="n", fields=("n",), size=10_000) == [
        await s.find(c, {"repo": "r"}, order_by="n", fields=("n",))]
    with pytest.raises(ValueError, match="positive"):
        await walk(size=0)


async def test_batches_left_early_leave_nothing_open(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await asyncio.gather(*(s.insert(c, {"_id": f"k{i:03d}"}) for i in range(50)))
    walk = s.batches(c, size=10)
    assert [d["_id"] for d in await anext(walk)] == [f"k{i:03d}" for i in range(10)]
    await walk.aclose()  # type: ignore[attr-defined]
    await s.insert(c, {"_id": "k999"})  # the store is not held: writes go on
    assert await s.count(c) == 51


async def test_delete_where(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    for i in range(10):
        await s.insert(c, {"_id": str(i), "even": i % 2 == 0, "opt": None if i < 3 else i})
    assert await s.delete_where(c, {"even": True}) == 5
    assert await s.delete_where(c, {"even": True}) == 0
    assert await s.delete_where(c, {"opt": None}) == 1  # "1"
    assert sorted(d["_id"] for d in await s.find(c)) == ["3", "5", "7", "9"]
    assert await s.delete_where(c, {}) == 4
    assert await s.count(c) == 0


async def test_concurrent_compare_and_set_has_one_winner(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "tag", "digest": "d0", "version": 0})
    other = await backend.another()

    async def attempt(i: int) -> bool:
        store = s if i % 2 else other
        return await store.update(c, "tag", {"digest": f"d{i}", "version": 1}, expect={"version": 0})

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await s.get(c, "tag") == {"_id": "tag", "digest": f"d{winner}", "version": 1}


async def test_concurrent_counter_increments_lose_nothing(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "n", "v": 0})
    other = await backend.another()

    async def increment(store: DocumentStore) -> None:
        while True:
            doc = await store.get(c, "n")
            assert doc is not None
            if await store.update(c, "n", {"v": doc["v"] + 1}, expect={"v": doc["v"]}):
                return

    await asyncio.gather(*(increment(s if i % 2 else other) for i in range(20)))
    assert await s.get(c, "n") == {"_id": "n", "v": 20}


async def test_concurrent_updates_of_different_fields_all_land(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.put(c, {"_id": "doc"})
    other = await backend.another()
    await asyncio.gather(*((s if i % 2 else other).update(c, "doc", {f"f{i}": i}) for i in range(20)))
    assert await s.get(c, "doc") == {"_id": "doc", **{f"f{i}": i for i in range(20)}}


async def test_batch_update_and_delete_are_a_compare_and_set_per_document(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    for i in range(6):
        await s.insert(c, {"_id": f"k{i}", "state": "marked" if i % 2 else "rescued", "flag": True, "n": None})
    changed = await update_each(s, c, [f"k{i}" for i in range(7)], {"state": "deleting", "until": 5.0},
                                expect={"state": "marked", "flag": True, "n": None, "gone": None})
    assert changed == {"k1", "k3", "k5"}  # k6 does not exist
    assert await update_each(s, c, ["k1"], {"x": 1}, expect={"flag": 1}) == set()  # True is not 1
    assert await update_each(s, c, ["k1", "k3"], {"state": "deleted"}, expect={"until": 5}, unset=["until", "flag"]) \
        == {"k1", "k3"}
    assert await s.get(c, "k1") == {"_id": "k1", "state": "deleted", "n": None}
    assert await s.get(c, "k5") == {"_id": "k5", "state": "deleting", "flag": True, "n": None, "until": 5.0}
    gone = await delete_each(s, c, [("k0", {"state": "rescued"}), ("k1", {"state": "marked"}), ("k2", None),
                                    ("k9", None), ("k5", {"until": 5.0, "state": "deleting"})])
    assert gone == {"k0", "k2", "k5"}
    assert sorted(d["_id"] for d in await s.find(c)) == ["k1", "k3", "k4"]


async def test_insert_each_inserts_each_alone_and_says_which_were_taken(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "k003", "n": -1})
    docs = [{"_id": f"k{i:03d}", "n": i} for i in range(150)] + [{"_id": "k010", "n": 999}]
    inserted = await insert_each(s, c, docs, batch=64)  # three batches, a duplicate in the first and the last
    assert inserted == [i != 3 for i in range(150)] + [False]
    assert await s.count(c) == 150
    assert await s.get(c, "k003") == {"_id": "k003", "n": -1}  # a taken _id is left as it was
    assert await s.get(c, "k010") == {"_id": "k010", "n": 10}
    assert await insert_each(s, c, []) == []


async def test_batch_compare_and_sets_race_single_ones_and_each_other_with_one_winner(backend: Backend) -> None:
    """A GC claim of many marks against pushes rescuing some and another claimer: each document has exactly
    one winner, and overlapping batches do not deadlock."""
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    keys = [f"b{i:03d}" for i in range(60)]
    for k in keys:
        await s.insert(c, {"_id": k, "state": "marked"})
    other = await backend.another()

    async def rescue(k: str) -> tuple[str, bool]:
        return k, await other.update(c, k, {"state": "rescued"}, expect={"state": "marked"})

    batch_a, batch_b, *singles = await asyncio.gather(
        update_each(s, c, keys[:45], {"state": "deleting", "by": "a"}, expect={"state": "marked"}),
        update_each(other, c, keys[15:], {"state": "deleting", "by": "b"}, expect={"state": "marked"}),
        *(rescue(k) for k in keys[::3]),
    )
    rescued = {k for k, ok in singles if ok}
    assert not batch_a & batch_b and not (batch_a | batch_b) & rescued  # type: ignore[operator]
    assert batch_a | batch_b | rescued == set(keys)  # type: ignore[operator]
    for doc in await s.find(c):
        k = doc["_id"]
        assert doc == ({"_id": k, "state": "rescued"} if k in rescued
                       else {"_id": k, "state": "deleting", "by": "a" if k in batch_a else "b"})


async def test_two_instances_see_each_others_writes(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    other = await backend.another()
    await other.ensure_collection(c, [Index(("u",), unique=True)])
    await s.insert(c, {"_id": "a", "u": 1})
    assert await other.get(c, "a") == {"_id": "a", "u": 1}
    with pytest.raises(DuplicateKeyError):
        await other.insert(c, {"_id": "b", "u": 1})
    assert await other.update(c, "a", {"u": 2}, expect={"u": 1}) is True
    assert await s.get(c, "a") == {"_id": "a", "u": 2}
    await other.delete(c, "a")
    assert await s.get(c, "a") is None


async def test_drop_collection_is_idempotent(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c, [Index(("x",), unique=True)])
    await s.insert(c, {"_id": "a", "x": 1})
    await s.drop_collection(c)
    assert c not in await s.collection_names()
    assert await s.get(c, "a") is None
    await s.drop_collection(c)
    await s.ensure_collection(c, [Index(("x",), unique=True)])  # fresh, indexes recreated
    await s.insert(c, {"_id": "a", "x": 1})
    with pytest.raises(DuplicateKeyError):
        await s.insert(c, {"_id": "b", "x": 1})


async def test_invalid_names_and_values_are_refused(backend: Backend) -> None:
    s, c = backend.store, backend.name()
    for bad in ['x"; DROP TABLE t; --', "a.b", "$x", "", "1abc", "sqlite_master", "a-b"]:
        with pytest.raises(ValueError):
            await s.ensure_collection(bad)
        with pytest.raises(ValueError):
            await s.get(bad, "k")
    for bad_field in ["a.b", "$set", "x') OR 1=1 --", ""]:
        with pytest.raises(ValueError):
            await s.find(c, {bad_field: 1})
        with pytest.raises(ValueError):
            await s.update(c, "k", {bad_field: 1})
        with pytest.raises(ValueError):
            await s.find(c, order_by=bad_field)
    with pytest.raises(ValueError):
        await s.insert(c, {"_id": "k", "v": 2**63})
    with pytest.raises(ValueError):
        await s.insert(c, {"_id": "k", "v": float("nan")})
    with pytest.raises(ValueError):
        await s.insert(c, {"_id": "k", "nested": {"$bytes": "AA=="}})
    with pytest.raises(ValueError):
        await s.insert(c, {"v": 1})  # no _id
    with pytest.raises(ValueError):
        await s.insert(c, {"_id": "k", "v": [1, [2]]})  # FerretDB refuses lists in lists
    with pytest.raises(ValueError):
        await s.insert(c, {"_id": "k", "v": "a\u0000b"})  # top-level strings are compared: no NUL
    with pytest.raises(ValueError):
        await s.find(c, {"v": "a\u0000"})
    with pytest.raises(ValueError):
        await s.update(c, "k", {"v": "a\u0000"})
    with pytest.raises(TypeError):
        await s.insert(c, {"_id": "k", "v": object()})
    with pytest.raises(TypeError):
        await s.find(c, {"v": [1]})
    with pytest.raises(ValueError):
        await s.update(c, "k", {"_id": "other"})
    with pytest.raises(ValueError):
        await s.update(c, "k", {"a": 1}, unset=["a"])
    assert await s.count(c) == 0


async def test_ping_and_close(backend: Backend) -> None:
    other = await backend.another()
    await other.ping()
    assert isinstance(other, DocumentStore)


async def test_leftover_check_sees_what_a_test_creates(backend: Backend) -> None:
    s = backend.store
    await s.ensure_collection(backend.name("a"))
    await s.insert(backend.name("b"), {"_id": "x"})
    assert await backend.leftovers() == sorted([backend.name("a"), backend.name("b")])
    await s.drop_collection(backend.name("a"))
    await s.drop_collection(backend.name("b"))
    assert await backend.leftovers() == []


_CHILD = """
import asyncio, sys
from pathlib import Path
from services.core.storage.mongo import MongoDocumentStore
from services.core.storage.sqlite import SqliteDocumentStore

async def main(kind, where, coll, n):
    store = SqliteDocumentStore(Path(where)) if kind == "sqlite" else MongoDocumentStore(where, sys.argv[5])
    try:
        for _ in range(n):
            while True:
                doc = await store.get(coll, "n")
                if await store.update(coll, "n", {"v": doc["v"] + 1}, expect={"v": doc["v"]}):
                    break
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_compare_and_set_across_processes_loses_nothing(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    s, c = backend.store, backend.name()
    await s.ensure_collection(c)
    await s.insert(c, {"_id": "n", "v": 0})
    if isinstance(s, SqliteDocumentStore):
        kind, where = "sqlite", str(tmp_path / "metadata.db")
    else:
        kind, where = "mongo", infra("HANZO_TEST_MONGO_URI")
    per_process = 25
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            kind,
            where,
            c,
            str(per_process),
            MONGO_TEST_DATABASE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(3)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(child.wait() for child in children)), 120)
    assert codes == [0, 0, 0]
    assert await s.get(c, "n") == {"_id": "n", "v": 3 * per_process}


@pytest.mark.mongo
async def test_mongo_write_lock_of_a_dead_writer_expires() -> None:
    """MongoDB adapter, FerretDB mode: a lock left by a crashed writer is broken once its lease is
    over; a live one makes a writer wait, then give up. Forced on, so it runs on MongoDB as well."""
    store = MongoDocumentStore(
        infra("HANZO_TEST_MONGO_URI"),
        MONGO_TEST_DATABASE,
        serialize_writes=True,
        lock_acquire_timeout_seconds=0.5,
    )
    c = f"lock_{uuid.uuid4().hex[:12]}"
    lock_id = f"{c}/k"
    try:
        await store.insert(c, {"_id": "k", "v": 0})
        await store.insert(LOCKS_COLLECTION, {"_id": lock_id, "token": "dead", "expires": time.time() - 1})
        assert await store.update(c, "k", {"v": 1}, expect={"v": 0}) is True
        assert await store.get(LOCKS_COLLECTION, lock_id) is None
        await store.insert(LOCKS_COLLECTION, {"_id": lock_id, "token": "alive", "expires": time.time() + 60})
        with pytest.raises(DocumentLockTimeoutError):
            await store.update(c, "k", {"v": 2})
        assert await store.delete(LOCKS_COLLECTION, lock_id) is True
        assert await store.update(c, "k", {"v": 2}, expect={"v": 1}) is True
        assert await store.get(c, "k") == {"_id": "k", "v": 2}
    finally:
        await store.delete(LOCKS_COLLECTION, lock_id)
        await store.drop_collection(c)
        leftovers = [n for n in await store.collection_names() if n == c]
        leftovers += [d["_id"] for d in await store.find(LOCKS_COLLECTION) if d["_id"].startswith(c)]
        await store.close()
    assert leftovers == []


@pytest.mark.mongo
@pytest.mark.parametrize("order_by", ["_id", "n"])
async def test_mongo_batches_go_on_from_the_last_document_when_the_server_loses_the_cursor(
        monkeypatch: pytest.MonkeyPatch, order_by: str) -> None:
    """A cursor killed on the server between two batches (idle timeout, restart) costs a new query from the
    last document read, not the walk."""
    store = MongoDocumentStore(infra("HANZO_TEST_MONGO_URI"), MONGO_TEST_DATABASE)
    c = f"cursor_{uuid.uuid4().hex[:12]}"
    real = store._db.command
    killed: list[int] = []
    finds: list[dict[str, Any]] = []

    async def command(spec: dict[str, Any], **kwargs: Any) -> Any:
        if "find" in spec:
            finds.append(spec)
        if "getMore" in spec and len(killed) < 2:  # kill it just before its next batch is asked for
            killed.append(int(spec["getMore"]))
            await real({"killCursors": c, "cursors": [spec["getMore"]]}, **kwargs)
        return await real(spec, **kwargs)

    try:
        await asyncio.gather(*(store.insert(c, {"_id": f"k{i:03d}", "n": i % 7}) for i in range(100)))
        monkeypatch.setattr(store._db, "command", command)
        got = [batch async for batch in store.batches(c, order_by=order_by, size=15, fields=("n",))]
        assert len(killed) == 2
        assert len(finds) == 3  # the walk, and once again after each lost cursor
        assert [d for batch in got for d in batch] == await store.find(c, order_by=order_by, fields=("n",))
    finally:
        monkeypatch.undo()
        await store.drop_collection(c)
        await store.close()
