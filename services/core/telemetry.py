"""Telemetry every service shares: Prometheus metrics, OpenTelemetry tracing (W3C propagation), JSON logs."""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final, TextIO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.core.settings import TelemetrySettings

__all__ = [
    "JsonFormatter",
    "Metrics",
    "RedactingFilter",
    "TextFormatter",
    "dict_to_kafka_headers",
    "extract_context",
    "extract_grpc_context",
    "inject_grpc_metadata",
    "inject_headers",
    "iso_time",
    "kafka_headers_to_dict",
    "redact",
    "setup_logging",
    "setup_tracing",
]

# ---------------------------------------------------------------------------------------------- metrics

# Registry requests range from sub-millisecond HEADs to multi-minute blob uploads.
HTTP_DURATION_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
GC_DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0)


def _package_version() -> str:
    try:
        return metadata.version("hanzo-registry")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The metric families every service exports, in a registry of their own (not the global default, so
    tests and the embedded assembly can build as many as they like). Names are `hanzo_registry_*`; the
    Grafana dashboards in deploy/grafana/ use exactly these.

    Labels: `service` is the service name ("distribution", "scanner", ...); `route` is the route template
    (never the raw path: repository names would explode cardinality); `direction` is "in" (received, e.g.
    a blob upload) or "out" (sent, e.g. a blob download); `outcome` is "ok", "retry" or "dead_letter";
    `code` is the gRPC status code name ("OK", "NOT_FOUND", ...).
    """

    def __init__(self, *, version: str | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter(
            "hanzo_registry_http_requests_total",
            "HTTP requests answered.",
            ["service", "method", "route", "status"],
            registry=reg,
        )
        self.http_request_duration = Histogram(
            "hanzo_registry_http_request_duration_seconds",
            "HTTP request latency, from the first byte received to the last byte sent.",
            ["service", "method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=reg,
        )
        self.blob_bytes = Counter(
            "hanzo_registry_blob_bytes_total",
            "Blob bytes received (direction=in) and sent (direction=out).",
            ["service", "direction"],
            registry=reg,
        )
        self.events_published = Counter(
            "hanzo_registry_events_published_total",
            "Events published to the event log.",
            ["topic"],
            registry=reg,
        )
        self.events_consumed = Counter(
            "hanzo_registry_events_consumed_total",
            "Events handled by a consumer, by outcome (ok, duplicate, dead-letter).",
            ["service", "topic", "outcome"],
            registry=reg,
        )
        self.event_consumer_lag = Gauge(
            "hanzo_registry_event_consumer_lag",
            "Records in a partition not yet consumed by the service's consumer group.",
            ["service", "topic", "partition"],
            registry=reg,
        )
        self.outbox_pending = Gauge(
            "hanzo_registry_outbox_pending",
            "Events written to the outbox and not yet published.",
            registry=reg,
        )
        self.dead_letters = Counter(
            "hanzo_registry_dead_letters_total",
            "Records moved to a dead-letter topic.",
            ["service", "topic"],
            registry=reg,
        )
        self.grpc_requests = Counter(
            "hanzo_registry_grpc_requests_total",
            "gRPC requests served, by status code.",
            ["service", "method", "code"],
            registry=reg,
        )
        self.gc_runs = Counter(
            "hanzo_registry_gc_runs_total",
            "GC runs finished, by status (succeeded, failed) and trigger (schedule, api, cli).",
            ["status", "trigger"],
            registry=reg,
        )
        self.gc_run_duration = Histogram(
            "hanzo_registry_gc_run_duration_seconds",
            "How long a GC run took, from its start to its record (dry_run: true or false).",
            ["dry_run"],
            buckets=GC_DURATION_BUCKETS,
            registry=reg,
        )
        self.gc_deleted = Counter(
            "hanzo_registry_gc_deleted_total",
            "What GC runs deleted, by kind (manifest, blob, upload); dry runs count nothing.",
            ["kind"],
            registry=reg,
        )
        self.gc_bytes_freed = Counter(
            "hanzo_registry_gc_bytes_freed_total",
            "Blob bytes GC runs deleted from storage; dry runs count nothing.",
            registry=reg,
        )
        self.gc_errors = Counter(
            "hanzo_registry_gc_errors_total",
            "Errors GC runs met (a blob or manifest left for the next run, or a failed run).",
            registry=reg,
        )
        self.gc_last_success_age = Gauge(
            "hanzo_registry_gc_last_success_age_seconds",
            "Seconds since the last GC run that succeeded (not a dry run) finished; NaN before the first one. "
            "Exported by the gc service.",
            registry=reg,
        )
        self.cache_requests = Counter(
            "hanzo_registry_cache_requests_total",
            "Pull-through cache lookups per remote and kind (manifest, blob), by result: hit (no upstream fetch, "
            "a fetch in flight joined included), miss (started a fetch from upstream), "
            "stale (served from cache because the upstream failed).",
            ["remote", "kind", "result"],
            registry=reg,
        )
        self.cache_upstream_errors = Counter(
            "hanzo_registry_cache_upstream_errors_total",
            "Failed upstream requests of the pull-through cache, by reason (unreachable, timeout, 429, 5xx, ...).",
            ["remote", "reason"],
            registry=reg,
        )
        self.cache_bytes = Counter(
            "hanzo_registry_cache_bytes_total",
            "Bytes the pull-through cache served, from the cache (source=cache) or fetched from upstream.",
            ["remote", "source"],
            registry=reg,
        )
        self.cache_upstream_seconds = Histogram(
            "hanzo_registry_cache_upstream_seconds",
            "Latency of upstream requests of the pull-through cache (a blob: until its last byte).",
            ["remote", "kind"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=reg,
        )
        self.build_info = Gauge(
            "hanzo_registry_build_info",
            "Always 1; the version label says which build is running.",
            ["version"],
            registry=reg,
        )
        self.build_info.labels(version=version or _package_version()).set(1)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric: (body, Content-Type) for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------------------------- tracing

# Stateless: always W3C trace context, whatever OTEL_PROPAGATORS says, because our envelopes and
# headers carry exactly traceparent/tracestate.
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def registered(metrics: Metrics, name: str, make: Callable[[], Any]) -> Any:
    """The collector already registered under `name` in these metrics, else `make()` (which registers it).

    A service's own families are created when it is built; the embedded assembly and the tests build a
    service more than once over one Metrics, and prometheus_client refuses a second registration."""
    existing = getattr(metrics.registry, "_names_to_collectors", {}).get(name)
    return existing if existing is not None else make()


def setup_tracing(settings: TelemetrySettings, service_name: str, *, set_global: bool = True) -> TracerProvider:
    """Build the tracer provider for a service and (by default) install it as the global one.

    Exporter "none" records spans without exporting them, so trace ids still reach logs, envelopes and
    downstream services. OpenTelemetry lets the global provider be set once per process: the embedded
    assembly calls this once; tests pass `set_global=False` and use `provider.get_tracer()`.
    Call `provider.shutdown()` at exit to flush exported spans.
    """
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.namespace": "hanzo-registry"})
    )
    if settings.traces_exporter == "otlp":
        endpoint = settings.otlp_endpoint
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")))
        )
    elif settings.traces_exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(service_name=service_name)))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def inject_headers(context: Context | None = None) -> dict[str, str]:
    """W3C headers (`traceparent`, and `tracestate` when set) of `context` (default: the current one).
    Empty when there is no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str], context: Context | None = None) -> Context:
    """A context whose parent span is the one `headers` describe (HTTP, Kafka or envelope fields).
    Header names are matched case-insensitively; malformed or absent headers give a context without
    a remote parent, never an error."""
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in _PROPAGATOR.fields}
    return _PROPAGATOR.extract(carrier, context=context)


def kafka_headers_to_dict(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Kafka/EventLog record headers as a str dict (UTF-8, invalid bytes replaced; later duplicates win)."""
    return {key: (value or b"").decode("utf-8", errors="replace") for key, value in headers}


def dict_to_kafka_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """A str dict (e.g. from `inject_headers()`) as Kafka/EventLog record headers, in sorted key order."""
    return [(key, headers[key].encode("utf-8")) for key in sorted(headers)]


def inject_grpc_metadata(
    metadata: Iterable[tuple[str, str | bytes]] = (), context: Context | None = None
) -> list[tuple[str, str | bytes]]:
    """Client side: `metadata` plus the W3C headers of `context` (default: the current one), to pass as
    `metadata=` of a gRPC call. Existing trace headers in `metadata` are replaced."""
    trace_headers = inject_headers(context)
    kept = [(k, v) for k, v in metadata if k.lower() not in trace_headers]
    return kept + sorted(trace_headers.items())


def extract_grpc_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """Server side: the context of the caller's span, from `servicer_context.invocation_metadata()`."""
    headers = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return extract_context(headers)


# ---------------------------------------------------------------------------------------------- logging

REDACTED: Final = "[REDACTED]"

# Each pattern keeps group 1 (the name and separator) and replaces the rest of the match.
_SECRET_PATTERNS: Final = (
    # Authorization / Proxy-Authorization headers, with or without an auth scheme, in text or reprs.
    re.compile(
        r"""(?i)(\b(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)(?:(?:bearer|basic|digest|token)\s+)?[^\s'",;}]+"""
    ),
    # key=value / key: value / "key": "value" where the key names a secret (password=, token=, client_secret).
    re.compile(
        # Bounded name parts keep matching linear on long runs of word characters.
        r"""(?i)(\b[\w.-]{0,40}?(?:password|passwd|secret|token|api[_-]?key|credential)[\w.-]{0,40}"""
        r"""['"]?\s*[:=]\s*['"]?)"""
        r"""[^\s'",;&}]+"""
    ),
    # A bearer credential on its own.
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    # Credentials in URLs: scheme://user:password@host.
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,30}://[^/\s:@]{1,256}:)[^/\s@]{1,256}(?=@)"),
)
# Our API keys (hzr_...) and JWTs (our registry tokens) anywhere, e.g. pasted into a repository name.
_SECRET_TOKENS: Final = re.compile(r"\bhzr_[A-Za-z0-9_\-.]+|\beyJ[\w-]+\.[\w-]+\.[\w-]+")
_SECRET_KEY: Final = re.compile(
    r"(?i)pass(?:word|wd)?|secret|token|authorization|api[_-]?key|credential|cookie|private[_-]?key"
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "service",
    "trace_id",
    "span_id",
}


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by [REDACTED]."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_TOKENS.sub(REDACTED, text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value("", v) for v in value]
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", errors="replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Arbitrary objects are rendered as text later; redact that text now.
    return redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


CONSOLE_QUIET: Final = "_console_quiet"
"""Set `extra={CONSOLE_QUIET: (...names)}` to keep those `extra=` fields out of console lines (the message
already says them, e.g. the access log); JSON lines keep every field."""


class RedactingFilter(logging.Filter):
    """Removes credentials from a record before any handler formats it: the message (after %-formatting),
    every `extra=` value (whole values under secret-looking keys) and the exception text.
    Attach it to handlers: a handler filter sees records from every logger, a logger filter does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(key, value))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _ContextFilter(logging.Filter):
    """Stamps the service name and the current span's ids on each record, at the time of the log call."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service_name
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        return True


def iso_time(ts: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.000Z: how times appear in logs."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timestamp(record: logging.LogRecord) -> str:
    return iso_time(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, service, trace_id, span_id (inside a span),
    exc (with an exception), then the record's `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("service", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        return json.dumps(entry, ensure_ascii=False, default=str)


_COLOURS: Final = {"DEBUG": "\033[2m", "INFO": "\033[32m", "WARNING": "\033[33m", "ERROR": "\033[31m"}
_DIM, _RESET = "\033[2m", "\033[0m"


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal: time, level, logger, message, then key=value extras
    (levels coloured when `colour`)."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname:<7}"
        if self.colour:
            level = _COLOURS.get(record.levelname, "\033[1;31m") + level + _RESET
        parts = [_timestamp(record), level, record.name, record.getMessage()]
        quiet = set(getattr(record, CONSOLE_QUIET, ()))
        fields = {k: getattr(record, k, None) for k in ("service", "trace_id")} | _extras(record)
        extra = [f"{k}={v}" for k, v in fields.items() if v is not None and v != "" and k not in quiet]
        if extra and self.colour:
            extra = [_DIM + " ".join(extra) + _RESET]
        line = " ".join(parts + extra)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


LIBRARY_LOGGERS = ("pymongo", "aiokafka", "kafka", "minio", "urllib3", "grpc", "asyncio", "aiosqlite")


class _ServiceHandler(logging.StreamHandler[TextIO]):
    """Marks the handler setup_logging installed, so calling it again replaces rather than duplicates."""


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def log_formatter(log_format: str, stream: TextIO) -> logging.Formatter:
    """The formatter `telemetry.log_format` stands for on `stream`: auto is console lines on a terminal and
    JSON lines otherwise (a file, a pipe, a log collector); console (or text) is coloured on a terminal."""
    terminal = _is_terminal(stream)
    if log_format == "json" or (log_format == "auto" and not terminal):
        return JsonFormatter()
    return TextFormatter(colour=terminal)


def setup_logging(settings: TelemetrySettings, service_name: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to `stream` (default stderr) as JSON lines or console text (per
    `settings.log_format`), with credentials redacted, at `settings.log_level`. Idempotent: replaces the
    handler a previous call installed and leaves other handlers (e.g. pytest's) alone. Returns the handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _ServiceHandler(stream if stream is not None else sys.stderr)
    # Context first: redaction must also see (and keep) what it adds.
    handler.addFilter(_ContextFilter(service_name))
    handler.addFilter(RedactingFilter())
    handler.setFormatter(log_formatter(settings.log_format, handler.stream))
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level)
    # A DEBUG registry should show its own decisions, not every driver command (pymongo logs each
    # command and reply, which buries them and puts document contents in the log).
    library_level = max(level, logging.getLevelName(settings.library_log_level.upper()))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    # urllib3 warns on every retry of a request (minio's S3 calls): an outage would log one line per attempt.
    # The registry logs the outage once itself (services/core/outages.py).
    logging.getLogger("urllib3.connectionpool").setLevel(max(library_level, logging.ERROR))
    return handler
