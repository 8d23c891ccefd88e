"""`hanzo-registry gc run [--dry-run] [--wait]` and `hanzo-registry gc history`: garbage collection over
the management API (registry admins)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from services.cli.api import call as _call
from services.cli.api import connect
from services.cli.target import TagCommandError, Target

PATH = "/v1/registry/admin/gc"
POLL_SECONDS = 1.0


def run(target: Target, *, dry_run: bool = False, grace_seconds: float | None = None) -> str:
    """Start a run; its id. A run already in progress: TagCommandError naming it (exit 1)."""
    body = {"dry_run": dry_run, "grace_seconds": grace_seconds, "trigger": "cli"}
    answer, _ = _call(connect(target), "POST", PATH, body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
    return str(json.loads(answer)["id"])


def details(target: Target, run_id: str, *, limit: int = 1000) -> dict[str, Any]:
    answer, _ = _call(target, "GET", f"{PATH}/runs/{run_id}?limit={limit}")
    result: dict[str, Any] = json.loads(answer)
    return result


def wait(target: Target, run_id: str, *, timeout: float | None = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll the run until it is no longer running; its details."""
    target = connect(target)
    deadline = None if timeout is None else clock() + timeout
    while True:
        record = details(target, run_id)
        if record["status"] != "running":
            return record
        if deadline is not None and clock() >= deadline:
            raise TagCommandError(f"GC run {run_id} is still running", exit_code=1)
        sleep(POLL_SECONDS)


def history(target: Target, *, limit: int = 20) -> list[dict[str, Any]]:
    answer, _ = _call(connect(target), "GET", f"{PATH}/history?limit={limit}")
    runs: list[dict[str, Any]] = json.loads(answer)["runs"]
    return runs


def summary(record: dict[str, Any]) -> str:
    """One line per run: id, status, trigger, counts."""
    mode = " (dry run)" if record.get("dry_run") else ""
    return (f"{record['id']}  {record['status']}{mode}  {record['trigger']}  started {record['started']}  "
            f"manifests {record['manifests_deleted']}  blobs {record['blobs_deleted']}  "
            f"bytes {record['bytes_freed']}  errors {record['errors']}")


def history_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no GC runs yet\n"
    header = ("ID", "STATUS", "TRIGGER", "DRY", "STARTED", "FINISHED", "MANIFESTS", "BLOBS", "BYTES", "ERRORS")
    rows = [header] + [
        (r["id"], r["status"], r["trigger"], "yes" if r["dry_run"] else "no", str(r["started"]),
         str(r["finished"] or "-"), str(r["manifests_deleted"]), str(r["blobs_deleted"]), str(r["bytes_freed"]),
         str(r["errors"]))
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)
