"""The webhooks service's metrics: deliveries by outcome, their duration, and the queue."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.core.telemetry import Metrics

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WebhookMetrics:
    def __init__(self, metrics: Metrics) -> None:
        reg: CollectorRegistry = metrics.registry
        existing = getattr(reg, "_names_to_collectors", {})
        found = existing.get("hanzo_registry_webhook_deliveries")
        if found is not None:  # a second build in the same registry (tests)
            self.deliveries = found
            self.duration = existing["hanzo_registry_webhook_delivery_duration_seconds"]
            self.queued = existing["hanzo_registry_webhook_deliveries_queued"]
            return
        self.deliveries = Counter(
            "hanzo_registry_webhook_deliveries_total",
            "Webhook delivery attempts, by event and outcome (succeeded, retry, failed: gave up).",
            ["event", "outcome"], registry=reg)
        self.duration = Histogram(
            "hanzo_registry_webhook_delivery_duration_seconds", "Time of one webhook delivery attempt.",
            buckets=DURATION_BUCKETS, registry=reg)
        self.queued = Counter(
            "hanzo_registry_webhook_deliveries_queued_total", "Webhook deliveries queued, by event.", ["event"],
            registry=reg)
