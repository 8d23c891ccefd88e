"""`hanzo-registry replication status [RULE]` and `hanzo-registry replication resync RULE`: replication state
over the management API (registry admins). Argparse only at import, so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any, epilog: str) -> None:
    """Register `replication` on `sub` (the subparsers of `hanzo-registry`)."""
    cmd = sub.add_parser("replication", help="replication rules' state (status) or a full sync of one (resync), "
                         "over the management API (registry admins)", epilog=epilog,
                         formatter_class=argparse.RawTextHelpFormatter)
    cmd.add_argument("action", choices=["status", "resync"],
                     help="status: per rule its state, lag, last error and counters; resync: queue a full sync")
    cmd.add_argument("rule", nargs="?", default="", help="status: only this rule; resync: the rule (required)")
    cmd.add_argument("-o", "--output", choices=["text", "json"], default="text", help="text (default) or json")
    cmd.add_argument("--registry", help="as for tag")
    cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")


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


def main(args: argparse.Namespace) -> int:
    from services.cli import tag as tag_command

    try:
        target = tag_command.connect(tag_command.target_from(args.registry, args.user, args.key))
        if args.action == "resync":
            if not args.rule:
                print("hanzo-registry replication: resync needs a RULE", file=sys.stderr)
                return 2
            tag_command._call(target, "POST", f"/v1/registry/admin/replication/rules/{args.rule}/resync")
            print(f"full sync of rule {args.rule} queued")
            return 0
        answer, _ = tag_command._call(target, "GET", "/v1/registry/admin/replication")
        rules: list[dict[str, Any]] = json.loads(answer)["rules"]
        if args.rule:
            rules = [r for r in rules if r["name"] == args.rule]
            if not rules:
                print(f"hanzo-registry replication: no rule {args.rule!r}", file=sys.stderr)
                return 1
        if args.output == "json":
            print(json.dumps({"rules": rules}, indent=2))
        else:
            print(status_table(rules), end="")
        return 0
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry replication: {exc}", file=sys.stderr)
        return exc.exit_code
