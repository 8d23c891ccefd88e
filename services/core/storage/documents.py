"""DocumentStore port: the few document operations metadata needs, so each query is written once.

Both adapters (SQLite, MongoDB) honour exactly these semantics. There are no multi-document
transactions (FerretDB has none): callers order their writes so any crash leaves a repairable state,
and use the conditional single-document `update`/`delete` for compare-and-set.

Documents are JSON-like dicts with a string `_id`. Values: str, int, float, bool, None, bytes,
lists and nested dicts of those. Field names in `where`/`expect` are top-level only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

Document = dict[str, Any]
_T = TypeVar("_T")

_background: contextvars.ContextVar[bool] = contextvars.ContextVar("documents_background", default=False)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Work inside (and in the tasks it starts) can wait for request traffic: a store shared with requests
    serves it after them (the embedded SQLite store: its own read connection, writes after the requests'
    in each group commit). GC runs use it. A hint: stores without such queues ignore it."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


def in_background() -> bool:
    return _background.get()


class DuplicateKeyError(Exception):
    """An insert collided with an existing `_id` or a unique index."""


@dataclass(frozen=True, slots=True)
class Index:
    """An index on `fields`, in order. A non-unique index also holds `_id` (find's tie order) and is
    meant to cover the queries on its fields: `find(where on a prefix, order_by the next, fields=...)`
    reads only the index."""

    fields: tuple[str, ...]
    unique: bool = False


@runtime_checkable
class DocumentStore(Protocol):
    async def ensure_collection(self, name: str, indexes: Sequence[Index] = ()) -> None:
        """Create the collection and its indexes if missing. Idempotent."""
        ...

    async def get(self, collection: str, key: str) -> Document | None:
        """The document with `_id == key`, or None."""
        ...

    async def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Document]:
        """The documents with these `_id`s that exist, by `_id`: one round trip per batch of keys, not one
        per key (a manifest's references are checked at once)."""
        ...

    async def insert(self, collection: str, doc: Mapping[str, Any]) -> None:
        """Insert a new document. DuplicateKeyError if `_id` or a unique index collides."""
        ...

    async def put(self, collection: str, doc: Mapping[str, Any]) -> None:
        """Insert or wholly replace the document with this `_id`. Idempotent.

        DuplicateKeyError if a unique index (other than `_id`) collides with another document.
        """
        ...

    async def update(
        self,
        collection: str,
        key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        uncontended: bool = False,
    ) -> bool:
        """Set `changes` (and remove `unset` fields) on one document, atomically.

        With `expect`, only if every expected field currently equals its value (None matches a
        missing field). Returns False when no document matched. This is the compare-and-set.
        `uncontended=True` promises that no other writer changes this document meanwhile, so an
        adapter that serialises writes to a document (FerretDB's) may skip that.
        """
        ...

    async def delete(self, collection: str, key: str, *, expect: Mapping[str, Any] | None = None) -> bool:
        """Delete one document (conditionally, as in `update`). False when nothing matched."""
        ...

    async def delete_many(self, collection: str, keys: Sequence[str]) -> int:
        """Delete the documents with these `_id`s, unconditionally; returns how many existed. Idempotent.
        One round trip per batch of keys (the outbox relay deletes what it published at once). Each
        document goes atomically; the set does not (no transaction)."""
        ...

    async def find(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str = "_id",
        after: Any = None,
        limit: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Document]:
        """Documents whose fields equal `where`, ascending by `order_by` (ties by `_id`),
        strictly greater than `after` when given, at most `limit`. Strings compare by code point.

        With `fields`, each document holds only `_id` and those of `fields` it has (a projection): a
        query whose `where`, `order_by` and `fields` are all in one index is answered from that index
        alone (listings), without reading or shipping the documents.
        """
        ...

    def batches(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str = "_id",
        after: Any = None,
        fields: Sequence[str] | None = None,
        size: int | Callable[[], int] = 1000,
    ) -> AsyncIterator[list[Document]]:
        """Every document `find` with the same arguments (and no limit) returns, in its order, in batches of at
        most `size` (called before each batch when callable: a reader may want smaller ones while requests are
        served). Each document once, even when many share an `order_by` value.

        For long walks (GC): a store with server-side cursors answers them from one query (MongoDB: a `find`,
        then a `getMore` per batch), where `find` pages would each query again (FerretDB 1.x reads a whole
        collection for every page). Between batches the reader may pause; nothing is held that blocks writers.
        What changes meanwhile may or may not be seen, as with pages."""
        ...

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int: ...

    async def delete_where(self, collection: str, where: Mapping[str, Any]) -> int:
        """Delete every matching document; returns how many. Not atomic across documents."""
        ...

    async def drop_collection(self, name: str) -> None:
        """Remove a collection and everything in it (tests, resets). Idempotent."""
        ...

    async def ping(self) -> None:
        """Raise if the backend is unreachable (readiness)."""
        ...

    async def close(self) -> None: ...


async def scan(docs: DocumentStore, collection: str, where: Mapping[str, Any] | None = None, *,
               page: int | Callable[[], int] = 1000, fields: Sequence[str] | None = None) -> AsyncIterator[Document]:
    """Every matching document, in `_id` order, read a batch at a time from one query (`batches`: never the whole
    collection at once), with only `fields` when given."""
    async for batch in docs.batches(collection, where, size=page, fields=fields):
        for doc in batch:
            yield doc


def batch_size(size: int | Callable[[], int]) -> int:
    """The size of `batches`' next batch (adapters' shared check)."""
    n = size() if callable(size) else size
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError("a batch size must be a positive integer")
    return n


async def update_each(
    docs: DocumentStore,
    collection: str,
    keys: Sequence[str],
    changes: Mapping[str, Any],
    *,
    expect: Mapping[str, Any] | None = None,
    unset: Sequence[str] = (),
    concurrency: int = 16,
) -> set[str]:
    """`update` of many keys, `concurrency` at a time; returns the keys it changed. Each document changes
    atomically on its own; the set does not. (Not one update_many: FerretDB 1.x reads a whole collection for
    `_id: {$in: ...}`, and MongoDB would not say which documents matched.)"""
    keys = list(dict.fromkeys(keys))

    async def one(key: str) -> bool:
        return await docs.update(collection, key, changes, expect=expect, unset=unset)

    return {k for k, ok in zip(keys, await gather_bounded([one(k) for k in keys], concurrency), strict=True) if ok}


async def delete_each(
    docs: DocumentStore,
    collection: str,
    items: Sequence[tuple[str, Mapping[str, Any] | None]],
    *,
    concurrency: int = 16,
) -> set[str]:
    """`delete` of many `(key, expect)`s, as `update_each`; returns the keys it deleted. A key listed twice
    is deleted under its first condition."""
    unique = list({key: expect for key, expect in reversed(items)}.items())[::-1]

    async def one(key: str, expect: Mapping[str, Any] | None) -> bool:
        return await docs.delete(collection, key, expect=expect)

    done = await gather_bounded([one(k, e) for k, e in unique], concurrency)
    return {k for (k, _), ok in zip(unique, done, strict=True) if ok}


INSERT_BATCH = 64
"""Documents `insert_each` sends at once."""


async def insert_each(docs: DocumentStore, collection: str, items: Sequence[Mapping[str, Any]], *,
                      batch: int = INSERT_BATCH) -> list[bool]:
    """`insert` of each of `items` on its own: True where it went in, False where its `_id` was taken (any
    other error is raised). A batch at a time, all of a batch at once: the adapters share one command among
    the concurrent inserts of a collection (MongoDB: an unordered `insert_many`; SQLite: one group commit), so
    a batch costs about one round trip, not one a document (FerretDB on PostgreSQL: 1,000 inserts alone took
    0.45 s of its CPU, in batches of 64 0.01-0.03 s). One batch in flight: a caller that paces itself behind
    requests (GC) keeps one command at a time in the store, as with single inserts."""

    async def one(doc: Mapping[str, Any]) -> bool:
        try:
            await docs.insert(collection, doc)
        except DuplicateKeyError:
            return False
        return True

    out: list[bool] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        out += await gather_bounded([one(d) for d in chunk], len(chunk))
    return out


async def gather_bounded(calls: Sequence[Awaitable[_T]], concurrency: int) -> list[_T]:
    """Await `calls`, at most `concurrency` at once; their results in order. A pool of `concurrency` tasks
    takes them in turn, rather than a task each created at once: thousands of tasks made in one go hold the
    event loop for tens of ms (a GC run's claims, beside a push's request). After a failure no further call
    starts; the first failure is raised once the calls in flight end (none is left running behind)."""
    results: list[Any] = [None] * len(calls)
    errors: list[Exception] = []
    pending = iter(enumerate(calls))

    async def worker() -> None:
        for i, call in pending:
            if errors:  # fail fast (a store gone away would otherwise time out once per remaining call)
                if inspect.iscoroutine(call):
                    call.close()  # never started: closed, so nothing warns of an un-awaited coroutine
                continue
            try:
                results[i] = await call
            except Exception as exc:
                errors.append(exc)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(calls))))))
    finally:  # cancelled: the calls not started are closed, not left to warn
        for _, call in pending:
            if inspect.iscoroutine(call):
                call.close()
    if errors:
        raise errors[0]
    return results
