"""What the dashboards (deploy/grafana/*.json) and the chart's alert rules query, and what a /metrics text
exports: shared by the unit check (services built in-process) and the scrape of a running `serve`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana"
RULES = ROOT / "deploy" / "helm" / "hanzo-registry" / "files" / "prometheus-rules.yaml"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": (), "summary": ("_sum", "_count", "_created"), "info": ("_info",)}
NAME = re.compile(r"hanzo_registry_[a-z0-9_]+")


def exported_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, with a family's sample suffixes (a family with
    labels and no samples yet still counts: its TYPE line is there)."""
    names: set[str] = set()
    for base, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        names.add(base)
        names.update(base + s for s in SUFFIXES.get(kind, ()))
    names.update(re.findall(r"^(hanzo_registry_[a-z0-9_]+)", text, flags=re.MULTILINE))
    return names


def dashboard_exprs(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    panels = [p for top in doc["panels"] for p in (top, *top.get("panels", []))]
    return [t["expr"] for panel in panels for t in panel.get("targets", [])]


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def alert_rules() -> list[dict[str, str]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def unknown_names(exported: set[str]) -> dict[str, list[str]]:
    """Per dashboard file or alert name, the metric names it queries that `exported` lacks (empty: all good)."""
    missing: dict[str, list[str]] = {}
    for path in dashboards():
        used = {name for expr in dashboard_exprs(path) for name in NAME.findall(expr)}
        if not used or used - exported:
            missing[path.name] = sorted(used - exported) or ["(queries no hanzo_registry_ metric)"]
    for rule in alert_rules():
        used = set(NAME.findall(rule["expr"]))
        if not used or used - exported:
            missing[rule["alert"]] = sorted(used - exported) or ["(queries no hanzo_registry_ metric)"]
    return missing
