"""Dashboards use exactly the metric names the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from services.core.telemetry import Metrics

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _exported() -> set[str]:
    names: set[str] = set()
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            names.add(metric._name)
            names.update(metric._name + suffix for suffix in SUFFIXES)
    return names


def test_every_dashboard_metric_exists() -> None:
    exported = _exported()
    dashboards = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert dashboards
    for path in dashboards:
        doc = json.loads(path.read_text())
        exprs = [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]
        used = {name for expr in exprs for name in re.findall(r"hanzo_registry_[a-z_]+", expr)}
        assert used, f"{path.name} queries no hanzo_registry_ metric"
        assert used <= exported, f"{path.name} uses unknown metrics: {sorted(used - exported)}"
