"""The scanner's metrics: scans by trigger and status, their durations, findings by severity, queued requests.

Consumer lag on the manifests topic says how far behind pushes the scanner is; these say what it does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.core.telemetry import Metrics, registered

SCAN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class ScannerMetrics:
    def __init__(self, metrics: Metrics) -> None:
        reg: CollectorRegistry = metrics.registry
        self.scans = registered(metrics, "hanzo_registry_scans", lambda: Counter(
            "hanzo_registry_scans_total",
            "Scans finished, by trigger (push, request, rematch) and the report's status (complete, failed, "
            "unsupported).", ["trigger", "status"], registry=reg))
        self.duration = registered(metrics, "hanzo_registry_scan_duration_seconds", lambda: Histogram(
            "hanzo_registry_scan_duration_seconds",
            "From the start of a scan (push or request) to its report being stored.",
            ["trigger"], buckets=SCAN_BUCKETS, registry=reg))
        self.findings = registered(metrics, "hanzo_registry_scan_findings", lambda: Counter(
            "hanzo_registry_scan_findings_total",
            "Findings in the reports the scanner stored, by severity (not ignored ones' suppression: the raw "
            "findings).", ["severity"], registry=reg))
        self.queued = registered(metrics, "hanzo_registry_scan_requests_queued", lambda: Gauge(
            "hanzo_registry_scan_requests_queued",
            "Re-scan requests waiting (API, gRPC or CLI), as the scanner last read them.", registry=reg))
