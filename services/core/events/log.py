"""EventLog port: durable, keyed, partition-ordered topics with consumer groups (at-least-once)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int = 0
    offset: int = 0


@dataclass(slots=True)
class Delivery:
    """One record handed to a consumer; `ack` commits it (and every earlier record of its partition)."""

    record: Record
    _subscription: Subscription = field(repr=False)

    async def ack(self) -> None:
        await self._subscription.commit(self.record)


@runtime_checkable
class Subscription(Protocol):
    """An open membership of a consumer group on one topic; iterate it for deliveries."""

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def commit(self, record: Record) -> None:
        """Mark `record` and everything before it in its partition consumed by this group."""
        ...

    async def close(self) -> None:
        """Leave the group; unacked records are redelivered to the next member."""
        ...


@runtime_checkable
class EventLog(Protocol):
    async def publish(self, topic: str, key: str, value: bytes, *, headers: Headers = ()) -> None:
        """Append a record. Durable when it returns. Records with the same key keep their order."""
        ...

    async def subscribe(self, topic: str, group: str, *, from_end: bool = False) -> Subscription:
        """Join `group` on `topic`. Each group sees every record at least once; a record not acked
        before its consumer dies or closes is delivered again. New groups start from the beginning.

        `from_end`: for a follower that only drops in-process caches, which are empty when it starts, so the
        records before its start are of no use to it (replaying months of them would delay the new ones).
        The subscription reads every partition of the topic by itself (it shares none with other members of
        `group`), starting at each partition's head as it is when `subscribe` returns: it gets every record
        published after that, none before, whatever was committed. Nothing is committed (`ack` is a no-op),
        so a new subscription, after a restart too, starts at the head again; the records published while
        none was open are never delivered, which a follower must allow for (drop its caches when it
        subscribes). Partitions added to the topic later are not read.
        """
        ...

    async def ping(self) -> None:
        """Raise if the backend is unreachable (readiness)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LagReporting(Protocol):
    """Optional capability of a Subscription: how far behind the log head each owned partition is."""

    async def lag(self) -> dict[int, int]:
        """Records not yet consumed (head - committed offset) per owned partition."""
        ...


@runtime_checkable
class TopicAdmin(Protocol):
    """Optional capability of an EventLog: create and remove topics explicitly."""

    async def ensure_topics(self, names: Sequence[str], *, partitions: int | None = None) -> None:
        """Create missing topics. Idempotent."""
        ...

    async def delete_topics(self, names: Sequence[str]) -> None:
        """Remove topics and their records. Idempotent."""
        ...
