"""Telemetry: metric names, W3C trace propagation through Kafka headers and gRPC metadata, JSON logs, redaction."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from services.core.events.envelope import new_envelope
from services.core.proto.hanzo.registry.v1 import events_pb2
from services.core.settings import TelemetrySettings
from services.core.telemetry import (
    Metrics,
    dict_to_kafka_headers,
    extract_context,
    extract_grpc_context,
    inject_grpc_metadata,
    inject_headers,
    kafka_headers_to_dict,
    redact,
    setup_logging,
    setup_tracing,
)

# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_render_our_names() -> None:
    metrics = Metrics(version="1.2.3")
    metrics.http_requests.labels(service="distribution", method="GET", route="/v2/", status="200").inc()
    metrics.http_request_duration.labels(service="distribution", method="GET", route="/v2/").observe(0.01)
    metrics.blob_bytes.labels(service="distribution", direction="in").inc(100)
    metrics.events_published.labels(topic="registry.manifests").inc()
    metrics.events_consumed.labels(service="scanner", topic="registry.manifests", outcome="ok").inc()
    metrics.event_consumer_lag.labels(service="scanner", topic="registry.manifests", partition="0").set(3)
    metrics.outbox_pending.set(2)
    metrics.dead_letters.labels(service="scanner", topic="registry.manifests").inc()
    metrics.grpc_requests.labels(service="scanner", method="GetReport", code="OK").inc()
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in (
        "hanzo_registry_http_requests_total",
        "hanzo_registry_http_request_duration_seconds_bucket",
        "hanzo_registry_blob_bytes_total",
        "hanzo_registry_events_published_total",
        "hanzo_registry_events_consumed_total",
        "hanzo_registry_event_consumer_lag",
        "hanzo_registry_outbox_pending",
        "hanzo_registry_dead_letters_total",
        "hanzo_registry_grpc_requests_total",
    ):
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    assert 'hanzo_registry_build_info{version="1.2.3"} 1.0' in text
    metric_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("hanzo_registry_") for line in metric_lines)


def test_metrics_instances_are_independent() -> None:
    a, b = Metrics(version="x"), Metrics(version="x")  # would raise "Duplicated timeseries" on a shared registry
    a.outbox_pending.set(5)
    assert b"hanzo_registry_outbox_pending 0.0" in b.render()[0]


# ------------------------------------------------------------------------------------------------ tracing


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = setup_tracing(TelemetrySettings(traces_exporter="none"), "test", set_global=False)
    yield provider
    provider.shutdown()


def test_trace_context_survives_kafka_headers(provider: TracerProvider) -> None:
    tracer = provider.get_tracer(__name__)
    with tracer.start_as_current_span("publish") as span:
        headers = dict_to_kafka_headers(inject_headers())
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    ctx = extract_context(kafka_headers_to_dict(headers))
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id
    with tracer.start_as_current_span("consume", context=ctx) as child:
        assert child.get_span_context().trace_id == span.get_span_context().trace_id
        assert isinstance(child, ReadableSpan) and child.parent is not None
        assert child.parent.span_id == span.get_span_context().span_id


def test_trace_context_survives_envelope(provider: TracerProvider) -> None:
    with provider.get_tracer(__name__).start_as_current_span("push") as span:
        env = new_envelope(events_pb2.TagDeleted(), repository="r", trace_headers=inject_headers())
    ctx = extract_context({"traceparent": env.traceparent, "tracestate": env.tracestate})
    assert trace.get_current_span(ctx).get_span_context().trace_id == span.get_span_context().trace_id


def test_trace_context_survives_grpc_metadata(provider: TracerProvider) -> None:
    with provider.get_tracer(__name__).start_as_current_span("call") as span:
        metadata = inject_grpc_metadata([("x-request-id", "1"), ("traceparent", "stale")])
    assert ("x-request-id", "1") in metadata
    assert [k for k, _ in metadata].count("traceparent") == 1
    ctx = extract_grpc_context(metadata)
    assert trace.get_current_span(ctx).get_span_context().trace_id == span.get_span_context().trace_id


def test_no_span_no_headers() -> None:
    assert inject_headers() == {}
    ctx = extract_context({"traceparent": "garbage"})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    assert not trace.get_current_span(extract_grpc_context(None)).get_span_context().is_valid


def test_kafka_headers_tolerate_bad_bytes() -> None:
    assert kafka_headers_to_dict([("a", b"\xff"), ("b", None)]) == {"a": "\ufffd", "b": ""}


@pytest.mark.parametrize("exporter", ["console", "otlp"])
def test_exporters_build(exporter: str) -> None:
    settings = TelemetrySettings(traces_exporter=exporter)
    provider = setup_tracing(settings, "test", set_global=False)
    provider.shutdown()


# ------------------------------------------------------------------------------------------------ logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging(TelemetrySettings(log_level="DEBUG"), "svc", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_line_has_trace_ids(log_stream: io.StringIO, provider: TracerProvider) -> None:
    log = logging.getLogger("hanzo.test")
    with provider.get_tracer(__name__).start_as_current_span("work") as span:
        log.info("pushed %s", "library/alpine", extra={"digest": "sha256:abc", "count": 3})
    log.warning("outside")
    inside, outside = _lines(log_stream)
    ctx = span.get_span_context()
    assert inside["trace_id"] == trace.format_trace_id(ctx.trace_id)
    assert inside["span_id"] == trace.format_span_id(ctx.span_id)
    assert inside["msg"] == "pushed library/alpine"
    assert inside["level"] == "INFO" and inside["logger"] == "hanzo.test" and inside["service"] == "svc"
    assert inside["digest"] == "sha256:abc" and inside["count"] == 3
    assert str(inside["ts"]).endswith("Z")
    assert "trace_id" not in outside and outside["level"] == "WARNING"


def test_setup_logging_is_idempotent(log_stream: io.StringIO) -> None:
    second = io.StringIO()
    handler = setup_logging(TelemetrySettings(), "svc", stream=second)
    try:
        logging.getLogger("hanzo.test").warning("once")
        assert second.getvalue().count("once") == 1
        assert log_stream.getvalue() == ""
    finally:
        logging.getLogger().removeHandler(handler)


def test_debug_logging_caps_client_libraries(log_stream: io.StringIO) -> None:
    logging.getLogger("hanzo.test").debug("ours")
    logging.getLogger("pymongo.command").debug("a driver command and its reply")
    logging.getLogger("pymongo.command").info("driver info")
    assert [line["msg"] for line in _lines(log_stream)] == ["ours", "driver info"]


def test_log_levels_are_checked() -> None:
    assert TelemetrySettings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        TelemetrySettings(library_log_level="loud")


SECRETS = [
    "hzr_live_s3cr3tKEY0123456789",
    "hunter2-pw",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl",
    "Zm9vOmJhcg",
]


def test_redaction_in_logs(log_stream: io.StringIO) -> None:
    log = logging.getLogger("hanzo.test")
    key, password, jwt, basic = SECRETS
    log.info("created api key %s for alice", key)
    log.info("request headers: Authorization: Bearer %s", jwt)
    log.info("headers=%s", {"Authorization": f"Basic {basic}", "Accept": "application/json"})
    log.warning("login failed for user=alice password=%s", password)
    log.info(
        "connect",
        extra={
            "password": password,
            "config": {"client_secret": "x" + password, "uri": f"mongodb://u:{password}@db:27017"},
        },
    )
    log.info("auth", extra={"api_key": key, "note": f"got {key}"})
    try:
        raise ValueError(f"bad token={password} key {key}")
    except ValueError:
        log.exception("failed")
    out = log_stream.getvalue()
    for secret in SECRETS:
        assert secret not in out, secret
    lines = _lines(log_stream)
    assert len(lines) == 7
    assert lines[0]["msg"] == "created api key [REDACTED] for alice"
    assert "[REDACTED]" in str(lines[1]["msg"]) and "Authorization" in str(lines[1]["msg"])
    assert "application/json" in str(lines[2]["msg"])
    assert "user=alice" in str(lines[3]["msg"])
    assert lines[4]["password"] == "[REDACTED]"
    assert lines[4]["config"] == {"client_secret": "[REDACTED]", "uri": "mongodb://u:[REDACTED]@db:27017"}
    assert "ValueError" in str(lines[6]["exc"])


def test_redaction_in_text_format() -> None:
    stream = io.StringIO()
    handler = setup_logging(TelemetrySettings(log_format="text"), "svc", stream=stream)
    try:
        logging.getLogger("hanzo.test").warning("key %s", SECRETS[0], extra={"token": "abc123"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue()
    assert SECRETS[0] not in line and "abc123" not in line
    assert "WARNING" in line and "service=svc" in line


@pytest.mark.parametrize(
    "text",
    [
        "pulled library/alpine:3.19@sha256:" + "ab" * 32,
        "GET /v2/library/alpine/manifests/latest 200",
        "scan of sha256:abc found 3 critical",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text", ["a-" * 50_000 + "password", "x://" + "a:" * 50_000, "a." * 50_000])
def test_redact_is_linear_on_long_words(text: str) -> None:
    started = time.monotonic()
    redact(text)
    # Quadratic patterns take tens of seconds here; linear ones well under one.
    assert time.monotonic() - started < 5
