"""The results table (text and Markdown), the JSON report and the PASS/MISS target checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 1


METRICS = [
    Metric("push_mono", "blob push, monolithic POST+PUT", "MiB/s", True),
    Metric("push_chunked", "blob push, 8 MiB PATCH chunks", "MiB/s", True),
    Metric("pull", "blob pull (GET, verified untimed)", "MiB/s", True),
    Metric("manifest_get", "manifest GET by tag, 32 clients", "req/s", True, 0),
    Metric("manifest_get_p99", "manifest GET p99 latency", "ms", False, 2),
    Metric("manifest_get_cpu", "registry CPU during manifest GET", "% of 1 core", False, 0),
    Metric("manifest_get_infra", "Kafka+FerretDB+SeaweedFS CPU during manifest GET", "% of 1 core", False, 0),
    Metric("manifest_get_machine", "machine CPU during manifest GET (all processes)", "% of 1 core", False, 0),
    Metric("manifest_head", "manifest HEAD by tag, 32 clients", "req/s", True, 0),
    Metric("small_push", "1 KiB blob pushes", "blobs/s", True, 0),
    Metric("tags_create", "tag 1,000 manifests (PUT by tag)", "req/s", True, 0),
    Metric("tags_full", "tags/list, 1,000 tags, one request", "ms", False, 2),
    Metric("tags_full_first", "tags/list, the first one request after the pushes", "ms", False, 2),
    Metric("tags_paged", "tags/list, 1,000 tags, n=100 pages", "ms", False, 2),
    Metric("tags_page", "tags/list, one n=100 page of that walk", "ms", False, 2),
    Metric("big_push", "large streaming push (RSS run)", "MiB/s", True),
    Metric("rss_before", "registry RSS before the large push", "MiB", False),
    Metric("rss_peak", "registry peak RSS during the large push", "MiB", False),
]
BY_KEY = {m.key: m for m in METRICS}
COLUMNS = ("embedded", "distributed", "distribution", "distribution-s3")
REFERENCES: list[tuple[str, str, str]] = [
    ("embedded", "distribution", "local disk"),
    ("distributed", "distribution", "local disk"),
    ("distributed", "distribution-s3", "same SeaweedFS"),
]
"""(Hanzo assembly, CNCF Distribution column it is compared with, that column's storage): the ratio columns of
the table and the target checks. The embedded assembly (local disk) is judged against Distribution on local
disk; the distributed one (SeaweedFS) against Distribution on the same SeaweedFS and on local disk."""


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not math.isnan(a) and not math.isnan(b):
        return f"{a / b:.2f}x"
    return "-"


def rows(results: dict[str, dict[str, Any]], targets: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "unit", *[t for t in COLUMNS if t in targets]]
    ratios = [(t, ref) for t, ref, _ in REFERENCES if t in targets and ref in targets]
    header += [f"{t}/{ref}" for t, ref in ratios]
    body = []
    for m in METRICS:
        values = [results.get(t, {}).get(m.key) for t in COLUMNS if t in targets]
        if all(v is None for v in values):
            continue
        arrow = "↑" if m.higher_is_better else "↓"
        row = [f"{m.label} {arrow}", m.unit, *[_fmt(v, m.digits) for v in values]]
        row += [_ratio(results.get(t, {}).get(m.key), results.get(ref, {}).get(m.key)) for t, ref in ratios]
        body.append(row)
    return header, body


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(header), line, *(fmt(r) for r in body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


RULES: list[tuple[str, str, float]] = [
    ("pull", "blob pull >= Distribution", 1.0),
    ("push_mono", "blob push (monolithic) >= Distribution", 1.0),
    ("push_chunked", "blob push (chunked) >= Distribution", 1.0),
    ("manifest_get", "manifest GET >= 0.5x Distribution", 0.5),
]


PAIR_RULES: list[tuple[str, str, str, str, float]] = [
    ("distributed", "distribution", "manifest_get", "manifest GET >= 1.0x Distribution (issue 10)", 1.0),
    ("embedded", "distribution", "tags_create", "tag PUT >= 1.0x Distribution (issue 10)", 1.0),
    ("distributed", "distribution-s3", "tags_create", "tag PUT >= 1.0x Distribution (issue 10)", 1.0),
    ("distributed", "distribution-s3", "tags_full", "tags/list time <= 1.0x Distribution (issue 10)", 1.0),
]
"""Targets of one (assembly, reference) pair: (assembly, reference, metric, label, factor); a metric where lower
is better (METRICS) passes at most `factor` times the reference, the others at least."""


def _judge(a: Any, b: Any, factor: float, higher: bool) -> tuple[str, str]:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "ERROR", "not measured"
    ok = a >= factor * b if higher else a <= factor * b
    return "PASS" if ok else "MISS", f"{a:,.2f} vs {factor:g} x {b:,.2f} ({a / b:.2f}x)"


def subject(check: dict[str, Any]) -> str:
    """What a check judges: `distributed vs distribution-s3 (same SeaweedFS)`, or the target alone."""
    if check.get("reference"):
        return f"{check['target']} vs {check['reference']} ({check['storage']})"
    return str(check["target"])


def checks(results: dict[str, dict[str, Any]], targets: list[str], rss_limit_mib: float) -> list[dict[str, Any]]:
    """The project's targets: pull/push >= Distribution, manifest GET >= 0.5x, peak RSS < 256 MiB, and PAIR_RULES.

    The ratio checks are made once per (assembly, reference) pair of REFERENCES whose columns both ran."""
    out: list[dict[str, Any]] = []
    for t in ("embedded", "distributed"):
        if t not in targets:
            continue
        mine = results.get(t, {})
        for _, ref_name, storage in [r for r in REFERENCES if r[0] == t and r[1] in targets]:
            ref = results.get(ref_name, {})
            pair = {"target": t, "reference": ref_name, "storage": storage}
            for key, label, factor in RULES:
                status, detail = _judge(mine.get(key), ref.get(key), factor, True)
                out.append({**pair, "check": label, "status": status, "detail": detail})
            for _, _, key, label, factor in [r for r in PAIR_RULES if r[0] == t and r[1] == ref_name]:
                status, detail = _judge(mine.get(key), ref.get(key), factor, BY_KEY[key].higher_is_better)
                out.append({**pair, "check": label, "status": status, "detail": detail})
        peak = mine.get("rss_peak")
        label = f"peak RSS during the large push < {rss_limit_mib:g} MiB"
        if not isinstance(peak, (int, float)):
            out.append({"target": t, "check": label, "status": "ERROR", "detail": "not measured"})
        else:
            status = "PASS" if peak < rss_limit_mib else "MISS"
            out.append({"target": t, "check": label, "status": status, "detail": f"{peak:,.1f} MiB"})
    return out
