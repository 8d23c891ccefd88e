"""KafkaEventLog: the distributed assembly's EventLog on Apache Kafka (aiokafka).

Publishing goes through one shared idempotent producer (acks=all), so a publish that returned is on
every in-sync replica and a producer retry never duplicates or reorders a key's records. The record
key is the repository, and Kafka's default partitioner keeps one key on one partition.

Each subscription is its own consumer in the Kafka consumer group, without auto-commit: `ack`
commits exactly what the handler finished. After a rebalance (a member joined, left or died) the new
owner of a partition resumes from the committed offset, so unacked records are delivered again.

A subscription `from_end` is no group member: it is assigned every partition by hand and positioned at their
high watermarks before `subscribe` returns, and it commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.admin import DeleteGroupsRequest

from services.core.events.log import Delivery, Headers, Record
from services.core.settings import KafkaEventSettings

__all__ = ["KafkaEventLog", "KafkaSubscription"]

log = logging.getLogger(__name__)

# DeleteGroups' answer for a group that does not exist: already as the caller wants it.
_GROUP_ID_NOT_FOUND = 69


class KafkaEventLog:
    """EventLog on a Kafka cluster. Connects lazily: constructing it touches no network."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "hanzo-registry",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        request_timeout_ms: int = 30_000,
        producer_request_timeout_ms: int | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._request_timeout_ms = request_timeout_ms
        # Connecting and the producer's requests (publish, the readiness probe): short, so an unreachable
        # cluster fails fast; consumers and topic administration keep `request_timeout_ms` (group joins and
        # CreateTopics wait long).
        self._producer_request_timeout_ms = producer_request_timeout_ms or request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._subscriptions: set[KafkaSubscription] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: KafkaEventSettings) -> KafkaEventLog:
        return cls(
            settings.bootstrap_servers,
            client_id=settings.client_id,
            producer_request_timeout_ms=round(settings.request_timeout_seconds * 1000),
        )

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._closed:
            raise RuntimeError("KafkaEventLog is closed")
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=True,
                    request_timeout_ms=self._producer_request_timeout_ms,
                )
                try:
                    await producer.start()
                except BaseException:
                    # A producer that failed to start cannot be restarted; the next call makes a new one.
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    # -- EventLog -------------------------------------------------------------------------------

    async def publish(self, topic: str, key: str, value: bytes, *, headers: Headers = ()) -> None:
        """Append a record; returns once every in-sync replica has it. Raises KafkaError when the
        cluster does not take it within the request timeout. Not idempotent across calls."""
        producer = await self._started_producer()
        await producer.send_and_wait(topic, value=value, key=key.encode(), headers=list(headers))

    async def subscribe(self, topic: str, group: str, *, from_end: bool = False) -> KafkaSubscription:
        """Join `group` on `topic` (the group's partitions are assigned on the first read); with `from_end`,
        read every partition from its current head instead (EventLog.subscribe), positioned on return."""
        if self._closed:
            raise RuntimeError("KafkaEventLog is closed")
        if from_end:
            return await self._subscribe_at_end(topic, group)
        consumer = self._consumer(
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            max_poll_interval_ms=self._max_poll_interval_ms,
        )
        sub = KafkaSubscription(self, consumer, topic=topic, group=group)
        consumer.subscribe([topic], listener=sub._listener)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._subscriptions.add(sub)
        return sub

    def _consumer(self, **options: object) -> AIOKafkaConsumer:
        # Never auto-commit: `ack` commits exactly what a handler finished.
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_auto_commit=False,
            request_timeout_ms=self._request_timeout_ms,
            **options,
        )

    async def _subscribe_at_end(self, topic: str, group: str) -> KafkaSubscription:
        # Assigned by hand, not by the group: a group join waits for a rebalance (seconds), and the
        # position a group member gets is only resolved at its first fetch, so a record published between
        # `subscribe` returning and that fetch would be skipped. Without a group_id no group is created
        # on the cluster (one per replica start would pile up) and nothing is committed.
        partitions = await (await self._started_producer()).partitions_for(topic)
        consumer = self._consumer(group_id=None, auto_offset_reset="latest")
        try:
            await consumer.start()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            # The high watermark: every acks=all publish that returned before is below it.
            heads = await consumer.end_offsets(tps)
            consumer.assign(tps)
            # No await between assign and seek: the fetcher must not resolve a position of its own first.
            for tp in tps:
                consumer.seek(tp, heads[tp])
        except BaseException:
            await consumer.stop()
            raise
        sub = KafkaSubscription(self, consumer, topic=topic, group=group, from_end=True)
        self._subscriptions.add(sub)
        return sub

    async def ping(self, *, timeout: float = 5.0) -> None:
        """Fetch the cluster metadata; raises TimeoutError or KafkaError when the cluster is away."""
        async with asyncio.timeout(timeout):
            producer = await self._started_producer()
            await producer.client.fetch_all_metadata()

    async def close(self) -> None:
        """Close every subscription (leaving their groups) and the producer. Idempotent."""
        if self._closed:
            return
        for sub in list(self._subscriptions):
            await sub.close()
        self._closed = True
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # -- topic administration -------------------------------------------------------------------

    async def _admin(self) -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            request_timeout_ms=self._request_timeout_ms,
        )
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        return admin

    async def ensure_topics(
        self,
        names: Iterable[str],
        *,
        partitions: int | None = None,
        replication_factor: int = 1,
        timeout: float = 30.0,
    ) -> None:
        """Create the topics that do not exist yet (default 3 partitions) and wait until every
        partition has a leader. Idempotent: existing topics are left as they are."""
        topics = list(names)
        admin = await self._admin()
        try:
            async with asyncio.timeout(timeout):
                response = await admin.create_topics(
                    [NewTopic(name, partitions or 3, replication_factor) for name in topics]
                )
                for topic, code, *_ in response.topic_errors:
                    if code and code != TopicAlreadyExistsError.errno:
                        raise for_code(code)(f"cannot create topic {topic}")
                # CreateTopics returns before the partitions have leaders; a consumer that joins then
                # may see no partitions and sit idle until its next metadata refresh.
                await _poll_until(lambda: _all_have_leaders(admin, topics))
        finally:
            await admin.close()

    async def delete_topics(self, names: Iterable[str], *, timeout: float = 30.0) -> None:
        """Delete topics (and with them the groups' committed offsets on them) and wait until the
        cluster no longer lists them. Idempotent."""
        topics = list(names)
        admin = await self._admin()
        try:
            async with asyncio.timeout(timeout):
                response = await admin.delete_topics(topics)
                for topic, code in response.topic_error_codes:
                    if code and code != UnknownTopicOrPartitionError.errno:
                        raise for_code(code)(f"cannot delete topic {topic}")

                async def gone() -> bool:
                    return not set(topics) & set(await admin.list_topics())

                await _poll_until(gone)
        finally:
            await admin.close()

    async def list_topics(self) -> set[str]:
        """Every topic of the cluster, internal ones included."""
        admin = await self._admin()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    async def delete_groups(self, groups: Iterable[str]) -> None:
        """Delete consumer groups that have no members left. Idempotent."""
        admin = await self._admin()
        try:
            for group in groups:
                node = await admin.find_coordinator(group)
                # aiokafka's admin client has no delete_consumer_groups; the request itself is public.
                response = await admin._send_request(DeleteGroupsRequest([group]), node)
                for name, code in response.results:
                    if code and code != _GROUP_ID_NOT_FOUND:
                        raise for_code(code)(f"cannot delete consumer group {name}")
        finally:
            await admin.close()

    async def list_groups(self) -> set[str]:
        """Every consumer group the cluster knows."""
        admin = await self._admin()
        try:
            return {str(group[0]) for group in await admin.list_consumer_groups()}
        finally:
            await admin.close()


async def _poll_until(check: Callable[[], Awaitable[bool]], *, interval: float = 0.1) -> None:
    # Polled: the cluster cannot tell a client when its metadata changes.
    while True:
        if await check():
            return
        await asyncio.sleep(interval)


async def _all_have_leaders(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> bool:
    described = await admin.describe_topics(list(topics))
    return len(described) == len(topics) and all(
        not t["error_code"] and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        for t in described
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self._subscription._committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.debug("group %s member got %s", self._subscription.group, sorted(assigned))


class KafkaSubscription:
    """One consumer of a Kafka consumer group on one topic; iterate it for deliveries."""

    def __init__(self, log: KafkaEventLog, consumer: AIOKafkaConsumer, *, topic: str, group: str,
                 from_end: bool = False) -> None:
        self._log = log
        self._consumer = consumer
        self.topic = topic
        self.group = group
        self.from_end = from_end
        self._listener = _Listener(self)
        # Highest offset this member committed per partition: skips acks that would move it back.
        self._committed: dict[TopicPartition, int] = {}
        self._closed = False

    def __aiter__(self) -> KafkaSubscription:
        return self

    async def __anext__(self) -> Delivery:
        if self._closed:
            raise StopAsyncIteration
        try:
            message = await self._consumer.getone()
        except ConsumerStoppedError:
            raise StopAsyncIteration from None
        record = Record(
            topic=message.topic,
            key=message.key.decode() if message.key is not None else "",
            value=message.value if message.value is not None else b"",
            headers=tuple((name, bytes(value)) for name, value in message.headers),
            partition=message.partition,
            offset=message.offset,
        )
        return Delivery(record=record, _subscription=self)

    async def commit(self, record: Record) -> None:
        """Commit `record` and everything before it in its partition. Idempotent. When the
        partition has meanwhile moved to another member, the commit is dropped: the new owner
        resumes from the last committed offset and delivers the record again (at-least-once).
        After `close` an ack is dropped the same way: a consumer that left its group cannot commit."""
        if record.topic != self.topic:
            raise ValueError(f"record of topic {record.topic!r} committed on {self.topic!r}")
        if self._closed or self.from_end:
            return
        tp = TopicPartition(record.topic, record.partition)
        offset = record.offset + 1
        if self._committed.get(tp, -1) >= offset:
            return
        try:
            await self._consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:
            log.info("commit of %s@%d dropped after a rebalance: %s", tp, record.offset, exc)
            return
        self._committed[tp] = offset

    async def lag(self) -> dict[int, int]:
        """Records behind the partition's high watermark, per assigned partition (LagReporting)."""
        lags: dict[int, int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            committed = self._committed.get(tp)
            if self.from_end:  # nothing is committed: behind the head by what it has not read yet
                committed = await self._consumer.position(tp)
            elif committed is None:
                committed = await self._consumer.committed(tp) or 0
            lags[tp.partition] = max(0, high - committed)
        return lags

    async def close(self) -> None:
        """Leave the group; the partitions' next owners resume from the committed offsets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._log._subscriptions.discard(self)
        try:
            await self._consumer.stop()
        except KafkaError as exc:
            log.warning("consumer of group %s did not stop cleanly: %s", self.group, exc)
