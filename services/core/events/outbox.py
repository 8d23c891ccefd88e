"""Durable outbox: a metadata change and its events are written as one intent, so they never part.

There are no multi-document transactions (FerretDB has none), so the outbox is a write-ahead
intent log:

1. `Outbox.commit` inserts one outbox document holding the change (a list of idempotent
   single-document operations) and its events, state `pending`. This insert is the commit point.
2. It applies the operations in order, then flips the document to `ready`.
3. `OutboxRelay` publishes `ready` documents in sequence order and then deletes them (a batch at once).

When the relay of the writer's own process holds the lease (it follows the outbox: `OutboxRelay.follow`),
step 2's flip is told to that relay in memory instead of written: the relay publishes such a `pending`
intent as if it were `ready`, and writes the flip itself whenever it cannot publish promptly (the event
log fails, it loses or gives up the lease, it stops). So only a writer whose process died leaves a
`pending` intent without a flip, exactly as before.

A writer that dies after step 1 leaves a `pending` intent; once it is older than `stale_after` the
relay re-applies its operations (they are idempotent, and a conditional one whose post-condition
already holds counts as applied) exactly as the writer would have, and publishes what applied.

An event names the operation it describes (`OutboundEvent.op`), or none when it describes the whole
change. A conditional operation that loses (its compare-and-set fails) either stops the change there
(the default: the operations after it are not applied) or, in a `partial` commit, is skipped while the
rest go on. Either way the events published are exactly those of the operations that applied, plus
the whole-change events if every operation applied; an intent is never abandoned halfway with its
applied part unannounced. Hence an event is published if and only if its change is stored, at least
once; consumers deduplicate by envelope id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from services.core.errors import ConflictError
from services.core.events.log import EventLog
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index, delete_each

log = logging.getLogger(__name__)

OUTBOX = "outbox"
LEASES = "leases"


@dataclass(frozen=True, slots=True)
class Put:
    """Insert or replace a whole document. Always applicable."""

    collection: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Insert:
    """Create a document that must not exist yet (compare-and-set against absence)."""

    collection: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Create:
    """Create a document unless one with its `_id` exists, which is then left as it is. Always
    applicable. For content-addressed documents (same `_id`, same content): a re-push writes nothing.
    `absent`: the writer has just seen the document missing, so it inserts without reading first (not
    stored in the intent: a recovery reads first)."""

    collection: str
    doc: Mapping[str, Any]
    absent: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    """Set fields on one document if `expect` holds (compare-and-set)."""

    collection: str
    key: str
    changes: Mapping[str, Any]
    expect: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one document if `expect` holds. Deleting an absent document succeeds."""

    collection: str
    key: str
    expect: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Touch:
    """Set `changes` on the document with `doc`'s `_id`, creating it as `doc` + `changes` if it is absent.
    Always applicable. A push touches its manifest after moving tags to it, so that a concurrent delete
    conditional on the manifest's previous `changes` fails instead of leaving the tag dangling."""

    collection: str
    doc: Mapping[str, Any]
    changes: Mapping[str, Any]


Operation = Put | Insert | Create | Update | Delete | Touch


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    topic: str
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    op: int | None = None
    """The index of the operation this event describes (published only if that one applied); None: the
    whole change (published only if every operation applied)."""


@dataclass(frozen=True, slots=True)
class Committed:
    """What a commit applied: `applied[i]` for each operation (False also for those never tried)."""

    applied: tuple[bool, ...]

    @property
    def complete(self) -> bool:
        return all(self.applied)


def _encode_op(op: Operation) -> dict[str, Any]:
    match op:
        case Put(collection, doc):
            return {"op": "put", "c": collection, "doc": dict(doc)}
        case Insert(collection, doc):
            return {"op": "insert", "c": collection, "doc": dict(doc)}
        case Create(collection, doc, _):
            return {"op": "create", "c": collection, "doc": dict(doc)}
        case Update(collection, key, changes, expect):
            return {
                "op": "update",
                "c": collection,
                "key": key,
                "set": dict(changes),
                "expect": dict(expect) if expect is not None else None,
            }
        case Delete(collection, key, expect):
            return {"op": "delete", "c": collection, "key": key, "expect": dict(expect) if expect is not None else None}
        case Touch(collection, doc, changes):
            return {"op": "touch", "c": collection, "doc": dict(doc), "set": dict(changes)}
    raise TypeError(f"unknown operation {op!r}")


def _decode_op(data: Mapping[str, Any]) -> Operation:
    kind = data["op"]
    if kind == "put":
        return Put(data["c"], data["doc"])
    if kind == "insert":
        return Insert(data["c"], data["doc"])
    if kind == "create":
        return Create(data["c"], data["doc"])
    if kind == "update":
        return Update(data["c"], data["key"], data["set"], data.get("expect"))
    if kind == "delete":
        return Delete(data["c"], data["key"], data.get("expect"))
    if kind == "touch":
        return Touch(data["c"], data["doc"], data["set"])
    raise ValueError(f"unknown outbox operation {kind!r}")


def _holds(doc: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> bool:
    return doc is not None and all(doc.get(k) == v for k, v in fields.items())


async def apply_operation(docs: DocumentStore, op: Operation) -> bool:
    """Apply one operation idempotently. False when a condition fails and its effect is absent."""
    match op:
        case Put(collection, doc):
            await docs.put(collection, doc)
            return True
        case Insert(collection, doc):
            try:
                await docs.insert(collection, doc)
                return True
            except DuplicateKeyError:
                return _holds(await docs.get(collection, doc["_id"]), doc)
        case Create(collection, doc, absent):
            # Read first (unless just seen absent): on FerretDB even a refused insert takes the write lock.
            if absent or await docs.get(collection, doc["_id"]) is None:
                with contextlib.suppress(DuplicateKeyError):
                    await docs.insert(collection, doc)
            return True
        case Update(collection, key, changes, expect):
            if await docs.update(collection, key, changes, expect=expect):
                return True
            return _holds(await docs.get(collection, key), changes)
        case Delete(collection, key, expect):
            if await docs.delete(collection, key, expect=expect):
                return True
            return await docs.get(collection, key) is None
        case Touch(collection, doc, changes):
            if not await docs.update(collection, doc["_id"], changes):
                with contextlib.suppress(DuplicateKeyError):
                    await docs.insert(collection, {**doc, **changes})
                    return True
                await docs.update(collection, doc["_id"], changes)  # inserted by another writer meanwhile
            return True
    raise TypeError(f"unknown operation {op!r}")


async def apply_operations(docs: DocumentStore, ops: Sequence[Operation], *, partial: bool,
                           concurrency: int | None = None) -> Committed:
    """Apply `ops` in order. A losing conditional operation stops the rest, or with `partial` is skipped.

    In a partial change, consecutive deletes of distinct documents of one collection are independent of
    each other, so they go together (`delete_each`, `concurrency` at a time, by default _DELETES_IN_FLIGHT:
    few commands for a GC run's hundreds of links)."""
    applied: list[bool] = []
    i = 0
    while i < len(ops):
        run = _delete_run(ops, i) if partial else 1
        if run > 1:
            applied += await _apply_deletes(docs, cast("list[Delete]", ops[i : i + run]),
                                            concurrency or _DELETES_IN_FLIGHT)
            i += run
            continue
        ok = await apply_operation(docs, ops[i])
        applied.append(ok)
        i += 1
        if not ok and not partial:
            break
    return Committed(tuple(applied) + (False,) * (len(ops) - len(applied)))


OWN_EVENTS_KEPT = 50_000
"""Event ids `Outbox.committed_here` remembers (~5 MiB)."""

_DELETES_IN_FLIGHT = 16
"""Deletes of one partial change in flight at once (a GC run sends several changes at once too)."""


def _delete_run(ops: Sequence[Operation], start: int) -> int:
    """How many operations from `start` are deletes of distinct keys of one collection."""
    first = ops[start]
    if not isinstance(first, Delete):
        return 1
    keys = {first.key}
    end = start + 1
    while end < len(ops):
        op = ops[end]
        if not isinstance(op, Delete) or op.collection != first.collection or op.key in keys:
            break
        keys.add(op.key)
        end += 1
    return end - start


async def _apply_deletes(docs: DocumentStore, deletes: list[Delete], concurrency: int) -> list[bool]:
    collection = deletes[0].collection
    gone = await delete_each(docs, collection, [(d.key, d.expect) for d in deletes], concurrency=concurrency)
    # As apply_operation: a delete that did not match holds if the document is absent anyway (a replay).
    left = await docs.get_many(collection, [d.key for d in deletes if d.key not in gone])
    return [d.key in gone or d.key not in left for d in deletes]


def _unpublished(event_ops: Sequence[int | None], committed: Committed) -> list[int]:
    """Indexes of the events that must not go out: their operation (or, for a whole-change event, some
    operation) did not apply."""
    return [
        i
        for i, op in enumerate(event_ops)
        if (op is None and not committed.complete) or (op is not None and not committed.applied[op])
    ]


def _ready(skip: Sequence[int]) -> dict[str, Any]:
    return {"state": "ready", "skip": list(skip)} if skip else {"state": "ready"}


def _sequence() -> str:
    # Sortable across processes: wall-clock nanoseconds, then a random tiebreak.
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


class Outbox:
    """Writes changes together with their events (see the module docstring)."""

    def __init__(self, docs: DocumentStore) -> None:
        self._docs = docs
        self._listeners: list[Callable[[], None]] = []
        self._applied: list[Callable[[Sequence[Operation], bool], None]] = []
        # Ids of the events this process's commits stored, newest last (bounded): a follower of the event log
        # skips what `on_applied` listeners already saw here (`committed_here`).
        self._own_events: OrderedDict[bytes, None] = OrderedDict()
        self._relay: OutboxRelay | None = None

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each commit (the local relay wakes up instead of polling). A relay's
        `wake` also makes that relay follow this outbox (`OutboxRelay.follow`)."""
        self._listeners.append(listener)
        relay = getattr(listener, "__self__", None)
        if isinstance(relay, OutboxRelay) and getattr(listener, "__func__", None) is OutboxRelay.wake:
            self._relay = relay

    def on_applied(self, listener: Callable[[Sequence[Operation], bool], None]) -> None:
        """Call `listener(ops, certain)` with the operations each commit of this process applied, before the
        commit returns; `certain` is False when the commit failed midway, and `ops` are then all of them (it may
        have applied any). Caches of what the operations change update or drop it there; other processes'
        commits reach them as events."""
        self._applied.append(listener)

    def committed_here(self, event_id: str) -> bool:
        """Whether a recent commit of this process stored the event with this envelope id (its `on_applied`
        listeners saw its operations then). False for events older than the last `OWN_EVENTS_KEPT`."""
        return event_id.encode() in self._own_events

    def _remember_events(self, events: Sequence[OutboundEvent]) -> None:
        for e in events:
            event_id = dict(e.headers).get("event-id")
            if event_id is not None:
                self._own_events[event_id] = None
        while len(self._own_events) > OWN_EVENTS_KEPT:
            self._own_events.popitem(last=False)

    def _tell_applied(self, ops: Sequence[Operation], *, certain: bool) -> None:
        for listener in self._applied:
            try:
                listener(ops, certain)
            except Exception:  # a cache's bug must not fail a stored change
                log.exception("outbox listener failed")

    def _follow(self, relay: OutboxRelay) -> None:
        self._relay = relay
        if relay.wake not in self._listeners:
            self._listeners.append(relay.wake)

    async def setup(self) -> None:
        await self._docs.ensure_collection(OUTBOX, [Index(("seq",)), Index(("state",))])
        await self._docs.ensure_collection(LEASES)

    async def commit(
        self, ops: Sequence[Operation], events: Sequence[OutboundEvent], *, partial: bool = False,
        concurrency: int | None = None,
    ) -> Committed:
        """Store the change and its events (module docstring). Without `partial`, ConflictError when a
        compare-and-set lost a race: the operations after it are not applied, and only the events of
        those before it go out (every operation sequence is designed to tolerate such a prefix). With
        `partial`, losing operations are skipped and the result tells which applied; `concurrency` bounds
        the independent deletes in flight (apply_operations)."""
        for e in events:
            if e.op is not None and not 0 <= e.op < len(ops):
                raise ValueError(f"event for operation {e.op} of a change with {len(ops)} operations")
        intent_id = uuid.uuid4().hex
        relay = self._relay
        if relay is not None:
            relay._writing(intent_id)
        try:
            await self._docs.insert(
                OUTBOX,
                {
                    "_id": intent_id,
                    "seq": _sequence(),
                    "state": "pending",
                    "created": time.time(),
                    "partial": partial,
                    "ops": [_encode_op(op) for op in ops],
                    "events": [
                        {
                            "topic": e.topic,
                            "key": e.key,
                            "value": e.value,
                            "headers": [{"k": k, "v": v} for k, v in e.headers],
                            "op": e.op,
                        }
                        for e in events
                    ],
                },
            )
            try:
                committed = await apply_operations(self._docs, ops, partial=partial, concurrency=concurrency)
            except BaseException:
                self._tell_applied(ops, certain=False)
                raise
            self._tell_applied([op for op, ok in zip(ops, committed.applied, strict=True) if ok], certain=True)
            self._remember_events(events)
            skip = _unpublished([e.op for e in events], committed)
            if len(skip) == len(events):
                await self._docs.delete(OUTBOX, intent_id)
                if relay is not None:
                    relay._writers.discard(intent_id)
            else:
                if relay is None or not relay._settled_here(intent_id, skip):
                    # Only this writer changes its pending intent (the relay waits `stale_after` before it
                    # touches one, and then writes the same value), so the store need not serialise this.
                    await self._docs.update(OUTBOX, intent_id, _ready(skip), uncontended=True)
                for listener in self._listeners:
                    listener()
        except BaseException as exc:
            if relay is not None:
                relay._abandoned(intent_id)  # left pending: the relay recovers it once stale
                if isinstance(exc, Exception):
                    # The relay is held up behind this intent: the flips it keeps in memory become durable.
                    with contextlib.suppress(Exception):
                        await relay._write_settled()
            raise
        if not partial and not committed.complete:
            raise ConflictError("a concurrent change won; retry the request")
        return committed


@dataclass
class RelayStats:
    published: int = 0
    dropped: int = 0
    recovered: int = 0
    failures: int = 0
    pending: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class OutboxRelay:
    """Publishes committed outbox intents in order; one relay at a time holds the lease."""

    def __init__(
        self,
        docs: DocumentStore,
        events: EventLog,
        *,
        stale_after: float = 30.0,
        lease_seconds: float = 15.0,
        poll_interval: float = 0.2,
        batch: int = 100,
        on_published: Callable[[str], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self._docs = docs
        self._events = events
        self._stale_after = stale_after
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._batch = batch
        self._on_published = on_published
        self._on_pending = on_pending
        self._wake = asyncio.Event()
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held_until = 0.0  # when the lease this relay last wrote expires (0: not held)
        self._running = False
        # Intents of this process's writers (`follow`): being written; finished, with their skip lists and
        # since when; abandoned (the writer failed midway: pending until recovered).
        self._writers: set[str] = set()
        self._settled: dict[str, tuple[list[int], float]] = {}
        self._abandoned_ids: set[str] = set()
        self._behind_other = False  # the last drain waited on a pending intent of another process
        self.stats = RelayStats()

    def wake(self) -> None:
        """Called after a local commit so the relay publishes without waiting for its poll."""
        self._wake.set()

    def follow(self, outbox: Outbox) -> None:
        """Publish `outbox`'s commits promptly (woken by each), and take their `ready` flips in memory
        while this relay runs and holds the lease (module docstring)."""
        outbox._follow(self)

    def _settled_here(self, intent_id: str, skip: Sequence[int]) -> bool:
        """A writer of this process finished `intent_id`: keep its flip in memory if this relay will publish
        it while still holding the lease; False means the writer must write the flip."""
        self._writers.discard(intent_id)
        margin = self._lease_seconds / 4
        if (
            not self._running
            or time.time() > self._held_until - margin
            or len(self._settled) >= 10 * self._batch
            # Waiting on an intent this relay cannot settle: flips in memory would not go out promptly.
            or self._abandoned_ids
            or self._behind_other
        ):
            return False
        self._settled[intent_id] = (list(skip), time.monotonic())
        return True

    def _writing(self, intent_id: str) -> None:
        self._writers.add(intent_id)

    def _abandoned(self, intent_id: str) -> None:
        self._writers.discard(intent_id)
        self._abandoned_ids.add(intent_id)

    async def _write_settled(self, *, older_than: float = 0.0) -> None:
        """Write the flips kept in memory (this relay cannot publish them promptly, or stops)."""
        limit = time.monotonic() - older_than
        for intent_id, (skip, since) in list(self._settled.items()):
            if since <= limit:
                # An intent already published and deleted matches nothing: harmless.
                await self._docs.update(OUTBOX, intent_id, _ready(skip), uncontended=True)
                self._settled.pop(intent_id, None)

    async def _hold_lease(self) -> bool:
        now = time.time()
        if now < self._held_until - self._lease_seconds / 2:
            # Renewed recently, and nobody takes a lease before it expires: no read, no write per
            # wake-up (on FerretDB each costs about what publishing an event does).
            return True
        lease = await self._docs.get(LEASES, "outbox-relay")
        expires = now + self._lease_seconds
        doc = {"owner": self._owner, "expires": expires}
        held = False
        if self._settled and now > self._held_until - self._lease_seconds / 4:
            # About to renew late (or to find the lease taken): another relay may publish from now on.
            await self._write_settled()
        if lease is None:
            try:
                await self._docs.insert(LEASES, {"_id": "outbox-relay", **doc})
                held = True
            except DuplicateKeyError:
                held = False
        elif lease["owner"] == self._owner or lease["expires"] < now:
            held = await self._docs.update(
                LEASES, "outbox-relay", doc, expect={"owner": lease["owner"], "expires": lease["expires"]}
            )
        self._held_until = expires if held else 0.0
        if not held:
            await self._write_settled()
        return held

    async def drain_once(self) -> int:
        """Publish what is ready (and recover stale intents). Returns how many intents were settled.
        Raises when the event log is unavailable; nothing is lost, the next call retries."""
        settled = 0
        now = time.time()
        intents = await self._docs.find(OUTBOX, order_by="seq", limit=self._batch)
        self.stats.pending = len(intents)
        if self._on_pending is not None:
            self._on_pending(len(intents))
        if len(intents) < self._batch:
            self._abandoned_ids &= {intent["_id"] for intent in intents}  # the others are settled
        self._behind_other = False
        done: list[str] = []  # published, deleted together at the end (also when publishing fails)
        try:
            for intent in intents:
                if intent["state"] == "pending":
                    local = self._settled.get(intent["_id"])
                    if local is not None:
                        intent["skip"] = local[0]  # its writer, in this process, has finished it
                    elif now - intent["created"] < self._stale_after:
                        # A live writer may still be applying it; later intents wait so order holds.
                        self._behind_other = intent["_id"] not in self._writers
                        break
                    elif not await self._recover(intent):
                        settled += 1
                        continue
                skip = set(intent.get("skip") or ())
                for index, event in enumerate(intent["events"]):
                    if index in skip:
                        continue
                    await self._events.publish(
                        event["topic"],
                        event["key"],
                        event["value"],
                        headers=[(h["k"], h["v"]) for h in event["headers"]],
                    )
                    if self._on_published is not None:
                        self._on_published(event["topic"])
                    self.stats.published += 1
                done.append(intent["_id"])
                settled += 1
        finally:
            if done:
                await self._docs.delete_many(OUTBOX, done)
                for intent_id in done:
                    self._settled.pop(intent_id, None)
                    self._abandoned_ids.discard(intent_id)
        return settled

    async def _recover(self, intent: dict[str, Any]) -> bool:
        """Finish a dead writer's intent as the writer would have (Outbox.commit): re-apply its operations,
        and keep the events of what applied. False (and the intent is dropped) if nothing of it applies."""
        ops = [_decode_op(encoded) for encoded in intent["ops"]]
        committed = await apply_operations(self._docs, ops, partial=bool(intent.get("partial")))
        skip = _unpublished([e.get("op") for e in intent["events"]], committed)
        if len(skip) == len(intent["events"]):
            if not committed.complete:
                log.warning("dropping outbox intent %s: its change can no longer apply", intent["_id"])
                self.stats.dropped += 1
            await self._docs.delete(OUTBOX, intent["_id"])
            return False
        if not committed.complete:
            log.warning("outbox intent %s applied in part; publishing the events of what applied", intent["_id"])
        await self._docs.update(OUTBOX, intent["_id"], {"state": "ready", "skip": skip})
        intent["skip"] = skip
        self.stats.recovered += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; backs off while the event log is down."""
        self._running = True
        try:
            await self._run(stop)
        finally:
            self._running = False
            with contextlib.suppress(Exception):
                await self._write_settled()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = self._poll_interval
        while not stop.is_set():
            self._wake.clear()
            try:
                if await self._hold_lease():
                    # A short batch means the log is drained (or waits on a live writer's intent);
                    # the next commit wakes the relay, so no empty re-read follows every batch.
                    while await self.drain_once() >= self._batch:
                        pass
                    if self._settled:
                        # Held up behind another writer's intent: flips kept long enough become durable.
                        await self._write_settled(older_than=1.0)
                backoff = self._poll_interval
            except Exception as exc:  # keep relaying; the intents are durable
                self.stats.failures += 1
                self.stats.last_error = str(exc)[:500]
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                backoff = min(backoff * 2, 10.0)
                with contextlib.suppress(Exception):
                    # Not published promptly: make the flips durable, in case this process dies meanwhile.
                    await self._write_settled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    stop_task = asyncio.ensure_future(stop.wait())
                    wake_task = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({stop_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop_task.cancel()
                        wake_task.cancel()
