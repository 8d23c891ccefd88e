"""`hanzo-registry replication status [RULE]` and `hanzo-registry replication resync RULE`: replication state
over the management API (registry admins); the command's options are in services/cli/management.py."""

from __future__ import annotations

import json
import sys
from typing import Any


def status_table(rules: list[dict[str, Any]]) -> str:
    """One row per rule: name, target, status, waiting work and its age, counters, last success and error."""
    if not rules:
        return "no replication rules\n"
    header = ("RULE", "TARGET", "STATUS", "LAG_EVENTS", "LAG_S", "MANIFESTS", "BYTES", "LAST_SUCCESS", "LAST_ERROR")
    rows = [header] + [
        (str(r["name"]), str(r["target"]), str(r["status"]), str(r["lag_events"]), f"{float(r['lag_seconds']):.1f}",
         str(r["copied_manifests"]), str(r["copied_bytes"]), str(r.get("last_success") or "-"),
         (str(r.get("last_error") or "-").splitlines() or ["-"])[0][:80])
        for r in rules
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def main(*, action: str, rule: str, output: str, registry: str | None, user: str, key: str | None) -> int:
    from services.cli import api
    from services.cli import target as targets

    try:
        target = targets.target_from(registry, user, key)
        if action == "resync":
            if not rule:
                print("hanzo-registry replication: resync needs a RULE", file=sys.stderr)
                return 2
            api.call(target, "POST", f"/v1/registry/admin/replication/rules/{rule}/resync")
            if output == "json":
                print(json.dumps({"rule": rule, "resync": "queued"}))
            else:
                print(f"full sync of rule {rule} queued")
            return 0
        answer, _ = api.call(target, "GET", "/v1/registry/admin/replication")
        rules: list[dict[str, Any]] = json.loads(answer)["rules"]
        if rule:
            rules = [r for r in rules if r["name"] == rule]
            if not rules:
                print(f"hanzo-registry replication: no rule {rule!r}", file=sys.stderr)
                return 1
        if output == "json":
            print(json.dumps({"rules": rules}, indent=2))
        else:
            print(status_table(rules), end="")
        return 0
    except targets.TagCommandError as exc:
        print(f"hanzo-registry replication: {exc}", file=sys.stderr)
        return exc.exit_code
