"""The replicator's metrics: lag from push to target, bytes and manifests copied, failures, queued work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.core.telemetry import Metrics, registered

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class ReplicatorMetrics:
    def __init__(self, metrics: Metrics) -> None:
        reg: CollectorRegistry = metrics.registry
        self.lag = registered(metrics, "hanzo_registry_replication_lag_seconds", lambda: Histogram(
            "hanzo_registry_replication_lag_seconds",
            "From the event (the push at the source) to the target having it, per rule.",
            ["rule"], buckets=LAG_BUCKETS, registry=reg))
        self.bytes = registered(metrics, "hanzo_registry_replication_bytes", lambda: Counter(
            "hanzo_registry_replication_bytes_total", "Blob bytes uploaded to replication targets.", ["rule"],
            registry=reg))
        self.manifests = registered(metrics, "hanzo_registry_replication_manifests", lambda: Counter(
            "hanzo_registry_replication_manifests_total", "Manifests pushed to replication targets.", ["rule"],
            registry=reg))
        self.failures = registered(metrics, "hanzo_registry_replication_failures", lambda: Counter(
            "hanzo_registry_replication_failures_total",
            "Failed replication attempts (each is retried with backoff), by rule and reason.",
            ["rule", "reason"], registry=reg))
        self.pending = registered(metrics, "hanzo_registry_replication_pending", lambda: Gauge(
            "hanzo_registry_replication_pending", "Queued replication work per rule.", ["rule"], registry=reg))

