"""Pull gates' cost on the manifest GET path (issue 8, item 5): the embedded registry without a policy and
with one that turns every gate on (scan and signature gates, with `unscanned`/`unsigned: allow` so each
GET runs them and succeeds), interleaved in rounds so machine noise hits both alike.

Target: manifest GET rate with the policy at least 0.9x the rate without. Run: `python -m bench.gates`
(`make bench` runs it after bench.run). Writes reports/bench-gates.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench import ops
from bench.load import run_load
from bench.targets import cpu_seconds, make_target, tree

GATED_ENV = {
    "HANZO_REGISTRY_POLICY__DEFAULT__SCAN__ENABLED": "true",
    "HANZO_REGISTRY_POLICY__DEFAULT__SCAN__SEVERITY_GATE": "critical",
    "HANZO_REGISTRY_POLICY__DEFAULT__SCAN__UNSCANNED": "allow",
    "HANZO_REGISTRY_POLICY__DEFAULT__SIGNING__VERIFY_SIGNATURE": "true",
    "HANZO_REGISTRY_POLICY__DEFAULT__SIGNING__UNSIGNED": "allow",
}
PATH = "/v2/bench/gated/manifests/latest"


async def _rps(port: int, pid: int, *, seconds: float, conns: int, procs: int) -> float:
    result = await run_load(
        port=port,
        scenario={"kind": "manifest-get", "path": PATH, "accept": ops.OCI_MANIFEST},
        procs=procs,
        conns=conns,
        duration=seconds,
        warmup=1.0,
        server_cpu=lambda: cpu_seconds(tree(pid)),
        infra_cpu=lambda: 0.0,
    )
    if result.errors:
        raise ops.BenchError(f"{result.errors} manifest GETs failed: {' | '.join(result.first_errors)}")
    return float(result.rps)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hzr-bench-gates-"))
    targets = {"plain": make_target("embedded", root / "plain"), "gated": make_target("embedded", root / "gated")}
    targets["gated"].env.update(GATED_ENV)
    try:
        for target in targets.values():
            target.start()
        for target in targets.values():
            await target.wait_ready()
            async with aiohttp.ClientSession() as http:
                await ops.Client(http, target.base).image("bench/gated", "latest")
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for round_ in range(args.rounds):
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))  # ABBA
            for name in order:
                t = targets[name]
                rates[name].append(await _rps(t.port, t.pid, seconds=args.seconds, conns=args.conns, procs=args.procs))
        plain, gated = statistics.median(rates["plain"]), statistics.median(rates["gated"])
        return {
            "manifest_get_rps_without_policy": round(plain, 1),
            "manifest_get_rps_with_policy": round(gated, 1),
            "ratio": round(gated / plain, 3) if plain else None,
            "target": ">= 0.9",
            "rounds": rates,
            "gated_policy_env": GATED_ENV,
        }
    finally:
        for target in targets.values():
            target.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--out", default="reports/bench-gates.json")
    args = parser.parse_args(argv)
    report = asyncio.run(amain(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))
    ratio = report["ratio"]
    return 0 if ratio is not None and ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
