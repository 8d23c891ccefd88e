"""MongoDB DocumentStore adapter (pymongo's native async client), kept to what FerretDB 1.x supports."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from bson import Binary, Int64
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from services.core.settings import MongoMetadataSettings
from services.core.storage.coalesce import Coalescer
from services.core.storage.documents import Document, DuplicateKeyError, Index, batch_size, gather_bounded
from services.core.storage.docvalues import check_collection, check_field, check_text, encode_value

_NAMESPACE_EXISTS = 48
_DUPLICATE_KEY = 11000
_CURSOR_NOT_FOUND = 43
_GET_MANY_BATCH = 1000
_FIND_BATCH = 10_000
_PER_KEY_IN_FLIGHT = 16
# Lease locks serialising writes to one document on FerretDB (see MongoDocumentStore).
LOCKS_COLLECTION = "_documentstore_locks"


_NUL_STRING = 0x80
"""BSON binary subtype (user-defined) of a nested string that contains U+0000, stored as its UTF-8 bytes:
FerretDB on PostgreSQL keeps documents as jsonb, which refuses U+0000 in any string. MongoDB would take
it; the same encoding is used on every server, so a database reads the same through either. (Top-level
strings never contain U+0000: docvalues.check_text refuses them, for SQLite.)"""


def _nul_safe(value: Any) -> Any:
    """Replace nested strings containing U+0000 in place (encode_value built fresh containers)."""
    if isinstance(value, str):
        return Binary(value.encode(), _NUL_STRING) if "\0" in value else value
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (str, dict, list)):
                value[k] = _nul_safe(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (str, dict, list)):
                value[i] = _nul_safe(v)
    return value


def _encode(value: Any) -> Any:
    return _nul_safe(encode_value(value, encode_bytes=bytes))


def _decode_value(value: Any) -> Any:
    """BSON types back to the port's plain Python values."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, Binary):
        return value.decode() if value.subtype == _NUL_STRING else bytes(value)
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode_value(v) for k, v in value.items()}
    return value


def _decode_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """`_decode_value` of a document pymongo just built (so not shared), which a listing's projection leaves
    all strings (`_id` and the names): those are returned as they are, without a copy."""
    for value in doc.values():
        if type(value) is not str:
            decoded: dict[str, Any] = _decode_value(doc)
            return decoded
    return doc


def _encode_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(doc.get("_id"), str):
        raise ValueError("a document needs a string _id")
    for value in doc.values():
        check_text(value)
    encoded: dict[str, Any] = _encode(doc)
    return encoded


def _filter(where: Mapping[str, Any] | None) -> dict[str, Any]:
    """Field-equality filter. `{field: None}` matches a missing field and a null one in MongoDB and
    in FerretDB alike."""
    out: dict[str, Any] = {}
    for field, value in (where or {}).items():
        check_field(field)
        if value is not None and not isinstance(value, (bool, int, float, str, bytes, bytearray, memoryview)):
            raise TypeError(f"where/expect value for {field!r} must be a scalar, not {type(value).__name__}")
        out[field] = _encode(check_text(value))
    return out


def _query(where: Mapping[str, Any] | None, order_by: str, after: Any) -> dict[str, Any]:
    query = _filter(where)
    check_field(order_by)
    if after is not None:
        if isinstance(after, bool) or not isinstance(after, (str, int, float)):
            raise TypeError("after must be a string or a number")
        if order_by == "_id" and not isinstance(after, str):
            raise TypeError("after must be a string when ordering by _id")
        cond: dict[str, Any] = {"$gt": _encode(check_text(after))}
        if order_by in query:
            cond["$eq"] = query[order_by]
        query[order_by] = cond
    return query


def _projection(fields: Sequence[str] | None) -> dict[str, int] | None:
    return None if fields is None else {"_id": 1, **{check_field(f): 1 for f in fields}}


def _sort(order_by: str) -> list[tuple[str, int]]:
    return [("_id", ASCENDING)] if order_by == "_id" else [(order_by, ASCENDING), ("_id", ASCENDING)]


def _resumed(query: dict[str, Any], order_by: str, last: dict[str, Any] | None) -> dict[str, Any]:
    """`query`, past `last` in (`order_by`, `_id`) order. Assumes the values of `order_by` past `last` are of
    its type (MongoDB compares within a type): true of every walk here (ids, digests, times)."""
    if last is None:
        return query
    if order_by == "_id":
        past: dict[str, Any] = {"_id": {"$gt": last["_id"]}}
    elif last.get(order_by) is None:  # missing and null sort first
        past = {"$or": [{order_by: None, "_id": {"$gt": last["_id"]}}, {order_by: {"$ne": None}}]}
    else:
        value = last[order_by]  # the $gte is the index range; the $or alone may scan the index from its start
        past = {order_by: {"$gte": value}, "$or": [{order_by: {"$gt": value}}, {"_id": {"$gt": last["_id"]}}]}
    return {"$and": [query, past]} if query else past


def _without(doc: dict[str, Any], field: str) -> dict[str, Any]:
    doc.pop(field, None)
    return doc


def _is_unique_violation(exc: OperationFailure) -> bool:
    # MongoDB: E11000. FerretDB 1.x reports a unique index violated by an update or by createIndexes as an
    # InternalError (code 1) carrying its backend's message: SQLite's "UNIQUE constraint failed", or
    # PostgreSQL's unique_violation (SQLSTATE 23505).
    text = str(exc)
    return exc.code == _DUPLICATE_KEY or "UNIQUE constraint failed" in text or "SQLSTATE 23505" in text


class DocumentLockTimeoutError(PyMongoError):
    """A document stayed locked by another writer longer than the acquire timeout (FerretDB only)."""


class _BlindWrite:
    """Unconditional updates of one document with the same fields, waiting for its lock together (FerretDB).

    Each waiter replaces `ops` with its own: sent in one command, the last one's values are what the
    writes in sequence would have left (each overwrites the same fields). The command goes out after
    every joiner called, and each returns after it, so every caller's write happened within its call."""

    __slots__ = ("done", "ops", "owner", "shape")

    def __init__(self, shape: tuple[tuple[str, ...], tuple[str, ...]], ops: dict[str, Any], owner: object) -> None:
        self.shape = shape
        self.ops = ops
        self.owner = owner
        self.done: asyncio.Future[tuple[bool | None, tuple[object, Exception] | None]] = (
            asyncio.get_running_loop().create_future()
        )


class MongoDocumentStore:
    """DocumentStore on one MongoDB (or FerretDB) database.

    Every operation is a single-document command (no transactions: FerretDB has none), so on
    MongoDB compare-and-set is `update_one({_id, **expect}, ...)` and its matched count. Concurrent
    `get`s and `insert`s of one collection share commands (coalesce.py: a `find` over `_id $in`, an
    unordered `insert_many`), each caller still answered alone: a server that runs commands one at a
    time is then bound by the commands, not by the callers. On FerretDB only the inserts do: it answers
    `_id: {$in: ...}` by reading the whole collection (measured on v1.24/PostgreSQL: 16 keys of 10,000
    documents 188 ms, 16 `find_one`s 52 ms), so there every get, `get_many` and `delete_many` is one
    command per key by `_id` equality, a few in flight (concurrent gets of one key still share one). Even those
    grow with the collection on FerretDB's PostgreSQL backend: it sends an `_id` equality as `_jsonb->'_id' @>
    $2`, which its btree index on `_jsonb->'_id'` cannot answer, so PostgreSQL scans the table (find_one by
    `_id`: 0.59 ms at 1,000 documents, 1.13 ms at 5,000, 3.14 ms at 20,000, v1.24.2); its SQLite backend looks
    `_id` up in the index (~1 ms at any size), MongoDB too.

    FerretDB 1.x is different: it evaluates the filter and applies the update in its own process and
    then writes the whole document back by `_id`, so concurrent `update_one`/`replace_one` calls on
    one document can all "match" and lose each other's changes (measured on v1.24: several
    winners of one compare-and-set). Its inserts and deletes by `_id` are atomic, though, so on
    FerretDB (detected from buildInfo, or forced with `serialize_writes`) every write to an existing
    document first takes a lease lock: a document `{collection}/{key}` inserted into
    `_documentstore_locks` and deleted afterwards. A crashed holder's lock expires after
    `lock_lease_seconds`. Real MongoDB never pays for this. Within one process the writers of one
    document queue on an asyncio lock before they take the lease (no polling of the lock table by
    writers of the same process), and unconditional updates of the same fields of one document that
    wait together go out as one command (`_BlindWrite`): a push touches its manifest, and a thousand
    tags pushed at once to one manifest cost a few lock rounds, not a thousand.

    Real MongoDB differs, and nothing here needs more than MongoDB offers:
    - concurrency: MongoDB runs the pool's commands in parallel (`max_pool_size`) and updates one document
      atomically, so no lease is taken and no write waits for another's lock (buildInfo without
      `ferretdbVersion`); a manifest GET never waits behind a lock on either server (reads take none);
    - FerretDB-only behaviour is not relied on: the lease locks are ordinary inserts and deletes by `_id`
      on a collection of their own, the unique-violation check also accepts FerretDB's SQLite message but
      MongoDB's E11000 first, and listings use indexes ending in `_id`, which MongoDB answers from the
      index alone (a covered query) and FerretDB 1.x reads in full and filters itself (its SQLite backend
      pushes down only `_id` equality, its PostgreSQL backend also field equality, as a jsonb `@>` that
      PostgreSQL answers by scanning the table, not from FerretDB's btree indexes). FerretDB v1.24 pushes no
      range (`$gt`), no sort (but `$natural`) and, with a filter or a sort, no limit, and decodes each row
      it reads in its own process: so a listing filters by a field (`repository`), never by an `_id` range
      (`"repo:" < _id < "repo;"`, equivalent on MongoDB but a read of the whole collection there: 1,000 tags
      among 21,000 took 1.5 s against 0.1 s), and costs FerretDB about 45-95 us of CPU a document listed;
    - `{field: None}` and missing fields: see the next paragraph.

    Keep the fields of a unique index present and non-null: MongoDB indexes a missing field as
    null (two such documents collide) where FerretDB and SQLite do not; FerretDB has no sparse or
    partial indexes to make them agree.

    The client connects lazily; a missing server fails an operation after
    `server_selection_timeout_ms` with pymongo's ServerSelectionTimeoutError.
    """

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        server_selection_timeout_ms: int = 5000,
        connect_timeout_ms: int = 5000,
        socket_timeout_ms: int = 30000,
        serialize_writes: bool | None = None,
        lock_lease_seconds: float = 15.0,
        lock_acquire_timeout_seconds: float = 30.0,
        max_pool_size: int = 32,
    ) -> None:
        # A pool of connections, so that many commands are in flight at once: a read never waits for a
        # connection that a write holds while it retries a lease lock (FerretDB) or waits for the server.
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            maxPoolSize=max_pool_size,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=connect_timeout_ms,
            socketTimeoutMS=socket_timeout_ms,
            appname="hanzo-registry",
        )
        self._db: AsyncDatabase[dict[str, Any]] = self._client[database]
        self._serialize = serialize_writes
        self._lease = lock_lease_seconds
        self._acquire_timeout = lock_acquire_timeout_seconds
        # FerretDB mode: writers of one document in this process queue here before taking its lease.
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}
        self._blind: dict[str, _BlindWrite] = {}
        # Concurrent gets and inserts of one collection share commands (coalesce.py).
        self._gets: Coalescer[str, Document | None] = Coalescer(self._send_gets, max_batch=_GET_MANY_BATCH)
        self._inserts: Coalescer[dict[str, Any], None] = Coalescer(self._send_inserts, max_batch=128)
        self._releases: Coalescer[dict[str, Any], None] = Coalescer(self._send_releases, max_batch=128)

    @classmethod
    def from_settings(cls, settings: MongoMetadataSettings) -> MongoDocumentStore:
        return cls(
            settings.uri.get_secret_value(),
            settings.database,
            max_pool_size=settings.max_pool_size,
            server_selection_timeout_ms=round(settings.server_selection_timeout_seconds * 1000),
            connect_timeout_ms=round(settings.connect_timeout_seconds * 1000),
            socket_timeout_ms=round(settings.socket_timeout_seconds * 1000),
        )

    def _coll(self, name: str) -> AsyncCollection[dict[str, Any]]:
        return self._db[check_collection(name)]

    async def _serializes(self) -> bool:
        if self._serialize is None:
            info = await self._client.admin.command("buildInfo")
            self._serialize = "ferretdbVersion" in info
        return self._serialize

    @contextlib.asynccontextmanager
    async def _locked(self, collection: str, key: str) -> AsyncIterator[None]:
        """Hold the write lock of one document (a no-op on MongoDB, whose updates are atomic)."""
        if not await self._serializes():
            yield
            return
        lock_id = f"{collection}/{key}"  # collection names have no "/": unambiguous
        local, users = self._local.get(lock_id, (None, 0))
        if local is None:
            local = asyncio.Lock()
        self._local[lock_id] = (local, users + 1)
        try:
            async with local, self._leased(lock_id):
                yield
        finally:
            local, users = self._local[lock_id]
            if users == 1:
                del self._local[lock_id]
            else:
                self._local[lock_id] = (local, users - 1)

    @contextlib.asynccontextmanager
    async def _leased(self, lock_id: str) -> AsyncIterator[None]:
        """The lease lock of one document in the lock collection, across processes."""
        locks = self._db[LOCKS_COLLECTION]
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._acquire_timeout
        delay = 0.002
        while True:
            try:
                # Through the insert coalescer: the locks that many writers take at once share commands.
                await self._inserts.submit(LOCKS_COLLECTION, {"_id": lock_id, "token": token,
                                                              "expires": time.time() + self._lease})
                break
            except DuplicateKeyError:
                held = await locks.find_one({"_id": lock_id})
                if held is not None and held.get("expires", 0) < time.time():
                    # The holder died (or stalled past its lease): break the lock, by its token so
                    # a lock taken meanwhile by someone else survives.
                    await locks.delete_one({"_id": lock_id, "token": held.get("token")})
                    continue
                if loop.time() > give_up:
                    raise DocumentLockTimeoutError(f"document {lock_id} stayed locked") from None
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            await self._releases.submit(LOCKS_COLLECTION, {"_id": lock_id, "token": token})

    async def ensure_collection(self, name: str, indexes: Sequence[Index] = ()) -> None:
        coll = self._coll(name)
        try:
            await self._db.command("create", name)
        except OperationFailure as exc:
            if exc.code != _NAMESPACE_EXISTS:
                raise
        for index in indexes:
            if not index.fields:
                raise ValueError("an index needs at least one field")
            keys = [(check_field(f), ASCENDING) for f in index.fields]
            if not index.unique and "_id" not in index.fields:
                # Ending in _id, the index yields find's tie order and covers a projection (`fields`)
                # on its fields: MongoDB answers such a listing from the index alone.
                keys.append(("_id", ASCENDING))
            try:
                await coll.create_index(keys, unique=index.unique)
            except OperationFailure as exc:
                if _is_unique_violation(exc):
                    raise DuplicateKeyError(str(exc)) from exc
                raise

    async def get(self, collection: str, key: str) -> Document | None:
        await self._serializes()  # `_send_gets` picks its command by the server
        return await self._gets.submit(check_collection(collection), key)

    async def _send_gets(self, collection: str, keys: list[str]) -> list[Document | None]:
        coll = self._coll(collection)
        if len(keys) == 1:
            doc = await coll.find_one({"_id": keys[0]})
            return [None if doc is None else _decode_value(doc)]
        unique = list(dict.fromkeys(keys))
        if self._serialize:
            # Callers of one key that waited together (32 pulls of one tag) share its find_one.
            raw = await self._find_each(coll, unique)
        else:
            raw = {doc["_id"]: doc async for doc in coll.find({"_id": {"$in": unique}})}
        # Decoded per caller: two callers of one key never share a mutable document.
        return [None if raw.get(k) is None else _decode_value(raw[k]) for k in keys]

    @staticmethod
    async def _find_each(coll: AsyncCollection[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
        """FerretDB mode: the documents of distinct `keys`, undecoded, by one find_one each. FerretDB 1.x answers
        `_id: {$in: ...}` by reading the whole collection (it pushes down only `_id` equality), so a cost never
        grows with the collection this way."""
        found = await gather_bounded([coll.find_one({"_id": k}) for k in keys], _PER_KEY_IN_FLIGHT)
        return {k: doc for k, doc in zip(keys, found, strict=True) if doc is not None}

    async def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Document]:
        found: dict[str, Document] = {}
        unique = list(dict.fromkeys(keys))
        if await self._serializes():
            raw = await self._find_each(self._coll(collection), unique)
            return {k: _decode_value(doc) for k, doc in raw.items()}
        for start in range(0, len(unique), _GET_MANY_BATCH):
            batch = unique[start : start + _GET_MANY_BATCH]
            async for doc in self._coll(collection).find({"_id": {"$in": batch}}):
                decoded = _decode_value(doc)
                found[decoded["_id"]] = decoded
        return found

    async def insert(self, collection: str, doc: Mapping[str, Any]) -> None:
        await self._inserts.submit(check_collection(collection), _encode_doc(doc))

    async def _send_releases(self, collection: str, locks: list[dict[str, Any]]) -> list[Exception | None]:
        """Deletes lease locks, each by its `_id` and token (a lock taken meanwhile by another survives)."""
        coll = self._coll(collection)
        if len(locks) == 1:
            await coll.delete_one(locks[0])
        else:
            await coll.delete_many({"$or": locks})
        return [None] * len(locks)

    async def _send_inserts(self, collection: str, docs: list[dict[str, Any]]) -> list[Exception | None]:
        coll = self._coll(collection)
        if len(docs) == 1:
            try:
                await coll.insert_one(docs[0])
            except OperationFailure as exc:
                if _is_unique_violation(exc):
                    raise DuplicateKeyError(str(exc)) from exc
                raise
            return [None]
        # Unordered: each document is inserted or refused on its own, as with one insert_one each.
        outcome: list[Exception | None] = [None] * len(docs)
        try:
            await coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors") or ():
                failure = OperationFailure(str(error.get("errmsg", "")), error.get("code"), error)
                outcome[int(error["index"])] = (
                    DuplicateKeyError(str(failure)) if _is_unique_violation(failure) else failure
                )
        return outcome

    async def put(self, collection: str, doc: Mapping[str, Any]) -> None:
        encoded = _encode_doc(doc)
        coll = self._coll(collection)
        async with self._locked(collection, encoded["_id"]):
            for attempt in range(2):
                try:
                    await coll.replace_one({"_id": encoded["_id"]}, encoded, upsert=True)
                    return
                except OperationFailure as exc:
                    # Two upserts of the same new _id can race; the loser's retry replaces
                    # instead. A clash on another unique index fails again and is reported.
                    if not _is_unique_violation(exc):
                        raise
                    if attempt:
                        raise DuplicateKeyError(str(exc)) from exc

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
        coll = self._coll(collection)
        fields = [*changes, *unset]
        for field in fields:
            if check_field(field) == "_id":
                raise ValueError("_id cannot be changed")
        if len(set(fields)) != len(fields):
            raise ValueError("a field cannot be both set and unset (or listed twice)")
        query = {**_filter(expect), "_id": key}
        ops: dict[str, Any] = {}
        if changes:
            ops["$set"] = {f: _encode(check_text(v)) for f, v in changes.items()}
        if unset:
            ops["$unset"] = dict.fromkeys(unset, "")
        if not ops:
            # An empty update document is an error in MongoDB; this is a pure check.
            return await coll.count_documents(query, limit=1) > 0
        if not expect and not uncontended and await self._serializes():
            return await self._blind_update(collection, key, ops)
        async with contextlib.nullcontext() if uncontended else self._locked(collection, key):
            return await self._update_one(coll, query, ops)

    @staticmethod
    async def _update_one(coll: AsyncCollection[dict[str, Any]], query: dict[str, Any], ops: dict[str, Any]) -> bool:
        try:
            result = await coll.update_one(query, ops)
        except OperationFailure as exc:
            if _is_unique_violation(exc):
                raise DuplicateKeyError(str(exc)) from exc
            raise
        return result.matched_count > 0

    async def _blind_update(self, collection: str, key: str, ops: dict[str, Any]) -> bool:
        """An unconditional update under the document's lock, sent together with the unconditional updates
        of the same fields that wait for the lock with it (FerretDB mode; see `_BlindWrite`)."""
        lock_id = f"{collection}/{key}"
        query = {"_id": key}
        shape = (tuple(sorted(ops.get("$set", ()))), tuple(sorted(ops.get("$unset", ()))))
        me = object()
        batch = self._blind.get(lock_id)
        if batch is not None and batch.shape == shape:
            batch.ops, batch.owner = ops, me
            matched, failure = await asyncio.shield(batch.done)
            if matched is not None:
                return matched
            if failure is not None and failure[0] is me:
                raise failure[1]
        if batch is not None:
            # Another shape waits, or the command that went out was not this caller's: write alone.
            async with self._locked(collection, key):
                return await self._update_one(self._coll(collection), query, ops)
        batch = _BlindWrite(shape, ops, me)
        self._blind[lock_id] = batch
        try:
            async with self._locked(collection, key):
                if self._blind.get(lock_id) is batch:
                    del self._blind[lock_id]  # sealed: who comes now waits for the next command
                sent_ops, sent_owner = batch.ops, batch.owner
                try:
                    matched = await self._update_one(self._coll(collection), query, sent_ops)
                except Exception as exc:
                    batch.done.set_result((None, (sent_owner, exc)))
                    if sent_owner is me:
                        raise
                    return await self._update_one(self._coll(collection), query, ops)  # this caller's own
                batch.done.set_result((matched, None))
                return matched
        finally:
            if self._blind.get(lock_id) is batch:
                del self._blind[lock_id]
            if not batch.done.done():
                batch.done.set_result((None, None))  # nothing sent (cancelled): the joiners write alone

    async def delete(self, collection: str, key: str, *, expect: Mapping[str, Any] | None = None) -> bool:
        query = {**_filter(expect), "_id": key}
        coll = self._coll(collection)
        if not expect:
            # A delete by _id alone is atomic on FerretDB too (one SQL DELETE): no lock needed.
            return (await coll.delete_one(query)).deleted_count > 0
        async with self._locked(collection, key):
            return (await coll.delete_one(query)).deleted_count > 0

    async def delete_many(self, collection: str, keys: Sequence[str]) -> int:
        coll = self._coll(collection)
        unique = list(dict.fromkeys(keys))
        if await self._serializes():
            done = await gather_bounded([coll.delete_one({"_id": k}) for k in unique], _PER_KEY_IN_FLIGHT)
            return sum(r.deleted_count for r in done)
        deleted = 0
        for start in range(0, len(unique), _GET_MANY_BATCH):
            # Unconditional deletes by _id: atomic per document on FerretDB too, so no lock.
            batch = unique[start : start + _GET_MANY_BATCH]
            deleted += (await coll.delete_many({"_id": {"$in": batch}})).deleted_count
        return deleted

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
        coll = self._coll(collection)
        query = _query(where, order_by, after)
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            if limit == 0:
                return []  # MongoDB reads limit 0 as "no limit"
        # One reply where it fits (the server caps a reply at 16 MiB): the default first batch of 101
        # documents costs a listing of 1,000 names a getMore round trip.
        cursor = coll.find(query, _projection(fields), sort=_sort(order_by), limit=limit or 0,
                           batch_size=min(limit or _FIND_BATCH, _FIND_BATCH))
        return [_decode_doc(doc) for doc in await cursor.to_list()]

    async def batches(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str = "_id",
        after: Any = None,
        fields: Sequence[str] | None = None,
        size: int | Callable[[], int] = 1000,
    ) -> AsyncIterator[list[Document]]:
        # find and getMore as commands, not pymongo's cursor: its batch size is fixed once it has started, and
        # a reader wants smaller batches while requests are served. One explicit session: MongoDB refuses a
        # getMore from a session other than its find's.
        name = check_collection(collection)
        query = _query(where, order_by, after)
        projection = _projection(fields)
        strip = False  # whether the documents carry `order_by` only to resume from
        if projection is not None and order_by not in projection:
            projection[order_by] = 1
            strip = True
        last: dict[str, Any] | None = None
        async with self._client.start_session() as session:
            while True:  # one cursor; a new one from `last` if the server lost the first (idle timeout, restart)
                command: dict[str, Any] = {"find": name, "filter": _resumed(query, order_by, last),
                                           "sort": dict(_sort(order_by)), "batchSize": batch_size(size)}
                if projection is not None:
                    command["projection"] = projection
                reply = (await self._db.command(command, session=session))["cursor"]
                batch, cursor_id = reply["firstBatch"], int(reply["id"])
                try:
                    while True:
                        if batch:
                            last = {"_id": batch[-1]["_id"], order_by: batch[-1].get(order_by)}
                            yield [_decode_doc(_without(doc, order_by) if strip else doc) for doc in batch]
                        if not cursor_id:
                            return
                        try:
                            reply = (await self._db.command({"getMore": Int64(cursor_id), "collection": name,
                                                             "batchSize": batch_size(size)}, session=session))["cursor"]
                        except OperationFailure as exc:
                            if exc.code != _CURSOR_NOT_FOUND:
                                raise
                            cursor_id = 0
                            break
                        batch, cursor_id = reply["nextBatch"], int(reply["id"])
                finally:
                    if cursor_id:  # left early (the reader stopped, or failed): free the server's cursor
                        with contextlib.suppress(PyMongoError):
                            await self._db.command({"killCursors": name, "cursors": [Int64(cursor_id)]},
                                                   session=session)

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        return await self._coll(collection).count_documents(_filter(where))

    async def delete_where(self, collection: str, where: Mapping[str, Any]) -> int:
        query = _filter(where)
        coll = self._coll(collection)
        if not await self._serializes():
            return (await coll.delete_many(query)).deleted_count
        # FerretDB matches in its own process and then deletes by _id, so a document changed
        # meanwhile could go although it no longer matches: delete each under its lock instead.
        deleted = 0
        async for doc in coll.find(query, projection={"_id": 1}):
            if await self.delete(collection, doc["_id"], expect=where or None):
                deleted += 1
        return deleted

    async def drop_collection(self, name: str) -> None:
        await self._db.drop_collection(check_collection(name))

    async def collection_names(self) -> list[str]:
        """Every collection in the database except the lock table (admin tools, leftover checks)."""
        return sorted(n for n in await self._db.list_collection_names() if n != LOCKS_COLLECTION)

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()
