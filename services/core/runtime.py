"""The runner every service uses: event consumers, gRPC server, ops HTTP endpoints, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry import trace

from services.core.bootstrap import Container
from services.core.events.envelope import EnvelopeDecodeError, decode
from services.core.events.log import Delivery, EventLog, LagReporting, Subscription, TopicAdmin
from services.core.halfclose import answer_half_closed_requests
from services.core.proto.hanzo.registry.v1 import events_pb2
from services.core.settings import ConsumerSettings
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index
from services.core.telemetry import Metrics, extract_context, extract_grpc_context, kafka_headers_to_dict

log = logging.getLogger(__name__)

PROCESSED = "processed_events"
_MARKER_SWEEP_DAYS = 31
_MARKER_SWEEP_EVERY = 6 * 3600.0


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))

LAG_REPORT_SECONDS = 5.0
EventHandler = Callable[[events_pb2.Envelope], Awaitable[None]]
Probe = Callable[[], Awaitable[None]]


class PoisonEventError(Exception):
    """A record that can never be handled: it goes straight to the dead-letter topic."""


@dataclass
class EventConsumer:
    """Consumes one topic in one consumer group: idempotent by event id, retries with backoff,
    dead-letters after `max_attempts`, acks only after the handler finished (at-least-once)."""

    events: EventLog
    docs: DocumentStore
    metrics: Metrics
    service: str
    topic: str
    group: str
    handler: EventHandler
    settings: ConsumerSettings
    dead_letter_suffix: str = ".dlq"
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _next_lag_report: float = field(default=0.0, init=False, repr=False)
    _next_marker_sweep: float = field(default=0.0, init=False, repr=False)

    async def setup(self) -> None:
        await self.docs.ensure_collection(PROCESSED, [Index(("group", "day"))])

    async def run(self, stop: asyncio.Event) -> None:
        self._next_marker_sweep = time.monotonic() + _MARKER_SWEEP_EVERY
        await self.forget_old_markers()
        subscription = await self.events.subscribe(self.topic, self.group)
        iterator = aiter(subscription)
        try:
            while not stop.is_set():
                next_task = asyncio.ensure_future(anext(iterator))
                stop_task = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({next_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                stop_task.cancel()
                if next_task not in done:
                    next_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await next_task
                    break
                try:
                    delivery = next_task.result()
                except StopAsyncIteration:
                    break
                # The in-flight record is finished and acked even when stop arrives meanwhile.
                await self.handle(delivery)
                await self._report_lag(subscription)
                if time.monotonic() >= self._next_marker_sweep:
                    self._next_marker_sweep = time.monotonic() + _MARKER_SWEEP_EVERY
                    await self.forget_old_markers()
        finally:
            await subscription.close()

    async def forget_old_markers(self, *, now: float | None = None) -> int:
        """Drop dedupe markers older than `dedupe_days` (by day bucket: the port filters by equality).
        Runs when the consumer starts and every few hours; a redelivery never comes that late."""
        today = now if now is not None else time.time()
        removed = 0
        for age in range(self.settings.dedupe_days + 1, self.settings.dedupe_days + _MARKER_SWEEP_DAYS):
            removed += await self.docs.delete_where(PROCESSED, {"group": self.group, "day": _day(today - age * 86400)})
        return removed

    async def _report_lag(self, subscription: Subscription) -> None:
        now = time.monotonic()
        if not isinstance(subscription, LagReporting) or now < self._next_lag_report:
            return
        self._next_lag_report = now + LAG_REPORT_SECONDS
        try:
            lags = await subscription.lag()
        except Exception as exc:  # a metric must never stop consumption
            log.debug("lag of %s unavailable: %s", self.topic, exc)
            return
        for partition, lag in lags.items():
            self.metrics.event_consumer_lag.labels(
                service=self.service, topic=self.topic, partition=str(partition)
            ).set(lag)

    async def handle(self, delivery: Delivery) -> None:
        record = delivery.record
        outcome = "ok"
        try:
            envelope = decode(record.value)
        except EnvelopeDecodeError as exc:
            await self._dead_letter(delivery, f"undecodable: {exc}")
            outcome = "dead-letter"
        else:
            marker = f"{self.group}:{envelope.id}"
            if await self.docs.get(PROCESSED, marker) is not None:
                outcome = "duplicate"
            else:
                outcome = await self._dispatch(delivery, envelope, marker)
        await delivery.ack()
        self.metrics.events_consumed.labels(service=self.service, topic=record.topic, outcome=outcome).inc()

    async def _dispatch(self, delivery: Delivery, envelope: events_pb2.Envelope, marker: str) -> str:
        ctx = extract_context(kafka_headers_to_dict(delivery.record.headers))
        tracer = trace.get_tracer(f"hanzo-registry.{self.service}")
        delay = self.settings.backoff_initial_seconds
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                with tracer.start_as_current_span(
                    f"consume {envelope.type}", context=ctx, kind=trace.SpanKind.CONSUMER
                ):
                    await self.handler(envelope)
            except PoisonEventError as exc:
                await self._dead_letter(delivery, str(exc))
                return "dead-letter"
            except Exception as exc:
                log.warning(
                    "%s: handling %s failed (attempt %d/%d): %s",
                    self.service,
                    envelope.id,
                    attempt,
                    self.settings.max_attempts,
                    exc,
                )
                if attempt == self.settings.max_attempts:
                    await self._dead_letter(delivery, str(exc))
                    return "dead-letter"
                await self.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_seconds)
                continue
            with contextlib.suppress(DuplicateKeyError):
                await self.docs.insert(
                    PROCESSED, {"_id": marker, "group": self.group, "at": time.time(), "day": _day(time.time())}
                )
            return "ok"
        return "dead-letter"  # pragma: no cover - the loop always returns

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        record = delivery.record
        topic = record.topic + self.dead_letter_suffix
        headers = [
            *record.headers,
            ("dead-letter-reason", reason[:1000].encode()),
            ("dead-letter-group", self.group.encode()),
        ]
        await self.events.publish(topic, record.key, record.value, headers=headers)
        self.metrics.dead_letters.labels(service=self.service, topic=record.topic).inc()
        log.error(
            "%s: record %s/%d@%d sent to %s: %s",
            self.service,
            record.topic,
            record.partition,
            record.offset,
            topic,
            reason,
        )


def ops_app(metrics: Metrics, probes: Mapping[str, Probe]) -> web.Application:
    """A stand-alone app with only the ops endpoints, for headless services."""
    app = web.Application()
    add_ops_routes(app, metrics, probes)
    return app


def add_ops_routes(app: web.Application, metrics: Metrics, probes: Mapping[str, Probe]) -> None:
    """/metrics, /healthz (alive) and /readyz (every port answers)."""

    async def metrics_handler(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        # Unauthenticated: it names which dependency is down, never the error (paths, endpoints), which is logged.
        failures = await check_probes(probes)
        if failures:
            return web.json_response({"status": "unready", "failures": failures}, status=503)
        return web.json_response({"status": "ready"})

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def dependency_probes(c: Container) -> dict[str, Probe]:
    """Readiness probes of a service's ports, by the name /readyz reports when one fails."""
    return {"blob storage": c.blobs.ping, "metadata": c.docs.ping, "event log": c.events.ping}


_UNREADY: set[str] = set()
"""Dependencies the last readiness check found down: a WARNING when one goes, an INFO when it is back."""


async def check_probes(probes: Mapping[str, Probe], *, timeout: float = 3.0) -> list[str]:
    """The names of the dependencies whose probe failed; the reasons go to the log only, once per outage."""
    failures: list[str] = []
    for name, probe in probes.items():
        try:
            async with asyncio.timeout(timeout):
                await probe()
        except Exception as exc:
            if name not in _UNREADY:
                log.warning("readiness: %s is unavailable: %s: %s", name, type(exc).__name__, str(exc)[:300])
            _UNREADY.add(name)
            failures.append(name)
        else:
            if name in _UNREADY:
                _UNREADY.discard(name)
                log.info("readiness: %s is back", name)
    return failures


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


BACKLOG = 1024


def bind_http(addr: str) -> list[socket.socket]:
    """Listening sockets for `addr` (every address its host resolves to), bound and listening now: a port in
    use or a host that is not ours fails here, before a service writes anything. Raises OSError."""
    host, port = split_addr(addr)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            port = port or sock.getsockname()[1]  # port 0: the other addresses share the first one's port
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen_urls(sockets: Sequence[socket.socket], *, tls: bool) -> list[str]:
    """`http://127.0.0.1:5000`-style URLs of listening sockets."""
    urls = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        urls.append(f"{'https' if tls else 'http'}://{host}:{port}")
    return urls


async def start_http(
    app: web.Application,
    addr: str,
    *,
    sockets: Sequence[socket.socket] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Serve `app` on `sockets` (from bind_http), or else on `addr`, over TLS with `ssl_context`."""
    answer_half_closed_requests()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    if not sockets:
        sockets = bind_http(addr)
        log.info("listening on %s", " ".join(listen_urls(sockets, tls=ssl_context is not None)))
    for sock in sockets:
        await web.SockSite(runner, sock, ssl_context=ssl_context, backlog=BACKLOG).start()
    return runner


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Continues the caller's trace (W3C headers in gRPC metadata) and counts requests by status."""

    def __init__(self, metrics: Metrics, service: str) -> None:
        self._metrics = metrics
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = str(details.method)
        context = extract_grpc_context(details.invocation_metadata)
        tracer = trace.get_tracer(f"hanzo-registry.{self._service}")
        metrics, service = self._metrics, self._service

        async def traced(request: Any, servicer_context: grpc.aio.ServicerContext) -> Any:
            code = "OK"
            with tracer.start_as_current_span(method, context=context, kind=trace.SpanKind.SERVER):
                try:
                    return await inner(request, servicer_context)
                except Exception:
                    code = "UNKNOWN"
                    raise
                finally:
                    if servicer_context.code() is not None and servicer_context.code() != grpc.StatusCode.OK:
                        code = servicer_context.code().name
                    metrics.grpc_requests.labels(service=service, method=method, code=code).inc()

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def start_grpc(
    addr: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=list(interceptors))
    for add in register:
        add(server)
    port = server.add_insecure_port(addr)
    await server.start()
    return server, port


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


@dataclass
class ServiceParts:
    """What one service contributes to a process: consumers, gRPC servicers, HTTP routes, loops."""

    name: str
    consumes: list[tuple[str, EventHandler]] = field(default_factory=list)
    produces: list[str] = field(default_factory=list)
    grpc: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    http: web.Application | None = None
    loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None  # HTTPS for `http` (on the API address)
    group_per_topic: bool = False
    """Each consumed topic in a consumer group of its own (`consumer_group`). Consumers of one group on
    different topics rebalance each other: the second one joining stalls the first until its next heartbeat
    (3 s on Kafka), at every start, scale-out or crash. Off by default, because turning it on renames the
    groups, and a renamed group starts over from the oldest record (its offsets stay with the old name)."""


def consumer_group(parts: ServiceParts, topic: str) -> str:
    """The consumer group of a service's consumer of `topic`: `hanzo-registry.<service>`, or with
    `group_per_topic` `hanzo-registry.<service>.<topic>`."""
    base = f"hanzo-registry.{parts.name}"
    return f"{base}.{topic}" if parts.group_per_topic else base


async def run_parts(
    c: Container,
    parts: Sequence[ServiceParts],
    *,
    stop: asyncio.Event,
    http_addr: str | None = None,
    http_sockets: Sequence[socket.socket] = (),
) -> None:
    """Run services until `stop`, then shut down gracefully: consumers finish their in-flight record
    and ack it, HTTP stops accepting and drains, gRPC gets a grace period. `http_sockets` (from bind_http,
    already announced) replace binding `http_addr` (default: `addr`, or `server.ops_addr` without HTTP parts)."""
    settings = c.settings
    consumers = [
        EventConsumer(
            events=c.events,
            docs=c.docs,
            metrics=c.metrics,
            service=p.name,
            topic=topic,
            group=consumer_group(p, topic),
            handler=handler,
            settings=settings.consumer,
            dead_letter_suffix=settings.topics.dead_letter_suffix,
        )
        for p in parts
        for topic, handler in p.consumes
    ]
    for consumer in consumers:
        await consumer.setup()
    if isinstance(c.events, TopicAdmin):
        # Created up front so partition counts are ours, not the broker's auto-create defaults.
        topics = {t for cons in consumers for t in (cons.topic, cons.topic + cons.dead_letter_suffix)}
        topics |= {t for p in parts for t in p.produces}
        await c.events.ensure_topics(sorted(topics))
    http_parts = [p for p in parts if p.http is not None]
    app = http_parts[0].http if http_parts else None
    if app is None:
        app = ops_app(c.metrics, dependency_probes(c))
    runner = await start_http(
        app,
        http_addr or (settings.addr if http_parts else settings.server.ops_addr),
        sockets=http_sockets,
        ssl_context=http_parts[0].ssl_context if http_parts else None,
    )
    grpc_regs = [reg for p in parts for reg in p.grpc]
    grpc_server = None
    if grpc_regs:
        interceptor = TelemetryInterceptor(c.metrics, "+".join(p.name for p in parts))
        grpc_server, grpc_port = await start_grpc(settings.server.grpc_addr, grpc_regs, interceptors=[interceptor])
        log.info("gRPC listening on %s:%d", split_addr(settings.server.grpc_addr)[0], grpc_port)
    log.info("%s started", "+".join(p.name for p in parts))
    tasks = [asyncio.create_task(cons.run(stop), name=f"consumer:{cons.service}:{cons.topic}") for cons in consumers]
    loops = [loop for p in parts for loop in p.loops]
    tasks += [asyncio.create_task(loop(stop), name=f"loop:{i}") for i, loop in enumerate(loops)]
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("%s failed: %s", task.get_name(), task.exception())
                stop.set()
        stop.set()
        async with asyncio.timeout(settings.server.shutdown_grace_seconds):
            await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        log.warning("shutdown grace period over; cancelling what is left")
        for task in tasks:
            task.cancel()
    finally:
        await runner.cleanup()
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)
        log.info("stopped")


def logging_handler(service: str) -> EventHandler:
    """The handler of a service whose real work is not built yet: it records what it saw."""

    async def handle(envelope: events_pb2.Envelope) -> None:
        log.debug(
            "%s received %s", service, envelope.type, extra={"event_id": envelope.id, "repository": envelope.repository}
        )

    return handle
