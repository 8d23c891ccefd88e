"""Dashboards (deploy/grafana/*.json) and the chart's alert rules use exactly the metric names the services
export: every name in every expression is checked against a scrape of the metrics of all services built
together (as `serve` builds them), so a metric a service registers at start counts, and a renamed one fails."""

from __future__ import annotations

import pytest

from tests.dashboards import DASHBOARDS, NAME, alert_rules, dashboard_exprs, dashboards, exported_names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names in the /metrics text of every service built into one registry (the embedded assembly)."""
    import asyncio

    from services.cli.main import SERVICES
    from services.core.bootstrap import container
    from services.core.settings import load_settings
    from services.core.telemetry import Metrics

    async def scrape() -> str:
        import importlib

        settings = load_settings(data_dir=tmp_path_factory.mktemp("scrape"), auth={"mode": "none"})
        metrics = Metrics()
        async with container(settings, metrics=metrics) as c:
            for name in SERVICES:
                await importlib.import_module(f"services.{name}.service").build(c)
            body, _ = metrics.render()
        return body.decode()

    return exported_names(asyncio.run(scrape()))


def test_every_dashboard_metric_exists(exported: set[str]) -> None:
    assert len(dashboards()) >= 2
    for path in dashboards():
        used = {name for expr in dashboard_exprs(path) for name in NAME.findall(expr)}
        assert used, f"{path.name} queries no hanzo_registry_ metric"
        assert used <= exported, f"{path.name} uses unknown metrics: {sorted(used - exported)}"


def test_every_alert_metric_exists(exported: set[str]) -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        used = set(NAME.findall(rule["expr"]))
        assert used, f"{rule['alert']} queries no hanzo_registry_ metric"
        assert used <= exported, f"{rule['alert']} uses unknown metrics: {sorted(used - exported)}"


def test_the_issue_panels_are_there() -> None:
    exprs = " ".join(dashboard_exprs(DASHBOARDS / "hanzo-registry-services.json"))
    for needle in ("hanzo_registry_event_consumer_lag", 'service="scanner"', "hanzo_registry_gc_runs_total",
                   "hanzo_registry_gc_bytes_freed_total", "hanzo_registry_replication_lag_seconds_bucket",
                   "hanzo_registry_signature_failures_total", 'result="hit"',
                   "hanzo_registry_webhook_deliveries_total", "hanzo_registry_scan_duration_seconds_bucket",
                   "hanzo_registry_scans_total", "hanzo_registry_scan_requests_queued"):
        assert needle in exprs, needle
