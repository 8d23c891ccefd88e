"""The service runtime: consumer semantics (dedupe, retry, dead letters), ops endpoints, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.core.bootstrap import build_document_store, build_event_log
from services.core.events.envelope import decode, encode, new_envelope
from services.core.events.log import EventLog
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.runtime import PROCESSED, EventConsumer, PoisonEventError
from services.core.settings import ConsumerSettings, load_settings
from services.core.storage.documents import DocumentStore
from services.core.telemetry import Metrics, dict_to_kafka_headers, inject_headers
from tests.conftest import infra
from tests.integration.topics import read_topic

ROOT = Path(__file__).resolve().parents[2]


class Bed:
    def __init__(self, docs: DocumentStore, events: EventLog, topic: str) -> None:
        self.docs, self.events, self.topic = docs, events, topic
        self.metrics = Metrics()

    def consumer(self, handler: Any, *, attempts: int = 3) -> EventConsumer:
        async def no_sleep(_: float) -> None:
            return None

        return EventConsumer(
            events=self.events,
            docs=self.docs,
            metrics=self.metrics,
            service="test",
            topic=self.topic,
            group=f"g-{self.topic}",
            handler=handler,
            settings=ConsumerSettings(max_attempts=attempts, backoff_initial_seconds=0.01),
            sleep=no_sleep,
        )

    async def publish(self, env: pb.Envelope, *, headers: list[tuple[str, bytes]] | None = None) -> None:
        await self.events.publish(self.topic, env.repository, encode(env), headers=headers or [])

    async def drain(self, consumer: EventConsumer, until: Any, timeout: float = 60.0) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            async with asyncio.timeout(timeout):
                while not until():
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task

    async def dead_letters(self, expected: int, timeout: float = 60.0) -> list[Any]:
        return await read_topic(self.events, self.topic + ".dlq", expected, timeout=timeout)


@pytest.fixture(params=["local", pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.mongo])])
async def bed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bed]:
    run_id = uuid.uuid4().hex[:10]
    raw: dict[str, Any] = {"data_dir": str(tmp_path)}
    if request.param == "kafka":
        raw["metadata"] = {"kind": "mongo", "uri": infra("HANZO_TEST_MONGO_URI"), "database": f"hzr_rt_{run_id}"}
        raw["events"] = {"kind": "kafka", "bootstrap_servers": infra("HANZO_TEST_KAFKA")}
    settings = load_settings(**raw)
    b = Bed(build_document_store(settings), build_event_log(settings), f"test-runtime-{run_id}")
    await b.events.ensure_topics([b.topic, b.topic + ".dlq"])  # type: ignore[attr-defined]
    try:
        yield b
    finally:
        await b.events.delete_topics([b.topic, b.topic + ".dlq"])  # type: ignore[attr-defined]
        await b.docs.drop_collection(PROCESSED)
        await b.docs.close()
        await b.events.close()


def _event(tag: str = "t") -> pb.Envelope:
    return new_envelope(pb.TagUpdated(repository="team/app", tag=tag), repository="team/app")


async def test_duplicates_are_handled_once(bed: Bed) -> None:
    env = _event()
    seen: list[str] = []

    async def handler(e: pb.Envelope) -> None:
        seen.append(e.id)

    await bed.publish(env)
    await bed.publish(env)  # a relay that died after publishing, before deleting its intent
    await bed.publish(_event("other"))
    consumer = bed.consumer(handler)
    await consumer.setup()
    await bed.drain(
        consumer,
        lambda: (
            len(seen) >= 2
            and bed.metrics.events_consumed.labels(service="test", topic=bed.topic, outcome="duplicate")._value.get()
            >= 1
        ),
    )
    assert seen.count(env.id) == 1 and len(seen) == 2


async def test_transient_failures_are_retried(bed: Bed) -> None:
    calls = 0

    async def flaky(_: pb.Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("dependency hiccup")

    await bed.publish(_event())
    consumer = bed.consumer(flaky, attempts=5)
    await consumer.setup()
    await bed.drain(consumer, lambda: calls >= 3)
    assert calls == 3


async def test_failing_and_poison_records_go_to_the_dead_letter_topic(bed: Bed) -> None:
    async def broken(e: pb.Envelope) -> None:
        if e.tag_updated.tag == "poison":
            raise PoisonEventError("cannot ever handle this")
        raise RuntimeError("always fails")

    await bed.publish(_event("fails"))
    await bed.publish(_event("poison"))
    await bed.events.publish(bed.topic, "team/app", b"not an envelope")
    consumer = bed.consumer(broken, attempts=2)
    await consumer.setup()
    counter = bed.metrics.dead_letters.labels(service="test", topic=bed.topic)
    await bed.drain(consumer, lambda: counter._value.get() >= 3)
    records = await bed.dead_letters(3)
    reasons = sorted(dict(r.headers)["dead-letter-reason"].decode()[:12] for r in records)
    assert reasons == ["always fails", "cannot ever ", "undecodable:"]


async def test_trace_context_crosses_the_log(bed: Bed) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    spans: list[Any] = []

    async def handler(_: pb.Envelope) -> None:
        spans.append(trace.get_current_span().get_span_context())

    with tracer.start_as_current_span("producer") as span:
        trace_id = span.get_span_context().trace_id
        headers = dict_to_kafka_headers(inject_headers())
    await bed.publish(_event(), headers=headers)
    consumer = bed.consumer(handler)
    await consumer.setup()
    await bed.drain(consumer, lambda: bool(spans))
    assert spans[0].trace_id == trace_id


# processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited early"
        try:
            return _get(url)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize("service", ["scanner", "gc", "serve"])
def test_services_start_answer_ops_endpoints_and_stop_on_sigterm(tmp_path: Path, service: str) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "HANZO_REGISTRY_DATA_DIR": str(tmp_path),
        "HANZO_REGISTRY_AUTH__MODE": "none",
        "HANZO_REGISTRY_SERVER__OPS_ADDR": f"127.0.0.1:{port}",
        "HANZO_REGISTRY_ADDR": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", service],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        status, body = _wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        assert status == 200, body
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "hanzo_registry_build_info" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line["msg"] == "stopped" for line in lines), stderr[-2000:]


def test_readyz_fails_when_a_port_does_not_answer_well(tmp_path: Path) -> None:
    """A backend that is unreachable at start stops the service (tests/integration/test_startup.py); one that
    accepts connections but does not work (here: an HTTP server without the bucket) fails readiness."""
    import http.server
    import threading

    class NoBucket(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args: Any) -> None:
            pass

    s3 = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoBucket)
    threading.Thread(target=s3.serve_forever, daemon=True).start()
    port = _free_port()
    env = {
        **os.environ,
        "HANZO_REGISTRY_DATA_DIR": str(tmp_path),
        "HANZO_REGISTRY_SERVER__OPS_ADDR": f"127.0.0.1:{port}",
        "HANZO_REGISTRY_STORAGE__BLOBS__KIND": "s3",
        "HANZO_REGISTRY_STORAGE__BLOBS__ENDPOINT": f"127.0.0.1:{s3.server_address[1]}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "gc"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        status, body = _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        assert status == 503 and json.loads(body) == {"status": "unready", "failures": ["blob storage"]}
        assert str(s3.server_address[1]) not in body, "no endpoint, path or error text to anonymous callers"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        s3.shutdown()


def test_bad_configuration_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("metadata:\n  kind: cassandra\n")
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--config", str(config), "check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "metadata" in proc.stderr and "cassandra" in proc.stderr


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("addr: 127.0.0.1:6000\nmetadata:\n  kind: mongo\n  uri: mongodb://user:hunter2@db:27017\n")
    env = {**os.environ, "HANZO_REGISTRY_ADDR": "127.0.0.1:7000", "HANZO_REGISTRY_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        # --offline: the MongoDB named here does not exist (check-config would say so, like serve)
        [sys.executable, "-m", "services.cli.main", "--config", str(config), "check-config", "--offline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["addr"] == "127.0.0.1:7000" and shown["metadata"]["kind"] == "mongo"
    assert "hunter2" not in proc.stdout, "secrets are masked"


def test_decode_keeps_unknown_fields_safe() -> None:
    env = _event()
    assert decode(encode(env)).id == env.id


async def test_grpc_calls_continue_the_callers_trace_and_are_counted() -> None:
    import grpc
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from services.core.proto.hanzo.registry.v1 import gc_pb2, gc_pb2_grpc
    from services.core.runtime import TelemetryInterceptor, start_grpc
    from services.core.telemetry import inject_grpc_metadata

    seen: list[int] = []

    class Gc(gc_pb2_grpc.GcServicer):
        async def ListRuns(self, request: Any, context: Any) -> Any:
            seen.append(trace.get_current_span().get_span_context().trace_id)
            return gc_pb2.ListRunsResponse()

    metrics = Metrics()
    server, port = await start_grpc(
        "127.0.0.1:0",
        [lambda s: gc_pb2_grpc.add_GcServicer_to_server(Gc(), s)],  # type: ignore[no-untyped-call]
        interceptors=[TelemetryInterceptor(metrics, "gc")],
    )
    try:
        tracer = TracerProvider().get_tracer("test")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gc_pb2_grpc.GcStub(channel)  # type: ignore[no-untyped-call]
            with tracer.start_as_current_span("caller") as span:
                await stub.ListRuns(gc_pb2.ListRunsRequest(), metadata=inject_grpc_metadata())
                caller = span.get_span_context().trace_id
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.TriggerRun(gc_pb2.TriggerRunRequest())
            assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=None)
    assert seen == [caller]
    method = "/hanzo.registry.v1.Gc/ListRuns"
    assert metrics.grpc_requests.labels(service="gc", method=method, code="OK")._value.get() == 1


def test_data_directory_is_private_to_the_service_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "HANZO_REGISTRY_DATA_DIR": str(data), "HANZO_REGISTRY_ADDR": f"127.0.0.1:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_ready(f"http://127.0.0.1:{port}/readyz", proc)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [data, *data.iterdir()]}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


async def test_dedupe_markers_are_forgotten_after_their_retention(bed: Bed) -> None:
    async def handler(_: pb.Envelope) -> None:
        return None

    consumer = bed.consumer(handler)
    await consumer.setup()
    await bed.docs.insert(
        PROCESSED,
        {
            "_id": f"{consumer.group}:old",
            "group": consumer.group,
            "at": 0.0,
            "day": time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * 86400)),
        },
    )
    await bed.docs.insert(
        PROCESSED,
        {
            "_id": f"{consumer.group}:new",
            "group": consumer.group,
            "at": 0.0,
            "day": time.strftime("%Y-%m-%d", time.gmtime()),
        },
    )
    assert await consumer.forget_old_markers() == 1
    assert await bed.docs.get(PROCESSED, f"{consumer.group}:new") is not None


async def test_local_event_log_drops_records_past_retention(tmp_path: Path) -> None:
    from services.core.events.local import LocalEventLog

    log = LocalEventLog(tmp_path / "events.db", retention_seconds=3600)
    try:
        await log.publish("t", "k", b"old")
        await log.publish("t", "k", b"new")
        assert await log.sweep(now=time.time() + 1800) == 0
        assert await log.sweep(now=time.time() + 7200) == 2
        await log.publish("t", "k", b"after")
        sub = await log.subscribe("t", "g")
        async with asyncio.timeout(10):
            delivery = await anext(aiter(sub))
        assert delivery.record.value == b"after" and delivery.record.offset == 2, "offsets stay monotonic"
        await sub.close()
    finally:
        await log.close()


def test_consumer_groups_are_per_service_or_per_topic() -> None:
    from services.core.runtime import ServiceParts, consumer_group

    assert consumer_group(ServiceParts(name="gc"), "ns.registry.tags") == "hanzo-registry.gc"
    per_topic = ServiceParts(name="replicator", group_per_topic=True)
    assert consumer_group(per_topic, "ns.registry.tags") == "hanzo-registry.replicator.ns.registry.tags"
    assert consumer_group(per_topic, "ns.registry.manifests") != consumer_group(per_topic, "ns.registry.tags")


@pytest.mark.kafka
@pytest.mark.mongo
async def test_consumers_of_two_topics_in_groups_per_topic_start_without_a_rebalance_stall(tmp_path: Path) -> None:
    """In one group on two topics, a consumer that joins after the other one's group settled (its marker sweep
    took longer, a replica restarted) waits for that one's next heartbeat (3 s) for its partitions. With a
    group per topic (ServiceParts.group_per_topic) it consumes at once."""
    from services.core.runtime import ServiceParts, consumer_group

    run_id = uuid.uuid4().hex[:10]
    kafka = {"kind": "kafka", "bootstrap_servers": infra("HANZO_TEST_KAFKA")}
    settings = load_settings(data_dir=str(tmp_path), events=kafka)
    events, docs = build_event_log(settings), build_document_store(settings)
    topics = [f"test-groups-{run_id}.manifests", f"test-groups-{run_id}.tags"]
    await events.ensure_topics(topics)  # type: ignore[attr-defined]
    parts = ServiceParts(name=f"test-{run_id}", group_per_topic=True)
    stop = asyncio.Event()
    handled: dict[str, asyncio.Event] = {topic: asyncio.Event() for topic in topics}

    def handler(topic: str) -> Any:
        async def handle(envelope: pb.Envelope) -> None:
            handled[topic].set()

        return handle

    tasks = []
    took = []
    try:
        for topic in topics:  # one after the other: the second joins once the first is consuming
            consumer = EventConsumer(events=events, docs=docs, metrics=Metrics(), service=parts.name, topic=topic,
                                     group=consumer_group(parts, topic), handler=handler(topic),
                                     settings=ConsumerSettings())
            await consumer.setup()
            started = time.monotonic()
            tasks.append(asyncio.create_task(consumer.run(stop)))
            await events.publish(topic, "team/app", encode(_event()))
            async with asyncio.timeout(30):
                await handled[topic].wait()
            took.append(time.monotonic() - started)
        assert took[1] < 2.0, took
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await events.delete_topics(topics)  # type: ignore[attr-defined]
        await events.delete_groups([consumer_group(parts, t) for t in topics])  # type: ignore[attr-defined]
        await docs.drop_collection(PROCESSED)
        await docs.close()
        await events.close()
