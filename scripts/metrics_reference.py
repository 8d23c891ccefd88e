"""Print the metrics reference (every hanzo_registry_* metric, its type, labels, meaning) as Markdown.

`python scripts/metrics_reference.py --check README.md` fails when the README's table is stale;
`--write README.md` refreshes it. Dashboards and alerts should use exactly these names.
"""

from __future__ import annotations

import sys

from prometheus_client.metrics import MetricWrapperBase
from readme_section import run  # a sibling: these scripts run as files

from services.core.telemetry import Metrics


def table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type
        name = metric._name + ("_total" if kind == "counter" else "")  # as exposed
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "-"
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    return run(argv, section="metrics-reference", script="scripts/metrics_reference.py", table=table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
