"""Print the metrics reference (every hanzo_registry_* metric, its type, labels, meaning) as Markdown.

`python scripts/metrics_reference.py --check README.md` fails when the README's table is stale;
`--write README.md` refreshes it. Dashboards and alerts should use exactly these names.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from services.core.telemetry import Metrics

BEGIN, END = "<!-- metrics-reference:begin -->", "<!-- metrics-reference:end -->"
_SUFFIX = {"counter": "_total", "histogram": "_bucket / _sum / _count"}


def table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type
        name = metric._name + (_SUFFIX[kind].split(" ")[0] if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "-"
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv[:1] in (["--check"], ["--write"]):
        path = Path(argv[1])
        text = path.read_text()
        before, rest = text.split(BEGIN, 1)
        current, after = rest.split(END, 1)
        if argv[0] == "--check":
            if current.strip() != table():
                print("README metrics reference is stale: run `python scripts/metrics_reference.py --write README.md`")
                return 1
            return 0
        path.write_text(f"{before}{BEGIN}\n{table()}\n{END}{after}")
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
