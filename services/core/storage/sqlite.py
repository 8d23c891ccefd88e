"""SQLite DocumentStore adapter: one table of JSON documents per collection.

Reads go through two aiosqlite connections (each a thread of its own): point reads (`get`, `get_many`) on one,
reads of many documents (`find`, `count`) on the other, so that a push's gets never queue behind a listing or a
GC run's scan page (WAL lets both read at once). Writes go through a third connection in a thread of its own,
with group commit: the writes that queue while one transaction commits go together in the next, each inside a
savepoint of its own (so each stays atomic and fails alone), and every caller is answered after the COMMIT's
fsync. With `synchronous=FULL` a write costs a WAL fsync; concurrent pushes share it instead of queueing one
fsync each behind the other (the embedded assembly's tag pushes were bound by exactly that).
"""

# Table and field names are spliced into SQL after _check_collection/_check_field admit only
# identifiers; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Any

import aiosqlite

from services.core.storage.documents import Document, DuplicateKeyError, Index, batch_size, in_background
from services.core.storage.docvalues import check_collection, check_field, check_text, encode_value

_BYTES = "$bytes"
# The json_type() of numbers. Each comparison also checks json_type (true/false/text/...) because
# json_extract alone would let True match 1 and 5 match 5 in a list; MongoDB compares within a type.
_NUMBER_TYPES = "('integer','real')"
_GET_MANY_BATCH = 500  # well under SQLite's limit of bound parameters
_GROUP_MAX = 512  # writes in one group commit
_BACKGROUND_BESIDE = 8
_BACKGROUND_ALONE = 64
"""Background writes (documents.background: GC) in a group beside request writes, and in a group of their own:
a request's write waits for the group being committed, which background work alone keeps short."""
_BACKGROUND_HOLD_SECONDS = 0.025
_REQUESTS_WRITING_SECONDS = 0.1
"""While requests wrote within the last _REQUESTS_WRITING_SECONDS, background writes with no request write to
ride beside wait up to _BACKGROUND_HOLD_SECONDS for one: a group of their own costs an fsync that a request
arriving meanwhile waits out (the push p99 during an embedded GC run); beside a request's group they share its
fsync. With no request writing they commit at once, so a run on an idle registry is not slowed."""
_DECODE_ON_LOOP_MAX = 200
"""Rows a find decodes on the event loop; more go to a worker thread, where the interpreter hands the loop
its turn every switch interval (5 ms) instead of after the whole page (a GC page of 2,000 links is tens of
ms of JSON, which a push waiting on the same loop would otherwise wait out)."""


@dataclass(slots=True)
class _Write:
    table: str
    sql: str
    params: Sequence[Any]
    create: bool
    future: asyncio.Future[int] = _field(repr=False)
    rowcount: int = 0
    error: Exception | None = None


def _create_sql(table: str) -> str:
    return f'CREATE TABLE IF NOT EXISTS "{table}" (_id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL)'


def _apply_one(conn: sqlite3.Connection, w: _Write) -> None:
    """One write inside the group's transaction, in a savepoint: its failure undoes only itself."""
    conn.execute("SAVEPOINT w")
    try:
        for attempt in range(2):
            try:
                w.rowcount = conn.execute(w.sql, w.params).rowcount
                break
            except sqlite3.OperationalError as exc:
                if attempt or not _is_missing_table(exc):
                    raise
                if not w.create:  # an update or delete of a missing collection matches nothing
                    break
                conn.execute(_create_sql(w.table))
        conn.execute("RELEASE w")
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK TO w")
        conn.execute("RELEASE w")
        w.error = DuplicateKeyError(str(exc))


def _bytes_marker(data: bytes) -> dict[str, str]:
    return {_BYTES: base64.b64encode(data).decode("ascii")}


def _encode(value: Any) -> Any:
    """A document value as JSON-ready data: bytes become {"$bytes": base64}."""
    return encode_value(value, encode_bytes=_bytes_marker)


def _dumps(value: Any) -> str:
    return json.dumps(_encode(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _decode_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES in obj:
        return base64.b64decode(obj[_BYTES])
    return obj


def _loads(text: str) -> Any:
    return json.loads(text, object_hook=_decode_object)


def _split_doc(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(`_id`, JSON of the other fields): the key lives in its own column, not twice."""
    key = doc.get("_id")
    if not isinstance(key, str):
        raise ValueError("a document needs a string _id")
    for value in doc.values():
        check_text(value)
    return key, _dumps({k: v for k, v in doc.items() if k != "_id"})


def _expr(field: str) -> str:
    # The exact text of the index expressions, so the planner matches queries to the indexes.
    check_field(field)
    return "_id" if field == "_id" else f"json_extract(doc, '$.{field}')"


def _jtype(field: str) -> str:
    return f"json_type(doc, '$.{field}')"


def _conditions(where: Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
    """SQL terms (ANDed) and their parameters for field-equality `where`; None matches missing."""
    terms: list[str] = []
    params: list[Any] = []
    for field, value in (where or {}).items():
        expr = _expr(field)
        check_text(value)
        if field == "_id":
            if isinstance(value, str):
                terms.append("_id = ?")
                params.append(value)
            else:
                terms.append("0")  # _id is always a string: nothing else can equal it
            continue
        if value is None:
            terms.append(f"{expr} IS NULL")  # json_extract is NULL for a missing field and for null
        elif isinstance(value, bool):
            terms.append(f"{expr} = ? AND {_jtype(field)} = '{'true' if value else 'false'}'")
            params.append(int(value))
        elif isinstance(value, (int, float)):
            terms.append(f"{expr} = ? AND {_jtype(field)} IN {_NUMBER_TYPES}")
            params.append(_encode(value))
        elif isinstance(value, str):
            terms.append(f"{expr} = ? AND {_jtype(field)} = 'text'")
            params.append(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            # json_extract renders a sub-object as minified JSON, exactly as _dumps writes it.
            terms.append(f"{expr} = ? AND {_jtype(field)} = 'object'")
            params.append(_dumps(value))
        else:
            raise TypeError(f"where/expect value for {field!r} must be a scalar, not {type(value).__name__}")
    return terms, params


def _projected_value(value: Any, json_type: str) -> Any:
    """A field read with json_extract back to its document value (json_type tells what it was)."""
    if json_type in ("object", "array"):
        return _loads(value)  # json_extract renders these as JSON text
    if json_type in ("true", "false"):
        return json_type == "true"
    return value  # text, integer, real, null (None)


def _projection(row: sqlite3.Row, fields: Sequence[str]) -> Document:
    doc: Document = {"_id": row[0]}
    for i, field in enumerate(fields):
        value, json_type = row[1 + 2 * i], row[2 + 2 * i]
        if json_type is not None:  # None: the document lacks the field
            doc[field] = _projected_value(value, json_type)
    return doc


def _is_missing_table(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)


class SqliteDocumentStore:
    """DocumentStore on one SQLite file (WAL), safe for many tasks and several processes.

    Every write is one autocommit statement, hence atomic: compare-and-set is a single
    `UPDATE ... WHERE _id = ? AND <expect>`. SQLite takes the write lock at the start of such a
    statement and waits up to `busy_timeout` for another process to release it. Like MongoDB, a
    write to a collection that does not exist creates it; a read of one finds nothing.

    Keep the fields of a unique index present and non-null: here (and on FerretDB) documents
    lacking them never collide, while MongoDB indexes them all as one null value.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._conns: dict[str, aiosqlite.Connection] = {}  # by lane: "point", "scan", "background"
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._wconn: sqlite3.Connection | None = None
        self._queue: list[_Write] = []
        self._later: list[_Write] = []  # background writes (documents.background)
        self._flusher: asyncio.Task[None] | None = None
        self._request_written = -_REQUESTS_WRITING_SECONDS  # when a request last queued a write (monotonic)
        self._request_queued = asyncio.Event()
        self.group_commits = 0
        """Transactions the writer committed (tests: concurrent writes share them)."""

    def _pragmas(self) -> tuple[str, ...]:
        """Set on both connections (reader and writer)."""
        return (
            "PRAGMA journal_mode=WAL",
            # FULL: the metadata is the registry's source of truth (a tag the client was told is pushed must
            # survive a power cut). NORMAL in WAL mode can lose the last commits on power loss; FULL costs
            # one WAL fsync per group commit.
            "PRAGMA synchronous=FULL",
            f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}",
        )

    async def _db(self, lane: str = "point") -> aiosqlite.Connection:
        conn = self._conns.get(lane)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("SqliteDocumentStore is closed")
        async with self._open_lock:
            if lane not in self._conns:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: no implicit BEGIN (deferred) from the sqlite3 module, whose
                # read-then-write upgrade could fail with SQLITE_BUSY without waiting.
                conn = await aiosqlite.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
                try:
                    for pragma in self._pragmas():
                        await conn.execute(pragma)
                except BaseException:
                    await conn.close()
                    raise
                self._conns[lane] = conn
            return self._conns[lane]

    async def _write(self, collection: str, sql: str, params: Sequence[Any], *, create: bool = True) -> int:
        """Run one write statement in the next group commit; returns the row count once it is durable. An
        insert creates a missing collection (as MongoDB does); an update or delete of a missing collection
        matches nothing."""
        if self._closed:
            raise RuntimeError("SqliteDocumentStore is closed")
        loop = asyncio.get_running_loop()
        write = _Write(check_collection(collection), sql, tuple(params), create, loop.create_future())
        if in_background():
            self._later.append(write)
        else:
            self._queue.append(write)
            self._request_written = time.monotonic()
            self._request_queued.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await asyncio.shield(write.future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue or self._later:
            if not self._queue and time.monotonic() - self._request_written < _REQUESTS_WRITING_SECONDS:
                self._request_queued.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_BACKGROUND_HOLD_SECONDS):
                        await self._request_queued.wait()
            group, self._queue = self._queue[:_GROUP_MAX], self._queue[_GROUP_MAX:]
            room = _BACKGROUND_BESIDE if group else _BACKGROUND_ALONE
            group += self._later[:room]
            del self._later[:room]
            try:
                await loop.run_in_executor(self._writer, self._commit_group, group)
            except Exception as exc:  # the whole group is rolled back: nobody's write happened
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.group_commits += 1
            for w in group:
                if w.future.done():
                    continue
                if w.error is not None:
                    w.future.set_exception(w.error)
                else:
                    w.future.set_result(w.rowcount)

    def _write_connection(self) -> sqlite3.Connection:
        """In the writer thread only."""
        if self._wconn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                for pragma in self._pragmas():
                    conn.execute(pragma)
            except BaseException:
                conn.close()
                raise
            self._wconn = conn
        return self._wconn

    def _commit_group(self, group: list[_Write]) -> None:
        """In the writer thread: one transaction, one savepoint per write, one COMMIT (one fsync)."""
        conn = self._write_connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for w in group:
                _apply_one(conn, w)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close_writer(self) -> None:
        if self._wconn is not None:
            conn, self._wconn = self._wconn, None
            conn.close()

    async def _read(self, sql: str, params: Sequence[Any], *, lane: str = "point") -> list[sqlite3.Row]:
        # Each connection runs one statement at a time: background work (GC's pages) gets one of its own, so
        # a request's read never queues behind it.
        db = await self._db("background" if in_background() else lane)
        try:
            return list(await db.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            if _is_missing_table(exc):
                return []
            raise

    async def _create_table(self, name: str) -> None:
        db = await self._db()
        await db.execute(_create_sql(check_collection(name)))

    async def ensure_collection(self, name: str, indexes: Sequence[Index] = ()) -> None:
        await self._create_table(name)
        db = await self._db()
        for index in indexes:
            if not index.fields:
                raise ValueError("an index needs at least one field")
            exprs = ", ".join(_expr(f) for f in index.fields)
            legacy_name = "__".join((name, *index.fields))
            index_name = legacy_name
            if not index.unique and "_id" not in index.fields:
                # Ending in _id, the index also yields find's tie order without a sort; then the type of
                # each field, so that find's type-strict equality and a projection (`fields`) are
                # answered from the index alone, never from the documents (a covering index).
                exprs += ", _id, " + ", ".join(_jtype(f) for f in index.fields)
                index_name = legacy_name + "__covering"
            unique = "UNIQUE " if index.unique else ""
            try:
                await db.execute(f'CREATE {unique}INDEX IF NOT EXISTS "{index_name}" ON "{name}" ({exprs})')
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(str(exc)) from exc
            if index_name != legacy_name:
                # The narrower index of earlier versions, which the planner might still prefer.
                await db.execute(f'DROP INDEX IF EXISTS "{legacy_name}"')

    async def get(self, collection: str, key: str) -> Document | None:
        rows = await self._read(f'SELECT _id, doc FROM "{check_collection(collection)}" WHERE _id = ?', (key,))
        return self._document(rows[0]) if rows else None

    async def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, Document]:
        table = check_collection(collection)
        found: dict[str, Document] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _GET_MANY_BATCH):
            batch = unique[start : start + _GET_MANY_BATCH]
            marks = ", ".join("?" * len(batch))
            for row in await self._read(f'SELECT _id, doc FROM "{table}" WHERE _id IN ({marks})', batch):
                doc = self._document(row)
                found[doc["_id"]] = doc
        return found

    async def insert(self, collection: str, doc: Mapping[str, Any]) -> None:
        key, body = _split_doc(doc)
        await self._write(
            collection, f'INSERT INTO "{check_collection(collection)}" (_id, doc) VALUES (?, ?)', (key, body)
        )

    async def put(self, collection: str, doc: Mapping[str, Any]) -> None:
        key, body = _split_doc(doc)
        await self._write(
            collection,
            f'INSERT INTO "{check_collection(collection)}" (_id, doc) VALUES (?, ?) '
            "ON CONFLICT (_id) DO UPDATE SET doc = excluded.doc",
            (key, body),
        )

    async def update(
        self,
        collection: str,
        key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        uncontended: bool = False,  # every SQLite write is atomic already
    ) -> bool:
        table = check_collection(collection)
        fields = [*changes, *unset]
        for field in fields:
            if check_field(field) == "_id":
                raise ValueError("_id cannot be changed")
        if len(set(fields)) != len(fields):
            raise ValueError("a field cannot be both set and unset (or listed twice)")
        new_doc = "doc"
        params: list[Any] = []
        if changes:
            # json(?) marks the bound text as JSON, so strings, numbers, bools and objects keep their
            # types (a plain bound True would become the number 1).
            pairs = ", ".join(f"'$.{f}', json(?)" for f in changes)
            new_doc = f"json_set({new_doc}, {pairs})"
            params.extend(_dumps(check_text(v)) for v in changes.values())
        if unset:
            paths = ", ".join(f"'$.{f}'" for f in unset)
            new_doc = f"json_remove({new_doc}, {paths})"
        terms, where_params = _conditions(expect)
        sql = f'UPDATE "{table}" SET doc = {new_doc} WHERE ' + " AND ".join(["_id = ?", *terms])
        return await self._write(collection, sql, [*params, key, *where_params], create=False) > 0

    async def delete(self, collection: str, key: str, *, expect: Mapping[str, Any] | None = None) -> bool:
        terms, params = _conditions(expect)
        sql = f'DELETE FROM "{check_collection(collection)}" WHERE ' + " AND ".join(["_id = ?", *terms])
        return await self._write(collection, sql, [key, *params], create=False) > 0

    async def delete_many(self, collection: str, keys: Sequence[str]) -> int:
        table = check_collection(collection)
        unique = list(dict.fromkeys(keys))
        deleted = 0
        for start in range(0, len(unique), _GET_MANY_BATCH):
            batch = unique[start : start + _GET_MANY_BATCH]
            marks = ", ".join("?" * len(batch))
            deleted += await self._write(collection, f'DELETE FROM "{table}" WHERE _id IN ({marks})', batch,
                                         create=False)
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
        return await self._find(collection, where, order_by=order_by, after=after, limit=limit, fields=fields)

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
        # Pages from where the last ended, in (order_by, _id): each starts in the index where the last one
        # ended, so costs what it returns. (A statement held open across the reader's pauses would hold the
        # connection the requests share.)
        read = fields if fields is None or order_by in fields or order_by == "_id" else [*fields, order_by]
        resume: tuple[Any, str] | None = None
        while True:
            limit = batch_size(size)
            page = await self._find(collection, where, order_by=order_by, after=after, limit=limit, fields=read,
                                    resume=resume)
            if page:
                resume = (page[-1].get(order_by), page[-1]["_id"])
                if read is not fields:
                    for doc in page:
                        doc.pop(order_by, None)
                yield page
            if len(page) < limit:
                return

    async def _find(
        self,
        collection: str,
        where: Mapping[str, Any] | None,
        *,
        order_by: str,
        after: Any,
        limit: int | None,
        fields: Sequence[str] | None,
        resume: tuple[Any, str] | None = None,
    ) -> list[Document]:
        table = check_collection(collection)
        terms, params = _conditions(where)
        projected = None if fields is None else [f for f in dict.fromkeys(fields) if check_field(f) != "_id"]
        order_expr = _expr(order_by)
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, (str, int, float)):
                raise TypeError("after must be a string or a number")
            if order_by == "_id":
                if not isinstance(after, str):
                    raise TypeError("after must be a string when ordering by _id")
                terms.append("_id > ?")
            else:
                # Like MongoDB's $gt, stay within the type of `after`: SQLite otherwise ranks every
                # string above every number.
                guard = "= 'text'" if isinstance(after, str) else f"IN {_NUMBER_TYPES}"
                terms.append(f"{order_expr} > ? AND {_jtype(order_by)} {guard}")
            params.append(_encode(check_text(after)))
        if resume is not None:
            value, key = resume
            if order_by == "_id":
                terms.append("_id > ?")
                params.append(key)
            elif value is None:  # missing and null sort first
                terms.append(f"(({order_expr} IS NULL AND _id > ?) OR {order_expr} IS NOT NULL)")
                params.append(key)
            else:
                # SQLite compares values of different types as ORDER BY orders them (numbers before text), so no
                # type guard: what sorts after the last one read is exactly what is left. The `>=` alone is what
                # the index seeks to (with only the OR, or a row value, SQLite scanned the index from its start).
                terms.append(f"{order_expr} >= ? AND ({order_expr} > ? OR _id > ?)")
                params += [value, value, key]
        if projected is None:
            sql = f'SELECT _id, doc FROM "{table}"'
        else:
            # Each field as its value and its JSON type: both are in a covering index (ensure_collection).
            columns = "".join(f", {_expr(f)}, {_jtype(f)}" for f in projected)
            sql = f'SELECT _id{columns} FROM "{table}"'
        if terms:
            sql += " WHERE " + " AND ".join(terms)
        # Default BINARY collation: strings compare by UTF-8 bytes, i.e. by code point; numbers
        # compare numerically (json_extract returns typed values); missing/null sort first.
        sql += f" ORDER BY {order_expr}" + ("" if order_by == "_id" else ", _id")
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self._read(sql, params, lane="scan")
        if len(rows) > _DECODE_ON_LOOP_MAX:
            return await asyncio.to_thread(self._decode, rows, projected)
        return self._decode(rows, projected)

    @classmethod
    def _decode(cls, rows: list[sqlite3.Row], projected: list[str] | None) -> list[Document]:
        if projected is None:
            return [cls._document(row) for row in rows]
        return [_projection(row, projected) for row in rows]

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        terms, params = _conditions(where)
        sql = f'SELECT count(*) FROM "{check_collection(collection)}"'
        if terms:
            sql += " WHERE " + " AND ".join(terms)
        rows = await self._read(sql, params, lane="scan")
        return int(rows[0][0]) if rows else 0

    async def delete_where(self, collection: str, where: Mapping[str, Any]) -> int:
        terms, params = _conditions(where)
        sql = f'DELETE FROM "{check_collection(collection)}"'
        if terms:
            sql += " WHERE " + " AND ".join(terms)
        return await self._write(collection, sql, params, create=False)

    async def drop_collection(self, name: str) -> None:
        db = await self._db()
        await db.execute(f'DROP TABLE IF EXISTS "{check_collection(name)}"')

    async def collection_names(self) -> list[str]:
        """Every collection in the file (admin tools, tests' leftover checks)."""
        rows = await self._read(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            (),
        )
        return sorted(str(row[0]) for row in rows)

    async def ping(self) -> None:
        db = await self._db()
        await db.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._writer, self._close_writer)
        self._writer.shutdown(wait=True)
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()

    @staticmethod
    def _document(row: sqlite3.Row) -> Document:
        body = _loads(row[1])
        return {"_id": row[0], **body}
