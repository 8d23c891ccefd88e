"""Severity of an OSV record for one affected package: the CVSS v4/v3 (or v2) base score computed from the
vectors (`cvss`), banded; the record's own label (GHSA `database_specific.severity`, Ubuntu priorities);
the worse of the two, else `unknown`."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

ORDER = ("unknown", "low", "medium", "high", "critical")
_LABELS = {"negligible": "low", "unimportant": "low", "low": "low", "moderate": "medium", "medium": "medium",
           "high": "high", "important": "high", "critical": "critical"}


def band(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0.0:
        return "low"
    return "unknown"


@functools.lru_cache(maxsize=50_000)
def vector_score(kind: str, vector: str) -> float | None:
    """The base score of a CVSS vector, or None when it does not parse (a score given as a number is taken)."""
    try:
        if kind == "CVSS_V4":
            return float(CVSS4(vector).base_score)
        if kind == "CVSS_V3":
            return float(CVSS3(vector).scores()[0])
        if kind == "CVSS_V2":
            return float(CVSS2(vector).scores()[0])
    except (CVSSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        try:
            return float(vector)
        except ValueError:
            return None
    return None


def _labels(*sources: Any) -> Iterable[str]:
    for src in sources:
        if isinstance(src, dict):
            for k in ("severity", "urgency", "priority"):
                v = src.get(k)
                if isinstance(v, str) and v.lower() in _LABELS:
                    yield _LABELS[v.lower()]


def assess(record: dict[str, Any], affected: dict[str, Any]) -> tuple[str, float | None]:
    """(severity, cvss score) of `record` for one of its `affected` entries."""
    entries = affected.get("severity") or record.get("severity") or []
    score: float | None = None
    preferred = {"CVSS_V4": 3, "CVSS_V3": 2, "CVSS_V2": 1}
    best_rank = 0
    labels: list[str] = []
    for s in entries if isinstance(entries, list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("score"), str):
            continue
        kind = str(s.get("type", ""))
        if kind in preferred:
            value = vector_score(kind, s["score"])
            if value is not None and preferred[kind] >= best_rank:
                score, best_rank = value, preferred[kind]
        elif s["score"].lower() in _LABELS:
            labels.append(_LABELS[s["score"].lower()])
    labels += _labels(record.get("database_specific"), affected.get("database_specific"),
                      affected.get("ecosystem_specific"))
    levels = [band(score)] if score is not None else []
    levels += labels
    if not levels:
        return "unknown", score
    return max(levels, key=ORDER.index), score
