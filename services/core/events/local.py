"""LocalEventLog: the embedded assembly's EventLog, a durable SQLite log with consumer groups.

One SQLite file (WAL, synchronous=FULL: a publish that returned survives a crash or power cut):

    topics(topic, partitions)                        partition count, fixed at a topic's first use
    heads(topic, partition, next_offset)             offset the next record of a partition gets
    records(topic, partition, offset, key, value, headers, ts)
    offsets(group_id, topic, partition, committed)   next offset the group has not consumed yet
    members(group_id, topic, member, expires)        live members of a group, renewed while iterating
    leases(group_id, topic, partition, member, expires)  the one member allowed to deliver a partition

A record goes to partition crc32(key) mod partitions, so one key keeps its order. Every member of a
group (in this process or another process on the same file) heartbeats while it iterates: it renews
its membership and its leases, drops expired members and leases, and moves towards its fair share of
partitions (live members sorted by id; the first `partitions % n` get one more). A member that closes
gives its leases back at once; one that dies loses them when they expire (`lease_seconds`), and the
next owner starts from the committed offset, so whatever the old member had not acked is redelivered.
A member must come back to the iterator within `lease_seconds` (like Kafka's max.poll.interval.ms).

Retention: like Kafka's time-based retention, records older than `retention_seconds` are deleted
whatever the groups have consumed (a sweep at most every `sweep_interval`, run by publish); a group
whose committed offset then points below a partition's first remaining record just continues with
that record. `heads` keeps offsets monotonic when a partition is emptied this way.

A subscription `from_end` takes no membership or lease: it reads every partition from the `heads` it read
when it subscribed, and commits nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from services.core.events.log import Delivery, Headers, Record
from services.core.settings import LocalEventSettings

__all__ = ["LocalEventLog", "LocalSubscription"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (topic, partition, offset)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
CREATE TABLE IF NOT EXISTS members (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    member TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (group_id, topic, member)
);
CREATE TABLE IF NOT EXISTS leases (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
"""

_FETCH_BATCH = 100


def partition_for(key: str, partitions: int) -> int:
    """The partition of `key`: stable across processes and restarts (unlike `hash`)."""
    return zlib.crc32(key.encode()) % partitions


def _encode_headers(headers: Headers) -> str:
    return json.dumps([[name, base64.b64encode(value).decode("ascii")] for name, value in headers])


def _decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, base64.b64decode(value)) for name, value in json.loads(text))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so two processes never deadlock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


class LocalEventLog:
    """EventLog on one SQLite file; several processes may share the file."""

    def __init__(
        self,
        path: Path,
        *,
        partitions: int = 4,
        poll_interval: float = 0.05,
        lease_seconds: float = 10.0,
        busy_timeout: float = 30.0,
        retention_seconds: float | None = 7 * 24 * 3600,
        sweep_interval: float = 600.0,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self.path = path
        self.partitions = partitions
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self._busy_timeout = busy_timeout
        self.retention_seconds = retention_seconds
        self._sweep_interval = sweep_interval
        self._next_sweep = time.monotonic() + sweep_interval
        # One thread owns the connection: sqlite3 connections are not shared between threads, and
        # serialising this process's statements keeps transactions from interleaving.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-eventlog")
        self._conn: sqlite3.Connection | None = None
        self._partition_counts: dict[str, int] = {}
        self._subscriptions: set[LocalSubscription] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: LocalEventSettings, *, data_dir: Path) -> LocalEventLog:
        return cls(settings.path or data_dir / "events.db")

    # -- plumbing -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise RuntimeError("LocalEventLog is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._connection()))

    def _partitions_of(self, conn: sqlite3.Connection, topic: str, wanted: int | None = None) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            # The first user of a topic fixes its partition count; later users (other processes,
            # other settings) must agree, or one key would land in two partitions.
            conn.execute(
                "INSERT OR IGNORE INTO topics (topic, partitions) VALUES (?, ?)",
                (topic, wanted or self.partitions),
            )
            row = conn.execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()
            count = int(row[0])
            self._partition_counts[topic] = count
        return count

    def _wake(self, topic: str, *, group: str | None = None, rebalance: bool = False) -> None:
        for sub in self._subscriptions:
            if sub.topic == topic and (group is None or sub.group == group):
                sub._wake(rebalance=rebalance)

    # -- EventLog -------------------------------------------------------------------------------

    async def publish(self, topic: str, key: str, value: bytes, *, headers: Headers = ()) -> None:
        """Append a record; durable (fsynced) when it returns. Not idempotent: a retry appends again."""
        encoded = _encode_headers(headers)

        def write(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                partition = partition_for(key, self._partitions_of(conn, topic))
                row = conn.execute(
                    "INSERT INTO heads (topic, partition, next_offset) VALUES (?, ?, 1) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = next_offset + 1 "
                    "RETURNING next_offset",
                    (topic, partition),
                ).fetchone()
                conn.execute(
                    "INSERT INTO records (topic, partition, offset, key, value, headers, ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (topic, partition, int(row[0]) - 1, key, value, encoded, time.time()),
                )

        await self._run(write)
        self._wake(topic)
        if self.retention_seconds is not None and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self._sweep_interval
            await self.sweep()

    async def sweep(self, *, now: float | None = None) -> int:
        """Delete records past the retention age; returns how many went."""
        if self.retention_seconds is None:
            return 0
        cutoff = (now if now is not None else time.time()) - self.retention_seconds

        def delete(conn: sqlite3.Connection) -> int:
            with _Transaction(conn):
                return int(conn.execute("DELETE FROM records WHERE ts < ?", (cutoff,)).rowcount)

        return await self._run(delete)

    async def subscribe(self, topic: str, group: str, *, from_end: bool = False) -> LocalSubscription:
        """Join `group` on `topic`; the member takes its share of partitions at once. With `from_end`, read
        every partition from its head as of this call instead (EventLog.subscribe): no membership, no lease."""
        if from_end:
            return await self._subscribe_at_end(topic, group)
        count = await self._run(lambda conn: self._with_tx(conn, lambda: self._partitions_of(conn, topic)))
        sub = LocalSubscription(self, topic=topic, group=group, partitions=count)
        self._subscriptions.add(sub)
        await sub._heartbeat()
        # Members already in the group give up their surplus now rather than at their next heartbeat.
        self._wake(topic, group=group, rebalance=True)
        return sub

    async def _subscribe_at_end(self, topic: str, group: str) -> LocalSubscription:
        def heads(conn: sqlite3.Connection) -> dict[int, int]:
            # One transaction with the partition count: a publish commits either before it (below the
            # head read here) or after (at or above it), so none falls between.
            with _Transaction(conn):
                count = self._partitions_of(conn, topic)
                rows = conn.execute("SELECT partition, next_offset FROM heads WHERE topic = ?", (topic,))
                known = {int(p): int(n) for p, n in rows}
            return {p: known.get(p, 0) for p in range(count)}

        positions = await self._run(heads)
        sub = LocalSubscription(self, topic=topic, group=group, partitions=len(positions), positions=positions)
        self._subscriptions.add(sub)
        return sub

    async def ping(self) -> None:
        """Raise if the database file cannot be read."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Close every open subscription (their leases go back to the group), then the file. Idempotent."""
        if self._closed:
            return
        for sub in list(self._subscriptions):
            await sub.close()
        self._closed = True

        def shutdown() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shutdown)
        self._executor.shutdown(wait=True)

    # -- topic administration (same shape as KafkaEventLog's) ----------------------------------

    @staticmethod
    def _with_tx(conn: sqlite3.Connection, fn: Callable[[], _T]) -> _T:
        with _Transaction(conn):
            return fn()

    async def ensure_topics(self, names: Iterable[str], *, partitions: int | None = None) -> None:
        """Register topics with `partitions` (default: this log's). Idempotent: an existing topic
        keeps its partition count."""
        topics = list(names)

        def create(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                for topic in topics:
                    self._partitions_of(conn, topic, partitions)

        await self._run(create)

    async def delete_topics(self, names: Iterable[str]) -> None:
        """Delete topics with their records, committed offsets, members and leases. Idempotent."""
        topics = list(names)

        def delete(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                for topic in topics:
                    for table in ("topics", "heads", "records", "offsets", "members", "leases"):
                        conn.execute(f"DELETE FROM {table} WHERE topic = ?", (topic,))  # noqa: S608
                    self._partition_counts.pop(topic, None)

        await self._run(delete)

    async def list_topics(self) -> set[str]:
        """Every topic known to the file."""
        rows = await self._run(lambda conn: conn.execute("SELECT topic FROM topics").fetchall())
        return {str(row[0]) for row in rows}


class LocalSubscription:
    """One member of a consumer group on one topic; iterate it for deliveries."""

    def __init__(self, log: LocalEventLog, *, topic: str, group: str, partitions: int,
                 positions: dict[int, int] | None = None) -> None:
        self._log = log
        self.topic = topic
        self.group = group
        self.member = uuid.uuid4().hex
        self._partitions = partitions
        # Given: a subscription from the end, which owns these partitions for good and never heartbeats.
        self.from_end = positions is not None
        self._positions: dict[int, int] = dict(positions or {})  # owned partition -> next offset to deliver
        self._buffer: deque[Record] = deque()
        self._wakeup = asyncio.Event()
        self._next_heartbeat = 0.0
        self._heartbeat_every = min(log.lease_seconds / 3, 1.0)
        self._closed = False

    @property
    def owned_partitions(self) -> frozenset[int]:
        """Partitions this member holds the lease of (as of its last heartbeat)."""
        return frozenset(self._positions)

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> Delivery:
        while not self._closed:
            if time.monotonic() >= self._next_heartbeat:
                await self._heartbeat()
                continue
            while self._buffer:
                record = self._buffer.popleft()
                if record.partition in self._positions:
                    return Delivery(record=record, _subscription=self)
            # Clear before reading: a publish that lands after the read still wakes the wait below.
            self._wakeup.clear()
            if await self._fetch():
                continue
            wait = min(self._log.poll_interval, max(0.0, self._next_heartbeat - time.monotonic()))
            try:
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
        raise StopAsyncIteration

    async def commit(self, record: Record) -> None:
        """Commit `record` and everything before it in its partition. Idempotent; never moves the
        committed offset back, so a late ack from a member that lost the partition is harmless.
        After `close` an ack is dropped (as with Kafka): the next member delivers the record again."""
        if record.topic != self.topic:
            raise ValueError(f"record of topic {record.topic!r} committed on {self.topic!r}")
        if self._closed or self.from_end:  # from the end: no one would read the offset (and no fsync per ack)
            return
        args = (self.group, self.topic, record.partition, record.offset + 1)

        def write(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                conn.execute(
                    "INSERT INTO offsets (group_id, topic, partition, committed) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (group_id, topic, partition) "
                    "DO UPDATE SET committed = MAX(committed, excluded.committed)",
                    args,
                )

        await self._log._run(write)

    async def lag(self) -> dict[int, int]:
        """Records not yet committed by this group, per owned partition (the LagReporting capability)."""
        owned = sorted(self._positions)
        topic, group = self.topic, self.group
        if self.from_end:
            positions = dict(self._positions)

            def behind(conn: sqlite3.Connection) -> dict[int, int]:
                rows = conn.execute("SELECT partition, next_offset FROM heads WHERE topic = ?", (topic,))
                heads = {int(p): int(n) for p, n in rows}
                return {p: max(0, heads.get(p, 0) - positions[p]) for p in owned}

            return await self._log._run(behind)

        def read(conn: sqlite3.Connection) -> dict[int, int]:
            lags: dict[int, int] = {}
            for partition in owned:
                row = conn.execute(
                    "SELECT COALESCE((SELECT next_offset FROM heads WHERE topic = ? AND partition = ?), 0) - "
                    "COALESCE((SELECT committed FROM offsets WHERE group_id = ? AND topic = ? AND partition = ?), 0)",
                    (topic, partition, group, topic, partition),
                ).fetchone()
                lags[partition] = max(0, int(row[0]))
            return lags

        return await self._log._run(read)

    async def close(self) -> None:
        """Leave the group: leases go back at once, unacked records go to the next owner. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        self._positions.clear()
        self._buffer.clear()
        self._log._subscriptions.discard(self)
        if self.from_end:
            return
        key = (self.group, self.topic, self.member)

        def leave(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                conn.execute("DELETE FROM leases WHERE group_id = ? AND topic = ? AND member = ?", key)
                conn.execute("DELETE FROM members WHERE group_id = ? AND topic = ? AND member = ?", key)

        await self._log._run(leave)
        self._log._wake(self.topic, group=self.group, rebalance=True)

    # -- internals ------------------------------------------------------------------------------

    def _wake(self, *, rebalance: bool) -> None:
        if rebalance:
            self._next_heartbeat = 0.0
        self._wakeup.set()

    async def _heartbeat(self) -> None:
        """Renew membership and leases, move towards the fair share, learn where owned partitions
        resume."""
        self._next_heartbeat = time.monotonic() + self._heartbeat_every
        if self.from_end:
            return
        lease = self._log.lease_seconds
        group, topic, member, partitions = self.group, self.topic, self.member, self._partitions

        def rebalance(conn: sqlite3.Connection) -> dict[int, int]:
            now = time.time()
            gt = (group, topic)
            with _Transaction(conn):
                conn.execute(
                    "INSERT INTO members (group_id, topic, member, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (group_id, topic, member) DO UPDATE SET expires = excluded.expires",
                    (*gt, member, now + lease),
                )
                conn.execute(
                    "DELETE FROM members WHERE group_id = ? AND topic = ? AND expires < ?", (*gt, now)
                )
                conn.execute(
                    "DELETE FROM leases WHERE group_id = ? AND topic = ? AND expires < ?", (*gt, now)
                )
                live = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT member FROM members WHERE group_id = ? AND topic = ? ORDER BY member", gt
                    )
                ]
                rank = live.index(member)
                share = partitions // len(live) + (1 if rank < partitions % len(live) else 0)
                holders = {
                    int(r[0]): str(r[1])
                    for r in conn.execute(
                        "SELECT partition, member FROM leases WHERE group_id = ? AND topic = ?", gt
                    )
                }
                mine = sorted(p for p, m in holders.items() if m == member)
                if len(mine) > share:
                    for p in mine[share:]:
                        conn.execute(
                            "DELETE FROM leases WHERE group_id = ? AND topic = ? AND partition = ?", (*gt, p)
                        )
                    mine = mine[:share]
                else:
                    free = [p for p in range(partitions) if p not in holders]
                    for p in free[: share - len(mine)]:
                        conn.execute(
                            "INSERT INTO leases (group_id, topic, partition, member, expires) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (*gt, p, member, now + lease),
                        )
                        mine.append(p)
                conn.execute(
                    "UPDATE leases SET expires = ? WHERE group_id = ? AND topic = ? AND member = ?",
                    (now + lease, *gt, member),
                )
                committed = {
                    int(r[0]): int(r[1])
                    for r in conn.execute(
                        "SELECT partition, committed FROM offsets WHERE group_id = ? AND topic = ?", gt
                    )
                }
            return {p: committed.get(p, 0) for p in mine}

        owned = await self._log._run(rebalance)
        if self._closed:
            return
        lost = self._positions.keys() - owned.keys()
        if lost:
            # Buffered records of a lost partition belong to its new owner now.
            self._buffer = deque(r for r in self._buffer if r.partition not in lost)
        # A partition just won starts at the group's committed offset; one kept keeps our position.
        self._positions = {p: self._positions.get(p, start) for p, start in owned.items()}

    async def _fetch(self) -> bool:
        """Read the next batch of every owned partition into the buffer; False when there is none."""
        positions = dict(self._positions)
        if not positions:
            return False
        topic = self.topic

        def read(conn: sqlite3.Connection) -> list[Record]:
            records: list[Record] = []
            for partition, start in positions.items():
                rows = conn.execute(
                    "SELECT offset, key, value, headers FROM records "
                    "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                    (topic, partition, start, _FETCH_BATCH),
                )
                records.extend(
                    Record(
                        topic=topic,
                        key=str(key),
                        value=bytes(value),
                        headers=_decode_headers(headers),
                        partition=partition,
                        offset=int(offset),
                    )
                    for offset, key, value, headers in rows
                )
            return records

        records = await self._log._run(read)
        # Keep only partitions still owned at the position read from (a close may have run meanwhile).
        unchanged = {p for p, start in positions.items() if self._positions.get(p) == start}
        fresh = [r for r in records if r.partition in unchanged]
        for record in fresh:
            self._positions[record.partition] = record.offset + 1
        self._buffer.extend(fresh)
        return bool(fresh)
