"""Contract suite of the EventLog port, run by every adapter: local SQLite log and Kafka (real broker)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.core.events.kafka import KafkaEventLog
from services.core.events.local import LocalEventLog
from services.core.events.log import Delivery, EventLog, Subscription
from tests.conftest import infra

ROOT = Path(__file__).resolve().parents[2]
LOCAL_LEASE_SECONDS = 1.5
TIMEOUT = 60.0  # generous for Kafka rebalances, but a broken consumer fails instead of hanging

AnyLog = LocalEventLog | KafkaEventLog


@dataclass
class Harness:
    """Builds adapter instances on one backing store and remembers what to clean up."""

    kind: str
    factory: Callable[[], AnyLog]
    child_config: dict[str, Any]
    logs: list[AnyLog] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def log(self) -> AnyLog:
        """A fresh instance of the adapter on the same store (a "process" of its own)."""
        instance = self.factory()
        self.logs.append(instance)
        return instance

    async def topic(self) -> str:
        name = f"test-eventlog-{uuid.uuid4().hex[:12]}"
        self.topics.append(name)
        admin = self.factory()
        try:
            await admin.ensure_topics([name])
        finally:
            await admin.close()
        return name

    def group(self) -> str:
        name = f"test-eventlog-group-{uuid.uuid4().hex[:12]}"
        self.groups.append(name)
        return name


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    factory: Callable[[], AnyLog]
    if request.param == "local":
        path = tmp_path / "events.db"

        def factory() -> AnyLog:
            return LocalEventLog(path, partitions=4, poll_interval=0.02, lease_seconds=LOCAL_LEASE_SECONDS)

        child = {"kind": "local", "path": str(path), "lease": LOCAL_LEASE_SECONDS}
    else:
        servers = infra("HANZO_TEST_KAFKA")

        def factory() -> AnyLog:
            return KafkaEventLog(servers, client_id="hanzo-registry-test")

        child = {"kind": "kafka", "servers": servers}

    harness = Harness(kind=request.param, factory=factory, child_config=child)
    yield harness

    for instance in harness.logs:
        await instance.close()
    admin = factory()
    try:
        if isinstance(admin, KafkaEventLog):
            await admin.delete_groups(harness.groups)
            assert not await admin.list_groups() & set(harness.groups), "consumer groups left behind"
        await admin.delete_topics(harness.topics)
        assert not await admin.list_topics() & set(harness.topics), "topics left behind"
    finally:
        await admin.close()
    if request.param == "local":
        with sqlite3.connect(tmp_path / "events.db") as conn:
            for table in ("topics", "heads", "records", "offsets", "members", "leases"):
                (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                assert count == 0, f"{table} has rows left behind"


async def take(sub: Subscription, n: int, *, timeout: float = TIMEOUT) -> list[Delivery]:
    """The next `n` deliveries; fails (TimeoutError) if they do not come."""
    taken: list[Delivery] = []
    if n == 0:
        return taken
    async with asyncio.timeout(timeout):
        async for delivery in sub:
            taken.append(delivery)
            if len(taken) == n:
                break
    return taken


async def nothing_more(sub: Subscription, *, seconds: float = 2.0) -> None:
    """Assert that nothing is delivered for a while."""
    extra = []
    try:
        async with asyncio.timeout(seconds):
            async for delivery in sub:
                extra.append(delivery.record.value)
    except TimeoutError:
        pass
    assert extra == []


def values(deliveries: list[Delivery]) -> list[str]:
    return [d.record.value.decode() for d in deliveries]


async def ack_all(deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        await delivery.ack()


# -- the contract --------------------------------------------------------------------------------


async def test_round_trip_with_headers(h: Harness) -> None:
    log = h.log()
    assert isinstance(log, EventLog)
    await log.ping()
    topic = await h.topic()
    await log.ensure_topics([topic])  # idempotent

    headers = [("event-type", b"ManifestPushed"), ("traceparent", b"00-4bf92f3577b34da6-00f067aa-01")]
    await log.publish(topic, "library/alpine", b"\x00payload\xff", headers=headers)

    sub = await log.subscribe(topic, h.group())
    assert isinstance(sub, Subscription)
    [delivery] = await take(sub, 1)
    record = delivery.record
    assert (record.topic, record.key, record.value) == (topic, "library/alpine", b"\x00payload\xff")
    assert record.headers == tuple(headers)
    assert record.partition >= 0 and record.offset >= 0
    await delivery.ack()
    await delivery.ack()  # acking twice is harmless
    await sub.close()
    await sub.close()


async def test_records_of_one_key_keep_their_order(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    keys = ["team/alpha", "team/beta", "team/gamma"]
    for i in range(50):
        for key in keys:
            await log.publish(topic, key, f"{key}:{i}".encode())

    sub = await log.subscribe(topic, h.group())
    deliveries = await take(sub, 150)
    await ack_all(deliveries)

    by_key: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for d in deliveries:
        key, _, seq = d.record.value.decode().partition(":")
        assert key == d.record.key
        by_key[key].append(int(seq))
        partitions[key].add(d.record.partition)
    assert dict(by_key) == {key: list(range(50)) for key in keys}
    assert all(len(p) == 1 for p in partitions.values()), partitions
    await nothing_more(sub, seconds=1.0)


async def test_every_group_sees_every_record(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    expected = {f"repo-{i % 6}:{i}" for i in range(30)}
    for value in sorted(expected):
        await log.publish(topic, value.split(":")[0], value.encode())

    first, second = await log.subscribe(topic, h.group()), await log.subscribe(topic, h.group())
    got_first, got_second = await asyncio.gather(take(first, 30), take(second, 30))
    await asyncio.gather(ack_all(got_first), ack_all(got_second))
    assert set(values(got_first)) == expected
    assert set(values(got_second)) == expected


async def test_unacked_records_go_to_the_next_member(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    group = h.group()
    for i in range(20):
        await log.publish(topic, "org/model", f"{i}".encode())

    first = await log.subscribe(topic, group)
    taken = await take(first, 10)
    assert values(taken) == [str(i) for i in range(10)]
    await taken[4].ack()  # commits 0..4 without acking each; 5..9 stay unacked
    await first.close()

    second = await log.subscribe(topic, group)
    rest = await take(second, 15)
    assert values(rest) == [str(i) for i in range(5, 20)]
    await ack_all(rest)
    await second.close()

    third = await log.subscribe(topic, group)
    await nothing_more(third)


async def test_records_of_a_killed_member_are_redelivered(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    group = h.group()
    for i in range(12):
        await log.publish(topic, "org/crashy", f"{i}".encode())

    config = {**h.child_config, "topic": topic, "group": group, "take": 8, "ack": 3}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        json.dumps(config),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = await child.stdout.readline()
        assert json.loads(line) == [str(i) for i in range(8)]
    finally:
        # SIGKILL: no close, no LeaveGroup; the group finds out by lease/session expiry.
        child.send_signal(signal.SIGKILL)
        await child.wait()

    survivor = await log.subscribe(topic, group)
    rest = await take(survivor, 9)
    assert values(rest) == [str(i) for i in range(3, 12)]
    await ack_all(rest)


async def test_a_new_group_starts_from_the_earliest_record(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    for i in range(10):
        await log.publish(topic, "org/app", f"{i}".encode())
    old = await log.subscribe(topic, h.group())
    await ack_all(await take(old, 10))

    for i in range(10, 15):
        await log.publish(topic, "org/app", f"{i}".encode())
    assert values(await take(old, 5)) == [str(i) for i in range(10, 15)]

    new = await log.subscribe(topic, h.group())
    assert values(await take(new, 15)) == [str(i) for i in range(15)]


async def test_records_and_offsets_survive_a_restart(h: Harness) -> None:
    topic = await h.topic()
    group = h.group()
    before = h.log()
    for i in range(10):
        await before.publish(topic, "org/durable", f"{i}".encode())
    sub = await before.subscribe(topic, group)
    taken = await take(sub, 4)
    await taken[-1].ack()
    await before.close()  # closes the subscription too

    after = h.log()
    resumed = await after.subscribe(topic, group)
    assert values(await take(resumed, 6)) == [str(i) for i in range(4, 10)]
    fresh = await after.subscribe(topic, h.group())
    assert values(await take(fresh, 10)) == [str(i) for i in range(10)]


async def test_concurrent_publishers_lose_nothing(h: Harness) -> None:
    logs = [h.log(), h.log()]
    topic = await h.topic()
    keys = [f"ns/repo-{k}" for k in range(4)]

    async def publisher(k: int, key: str) -> None:
        # Alternate instances: sequential publishes keep their order even through two producers.
        for i in range(25):
            await logs[(k + i) % 2].publish(topic, key, f"{key}:{i}".encode())

    await asyncio.gather(*(publisher(k, key) for k, key in enumerate(keys)))

    sub = await logs[0].subscribe(topic, h.group())
    deliveries = await take(sub, 100)
    await ack_all(deliveries)
    by_key: dict[str, list[int]] = defaultdict(list)
    for d in deliveries:
        key, _, seq = d.record.value.decode().partition(":")
        by_key[key].append(int(seq))
    assert dict(by_key) == {key: list(range(25)) for key in keys}


async def test_members_of_a_group_share_the_records(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    group = h.group()
    expected = {f"repo-{i % 12}:{i}" for i in range(60)}
    for value in sorted(expected, key=lambda v: int(v.split(":")[1])):
        await log.publish(topic, value.split(":")[0], value.encode())

    members = [await log.subscribe(topic, group), await log.subscribe(topic, group)]
    seen: list[set[str]] = [set(), set()]
    done = asyncio.Event()

    async def consume(index: int) -> None:
        async for delivery in members[index]:
            seen[index].add(delivery.record.value.decode())
            await delivery.ack()
            if seen[0] | seen[1] >= expected:
                done.set()

    tasks = [asyncio.create_task(consume(i)) for i in range(2)]
    try:
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
    finally:
        for member in members:
            await member.close()
        await asyncio.gather(*tasks)  # closing ends the iteration
    assert seen[0] | seen[1] == expected


async def test_a_subscription_from_the_end_gets_only_what_is_published_after_it(h: Harness) -> None:
    topic = await h.topic()
    group = h.group()
    keys = [f"team/repo-{k}" for k in range(6)]  # spread over the partitions
    before = h.log()
    for i in range(30):
        await before.publish(topic, keys[i % 6], f"old-{i}".encode())
    # A group that committed part of the log: from the end ignores its offsets too.
    committed = await before.subscribe(topic, group)
    await ack_all(await take(committed, 30))
    await committed.close()
    for i in range(5):
        await before.publish(topic, keys[i], f"uncommitted-{i}".encode())

    tail = await before.subscribe(topic, group, from_end=True)
    assert isinstance(tail, Subscription)
    # Published at once, with no wait: the subscription is positioned when subscribe returns.
    for i in range(12):
        await before.publish(topic, keys[i % 6], f"new-{i}".encode())
    got = await take(tail, 12)
    assert sorted(values(got)) == sorted(f"new-{i}" for i in range(12))
    await ack_all(got)  # harmless, and commits nothing
    await nothing_more(tail, seconds=1.0)
    # Any other subscription keeps its semantics: a member of the same group resumes from its offsets.
    member = await before.subscribe(topic, group)
    rest = values(await take(member, 17))
    assert sorted(rest) == sorted([f"uncommitted-{i}" for i in range(5)] + [f"new-{i}" for i in range(12)])
    await member.close()
    await before.close()

    # A restart: what was published while none was open, and everything before, is not read again.
    for i in range(3):
        await h.log().publish(topic, keys[i], f"missed-{i}".encode())
    after = h.log()
    again = await after.subscribe(topic, group, from_end=True)
    for i in range(4):
        await after.publish(topic, keys[i], f"later-{i}".encode())
    assert sorted(values(await take(again, 4))) == [f"later-{i}" for i in range(4)]
    await nothing_more(again, seconds=1.0)


async def test_subscriptions_from_the_end_each_read_every_partition(h: Harness) -> None:
    log = h.log()
    topic = await h.topic()
    group = h.group()
    await log.publish(topic, "team/a", b"old")
    # Two in one group do not share the partitions: each cache follower must see every record.
    first = await log.subscribe(topic, group, from_end=True)
    second = await log.subscribe(topic, group, from_end=True)
    expected = {f"repo-{i}:{i}" for i in range(16)}
    for value in sorted(expected):
        await log.publish(topic, value.split(":")[0], value.encode())
    got_first, got_second = await asyncio.gather(take(first, 16), take(second, 16))
    assert set(values(got_first)) == expected and set(values(got_second)) == expected


@pytest.mark.parametrize("kind", ["local", "kafka"])
async def test_ping_raises_when_the_backend_is_unreachable(kind: str, tmp_path: Path) -> None:
    # Neither needs a server: nothing listens on port 1, and a file cannot be a directory.
    (tmp_path / "a-file").write_bytes(b"")
    log: AnyLog = (
        LocalEventLog(tmp_path / "a-file" / "events.db") if kind == "local" else KafkaEventLog("127.0.0.1:1")
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - each backend raises its own error type
            await log.ping()
    finally:
        await log.close()


# -- local adapter specifics ---------------------------------------------------------------------


async def test_local_members_split_partitions_without_overlap(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path / "events.db", partitions=4, lease_seconds=LOCAL_LEASE_SECONDS)
    try:
        topic, group = "t", "g"
        for i in range(40):
            await log.publish(topic, f"repo-{i}", b"x")
        a = await log.subscribe(topic, group)
        assert a.owned_partitions == {0, 1, 2, 3}
        b = await log.subscribe(topic, group)
        c = await log.subscribe(topic, group)

        async def drive(sub: Any, seconds: float) -> None:
            # Iterating is what heartbeats; deliveries are acked so nothing piles up.
            try:
                async with asyncio.timeout(seconds):
                    async for delivery in sub:
                        await delivery.ack()
            except TimeoutError:
                pass

        await asyncio.gather(*(drive(s, 1.2) for s in (a, b, c)))
        owned = [a.owned_partitions, b.owned_partitions, c.owned_partitions]
        assert sorted(len(o) for o in owned) == [1, 1, 2]
        assert frozenset().union(*owned) == {0, 1, 2, 3}
        assert sum(len(o) for o in owned) == 4  # no partition held twice

        await a.close()
        await asyncio.gather(*(drive(s, 1.2) for s in (b, c)))
        assert sorted([len(b.owned_partitions), len(c.owned_partitions)]) == [2, 2]
        assert b.owned_partitions | c.owned_partitions == {0, 1, 2, 3}
    finally:
        await log.close()


async def test_local_topic_keeps_its_first_partition_count(tmp_path: Path) -> None:
    first = LocalEventLog(tmp_path / "events.db", partitions=2)
    second = LocalEventLog(tmp_path / "events.db", partitions=8)
    try:
        await first.publish("t", "repo", b"1")
        await second.publish("t", "repo", b"2")
        sub = await second.subscribe("t", "g")
        got = await take(sub, 2)
        assert values(got) == ["1", "2"]
        assert got[0].record.partition == got[1].record.partition < 2
    finally:
        await first.close()
        await second.close()


# A member in a process of its own: takes some records, acks a prefix, reports, then hangs until killed.
CHILD = r"""
import asyncio, json, sys
from pathlib import Path

async def main(cfg):
    if cfg["kind"] == "local":
        from services.core.events.local import LocalEventLog
        log = LocalEventLog(Path(cfg["path"]), partitions=4, poll_interval=0.02, lease_seconds=cfg["lease"])
    else:
        from services.core.events.kafka import KafkaEventLog
        log = KafkaEventLog(cfg["servers"], client_id="hanzo-registry-test-child")
    sub = await log.subscribe(cfg["topic"], cfg["group"])
    taken = []
    async for delivery in sub:
        taken.append(delivery)
        if len(taken) == cfg["take"]:
            break
    await taken[cfg["ack"] - 1].ack()
    print(json.dumps([d.record.value.decode() for d in taken]), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""
