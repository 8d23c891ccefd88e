"""The outbox keeps a change and its events together: writers killed between writes, Kafka down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.core.bootstrap import build_document_store, build_event_log
from services.core.events.envelope import encode, new_envelope
from services.core.events.log import EventLog
from services.core.events.outbox import (
    OUTBOX,
    Create,
    OutboundEvent,
    Outbox,
    OutboxRelay,
    Put,
    Update,
    _encode_op,
    apply_operation,
)
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.runtime import EventConsumer
from services.core.settings import ConsumerSettings, Settings, load_settings
from services.core.storage.documents import DocumentStore
from services.core.telemetry import Metrics
from tests.conftest import infra
from tests.integration.topics import read_topic

ROOT = Path(__file__).resolve().parents[2]


def _settings(kind: str, tmp: Path, run_id: str) -> dict[str, Any]:
    if kind == "embedded":
        return {"data_dir": str(tmp)}
    return {
        "data_dir": str(tmp),
        "metadata": {"kind": "mongo", "uri": infra("HANZO_TEST_MONGO_URI"), "database": f"hzr_outbox_{run_id}"},
        "events": {"kind": "kafka", "bootstrap_servers": infra("HANZO_TEST_KAFKA")},
    }


class World:
    def __init__(self, kind: str, raw: dict[str, Any], topic: str) -> None:
        self.kind = kind
        self.raw = raw
        self.topic = topic
        self.settings: Settings = load_settings(**raw)
        self.docs: DocumentStore = build_document_store(self.settings)
        self.events: EventLog = build_event_log(self.settings)

    def relay(self, **kwargs: Any) -> OutboxRelay:
        return OutboxRelay(self.docs, self.events, **{"stale_after": 0.0, "poll_interval": 0.05, **kwargs})

    async def consume_all(self, expected: int, *, timeout: float = 60.0) -> list[bytes]:
        """Every record of the topic, as an idempotent consumer would (it keeps all; callers dedupe)."""
        records = await read_topic(self.events, self.topic, expected, timeout=timeout, linger=2.0, distinct=True)
        return [r.value for r in records]


@pytest.fixture(params=["embedded", pytest.param("distributed", marks=[pytest.mark.kafka, pytest.mark.mongo])])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    run_id = uuid.uuid4().hex[:10]
    w = World(request.param, _settings(request.param, tmp_path, run_id), f"test-outbox-{run_id}")
    await Outbox(w.docs).setup()
    try:
        yield w
    finally:
        for coll in (OUTBOX, "leases", "crash_docs", "kv"):
            await w.docs.drop_collection(coll)
        if hasattr(w.events, "delete_topics"):
            await w.events.delete_topics([w.topic])
        await w.docs.close()
        await w.events.close()


def _run_writer(w: World, intent: str, die_after: str) -> int:
    env = {**os.environ, "CRASH_TOPIC": w.topic}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.outbox_writer", json.dumps(w.raw), intent, die_after],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == (0 if die_after == "never" else 137), proc.stderr
    return proc.returncode


@pytest.mark.parametrize("die_after", ["never", "intent", "op1", "ops"])
async def test_killed_writer_state_and_events_agree(world: World, die_after: str) -> None:
    intent = f"i{uuid.uuid4().hex[:8]}"
    _run_writer(world, intent, die_after)
    relay = world.relay()
    while await relay.drain_once():
        pass
    # The change is complete and its event published exactly as if the writer had lived.
    assert (await world.docs.get("crash_docs", f"{intent}-a")) is not None
    assert (await world.docs.get("crash_docs", f"{intent}-b")) is not None
    assert await world.docs.count(OUTBOX) == 0
    assert await world.consume_all(1) == [intent.encode()]


async def test_live_writers_intent_is_not_touched_before_it_is_stale(world: World) -> None:
    await world.docs.insert(
        OUTBOX, {"_id": "x", "seq": "0", "state": "pending", "created": 1e18, "ops": [], "events": []}
    )
    relay = world.relay(stale_after=30.0)
    assert await relay.drain_once() == 0
    assert await world.docs.count(OUTBOX) == 1


async def test_intent_that_can_no_longer_apply_is_dropped_without_event(world: World) -> None:
    """A dead writer's compare-and-set lost to a later change: its change is not stored, so no event."""
    await world.docs.put("kv", {"_id": "tag", "version": 2, "digest": "new"})
    stale_cas = Update("kv", "tag", {"version": 2, "digest": "old"}, expect={"version": 1})
    await world.docs.insert(
        OUTBOX,
        {
            "_id": "dead",
            "seq": "0",
            "state": "pending",
            "created": 0.0,
            "ops": [_encode_op(stale_cas)],
            "events": [{"topic": world.topic, "key": "r", "value": b"never", "headers": []}],
        },
    )
    outbox = Outbox(world.docs)
    await outbox.commit([Put("kv", {"_id": "other"})], [OutboundEvent(topic=world.topic, key="r", value=b"after")])
    relay = world.relay()
    while await relay.drain_once():
        pass
    assert relay.stats.dropped == 1
    assert (await world.docs.get("kv", "tag"))["digest"] == "new"  # type: ignore[index]
    assert await world.consume_all(1) == [b"after"]


async def test_relay_publishes_in_commit_order_per_key(world: World) -> None:
    outbox = Outbox(world.docs)
    for i in range(30):
        await outbox.commit(
            [Put("kv", {"_id": f"k{i}"})], [OutboundEvent(topic=world.topic, key="same-repo", value=str(i).encode())]
        )
    relay = world.relay()
    while await relay.drain_once():
        pass
    assert await world.consume_all(30) == [str(i).encode() for i in range(30)]


async def test_only_one_relay_holds_the_lease(world: World) -> None:
    a, b = world.relay(lease_seconds=30.0), world.relay(lease_seconds=30.0)
    assert await a._hold_lease()
    assert not await b._hold_lease()
    assert await a._hold_lease(), "the holder renews"


@pytest.mark.kafka
@pytest.mark.mongo
async def test_changes_made_while_kafka_is_down_arrive_exactly_once(tmp_path: Path) -> None:
    """Stop the real broker, commit changes, start it again: an idempotent consumer (the runtime's
    EventConsumer, deduplicating by envelope id) handles every event exactly once."""
    run_id = uuid.uuid4().hex[:10]
    w = World("distributed", _settings("distributed", tmp_path, run_id), f"test-outbox-down-{run_id}")
    await Outbox(w.docs).setup()
    await w.events.ensure_topics([w.topic])  # type: ignore[attr-defined]
    stop = asyncio.Event()
    relay = w.relay()
    relay_task = asyncio.create_task(relay.run(stop))
    envelopes = [
        new_envelope(pb.TagUpdated(repository=f"repo{i % 3}", tag=f"t{i}"), repository=f"repo{i % 3}")
        for i in range(20)
    ]
    try:
        subprocess.run(["bash", "deploy/local/infra-down.sh", "kafka"], cwd=ROOT, check=True, timeout=120)
        outbox = Outbox(w.docs)
        outbox.on_commit(relay.wake)
        for i, env in enumerate(envelopes):
            await outbox.commit(
                [Put("kv", {"_id": f"k{i}", "i": i})],
                [OutboundEvent(topic=w.topic, key=env.repository, value=encode(env))],
            )
        await asyncio.sleep(3)
        assert await w.docs.count(OUTBOX) > 0, "nothing can be published while Kafka is down"
        assert await w.docs.count("kv") == 20, "the changes themselves are stored"
    finally:
        subprocess.run(  # a restart on the broker's data, as a real one keeps it
            ["bash", "deploy/local/infra-up.sh", "kafka"], cwd=ROOT, check=True, timeout=300, stdout=subprocess.DEVNULL,
            env={**os.environ, "HANZO_KAFKA_KEEP_DATA": "1"},
        )
    handled: list[str] = []

    async def handler(env: pb.Envelope) -> None:
        handled.append(env.id)

    consumer = EventConsumer(
        events=w.events,
        docs=w.docs,
        metrics=Metrics(),
        service="test",
        topic=w.topic,
        group=f"test-{run_id}",
        handler=handler,
        settings=ConsumerSettings(),
    )
    await consumer.setup()
    consumer_stop = asyncio.Event()
    consumer_task = asyncio.create_task(consumer.run(consumer_stop))
    try:
        async with asyncio.timeout(120):
            while await w.docs.count(OUTBOX) or len(handled) < 20:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # a late duplicate would be handled by now
        assert sorted(handled) == sorted(e.id for e in envelopes)
        assert relay.stats.failures > 0, "the relay did see Kafka down"
    finally:
        consumer_stop.set()
        stop.set()
        await asyncio.gather(consumer_task, relay_task)
        await w.events.delete_topics([w.topic, w.topic + ".dlq"])  # type: ignore[attr-defined]
        for coll in (OUTBOX, "leases", "kv", "processed_events"):
            await w.docs.drop_collection(coll)
        await w.docs.close()
        await w.events.close()


async def test_holder_renews_its_lease_only_past_half_its_life(world: World) -> None:
    relay = world.relay(lease_seconds=30.0)
    assert await relay._hold_lease()
    first = await world.docs.get("leases", "outbox-relay")
    assert await relay._hold_lease()
    assert await world.docs.get("leases", "outbox-relay") == first, "a fresh lease is not rewritten"
    assert first is not None
    await world.docs.update("leases", "outbox-relay", {"expires": first["expires"] - 20.0})
    relay._held_until -= 20.0  # as if 20 s had passed
    assert await relay._hold_lease()
    renewed = await world.docs.get("leases", "outbox-relay")
    assert renewed is not None and renewed["expires"] > first["expires"] - 20.0


async def test_create_leaves_an_existing_document_alone(world: World) -> None:
    """Content-addressed documents: a re-push (or a recovered intent) applies without writing."""
    await world.docs.ensure_collection("kv")
    op = Create("kv", {"_id": "sha256:abc", "created": 1.0})
    assert await apply_operation(world.docs, op)
    assert await apply_operation(world.docs, Create("kv", {"_id": "sha256:abc", "created": 2.0}))
    assert await world.docs.get("kv", "sha256:abc") == {"_id": "sha256:abc", "created": 1.0}
    outbox = Outbox(world.docs)
    await outbox.commit([op], [OutboundEvent(topic=world.topic, key="r", value=b"again")])
    assert [intent["state"] for intent in await world.docs.find(OUTBOX)] == ["ready"]
