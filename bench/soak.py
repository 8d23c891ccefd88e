"""`python -m bench.soak` (issue 19, item 3): a bounded soak of mixed push, pull, tag and delete traffic with a
GC run now and then, on the embedded and the distributed assembly in turn.

Each assembly runs `HANZO_SOAK_SECONDS` (default 600) with `--workers` clients. A worker owns its repositories
and keeps a model of what it pushed (tag -> manifest -> blobs), so every answer has one right value: a pull
fetches a live tag's manifest and one of its blobs and checks both digests, a tag move or a delete must
succeed, and anything else (a 4xx/5xx, a wrong byte, a timeout) counts as an error. Manifests that lose
their last tag are forgotten by the model and left to GC, which runs every `--gc-every` seconds over the
management API (`POST /v1/registry/admin/gc`, grace 60 s, so blobs of a push in flight are never touched)
and must finish `succeeded`.

The distributed assembly is `hanzo-registry distribution` plus `hanzo-registry gc` (its gRPC is how the
gateway triggers runs) on the shared `make infra-up` servers, under a namespace of its own (Mongo database,
S3 prefix and Kafka topics, dropped afterwards, as bench/run.py does). The RSS of every registry process is
sampled every 10 s. Targets: no error, and each process's RSS growth below 10 % from minute 2 to the end
(median of the samples in [2 min, 3 min) against the median of the last minute; scaled down for shorter
runs). Prints a table, writes reports/bench/soak.json, exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import report
from bench.targets import ROOT, Target, cleanup, free_port, make_target, new_namespace, rss_bytes, scratch_root
from services.core.auth.apikeys import generate_key

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OPS = ("push", "pull", "tag", "delete", "gc")
RSS_GROWTH_LIMIT = 0.10
MAX_LIVE_MANIFESTS = 12
"""Per worker: above this many tagged manifests a worker deletes before it pushes again."""
GC_GRACE_SECONDS = 60.0
GC_RUN_TIMEOUT = 600.0
"""A GC run still running after this long is an error."""
MIB = 1 << 20


class SoakError(Exception):
    """A request the soak expected to succeed did not: names the request and the answer."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    digest: str
    manifest: bytes
    blobs: dict[str, bytes]


@dataclass
class Model:
    """What one worker has pushed and not deleted: tags of its repositories and the manifests they name."""

    images: dict[tuple[str, str], Image] = field(default_factory=dict)
    """(repository, manifest digest) -> image, for manifests that still have a tag."""
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    """(repository, tag) -> manifest digest."""

    def point(self, repo: str, tag: str, digest: str) -> None:
        old = self.tags.get((repo, tag))
        self.tags[(repo, tag)] = digest
        if old is not None and old != digest:
            self._forget_if_untagged(repo, old)

    def forget(self, repo: str, digest: str) -> None:
        self.images.pop((repo, digest), None)
        for key in [k for k, d in self.tags.items() if k[0] == repo and d == digest]:
            del self.tags[key]

    def _forget_if_untagged(self, repo: str, digest: str) -> None:
        # Untagged: GC may take it from here, so the model no longer promises anything about it.
        if not any(k[0] == repo and d == digest for k, d in self.tags.items()):
            self.images.pop((repo, digest), None)


@dataclass
class Stats:
    seconds: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    first_errors: list[str] = field(default_factory=list)
    gc_runs: list[dict[str, Any]] = field(default_factory=list)
    rss: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def ok(self, op: str, seconds: float) -> None:
        self.seconds[op].append(seconds)

    def failed(self, op: str, exc: BaseException) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{op}: {type(exc).__name__}: {exc}"[:400])


class Registry:
    """The few OCI and management requests the soak makes; every unexpected answer raises SoakError."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def _expect(self, resp: aiohttp.ClientResponse, status: int, what: str) -> bytes:
        body = await resp.read()
        if resp.status != status:
            raise SoakError(f"{what} -> HTTP {resp.status} (expected {status}): {body[:300]!r}")
        return body

    async def push_blob(self, repo: str, data: bytes) -> None:
        what = f"POST /v2/{repo}/blobs/uploads/"
        async with self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/", data=b"") as r:
            await self._expect(r, 202, what)
            location = r.headers["Location"]
        url = f"{location}{'&' if '?' in location else '?'}digest={_digest(data)}"
        if url.startswith("/"):
            url = self.base + url
        async with self.http.put(url, data=data, headers={"Content-Type": "application/octet-stream"}) as r:
            await self._expect(r, 201, f"PUT {location[:80]}... ({len(data)} bytes)")

    async def put_manifest(self, repo: str, reference: str, manifest: bytes) -> None:
        async with self.http.put(
            f"{self.base}/v2/{repo}/manifests/{reference}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        ) as r:
            await self._expect(r, 201, f"PUT /v2/{repo}/manifests/{reference}")

    async def get_manifest(self, repo: str, reference: str) -> bytes:
        async with self.http.get(f"{self.base}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}) as r:
            return await self._expect(r, 200, f"GET /v2/{repo}/manifests/{reference}")

    async def get_blob(self, repo: str, digest: str) -> bytes:
        async with self.http.get(f"{self.base}/v2/{repo}/blobs/{digest}") as r:
            return await self._expect(r, 200, f"GET /v2/{repo}/blobs/{digest}")

    async def delete_manifest(self, repo: str, digest: str) -> None:
        async with self.http.delete(f"{self.base}/v2/{repo}/manifests/{digest}") as r:
            await self._expect(r, 202, f"DELETE /v2/{repo}/manifests/{digest}")

    async def gc(self, *, timeout: float) -> dict[str, Any]:
        """One GC run, started and followed to its end: its record."""
        async with self.http.post(
            f"{self.base}/v1/registry/admin/gc", json={"dry_run": False, "grace_seconds": GC_GRACE_SECONDS}
        ) as r:
            run_id = json.loads(await self._expect(r, 202, "POST /v1/registry/admin/gc"))["id"]
        deadline = time.monotonic() + timeout
        while True:
            async with self.http.get(f"{self.base}/v1/registry/admin/gc/runs/{run_id}") as r:
                record: dict[str, Any] = json.loads(await self._expect(r, 200, f"GET gc/runs/{run_id}"))
            if record["status"] != "running":
                if record["status"] != "succeeded" or record.get("errors"):
                    raise SoakError(f"GC run {run_id} ended {record['status']}: {record.get('errors')}")
                return record
            if time.monotonic() > deadline:
                raise SoakError(f"GC run {run_id} still running after {timeout:.0f}s")
            await asyncio.sleep(0.5)


def _layer(rng: random.Random) -> bytes:
    # Mostly small layers, now and then one of a few MiB (a multipart upload on S3).
    size = rng.choice([1024, 16 * 1024, 256 * 1024, 256 * 1024, 1 * MIB, 6 * MIB])
    return os.urandom(size)


def _image(worker: int, serial: int, rng: random.Random) -> Image:
    config = json.dumps({"architecture": "amd64", "os": "linux", "soak": [worker, serial, rng.random()]}).encode()
    layer = _layer(rng)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
        }
    ).encode()
    return Image(_digest(manifest), manifest, {_digest(config): config, _digest(layer): layer})


class Worker:
    """One client: a loop of random operations over its own repositories, checked against its model."""

    def __init__(self, index: int, registry: Registry, stats: Stats) -> None:
        self.index, self.registry, self.stats = index, registry, stats
        self.rng = random.Random(index)
        self.model = Model()
        self.repos = [f"soak/w{index}-r{r}" for r in range(3)]
        self.serial = 0

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            op = self._choose()
            started = time.perf_counter()
            try:
                await asyncio.wait_for(getattr(self, op)(), 120)
            except (SoakError, aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                self.stats.failed(op, exc)
                await asyncio.sleep(0.5)
            else:
                self.stats.ok(op, time.perf_counter() - started)

    def _choose(self) -> str:
        if not self.model.tags:
            return "push"
        if len(self.model.images) >= MAX_LIVE_MANIFESTS:
            return self.rng.choice(["delete", "pull", "tag"])
        return self.rng.choices(["push", "pull", "tag", "delete"], weights=[3, 5, 2, 1])[0]

    async def push(self) -> None:
        self.serial += 1
        repo = self.rng.choice(self.repos)
        image = _image(self.index, self.serial, self.rng)
        await asyncio.gather(*(self.registry.push_blob(repo, data) for data in image.blobs.values()))
        tag = f"t{self.serial}"
        await self.registry.put_manifest(repo, tag, image.manifest)
        self.model.images[(repo, image.digest)] = image
        self.model.point(repo, tag, image.digest)

    async def pull(self) -> None:
        (repo, tag), digest = self.rng.choice(list(self.model.tags.items()))
        manifest = await self.registry.get_manifest(repo, tag)
        if _digest(manifest) != digest:
            raise SoakError(f"{repo}:{tag} is {_digest(manifest)}, expected {digest}")
        blob_digest = self.rng.choice(list(self.model.images[(repo, digest)].blobs))
        data = await self.registry.get_blob(repo, blob_digest)
        if _digest(data) != blob_digest:
            raise SoakError(f"blob {blob_digest} of {repo} came back as {_digest(data)} ({len(data)} bytes)")

    async def tag(self) -> None:
        """A new tag on a live manifest, or an existing tag moved to another manifest of its repository."""
        repo, digest = self.rng.choice(list(self.model.images))
        same_repo = [t for (r, t) in self.model.tags if r == repo]
        if self.rng.random() < 0.5 and len(same_repo) > 1:
            tag = self.rng.choice(same_repo)
        else:
            self.serial += 1
            tag = f"t{self.serial}"
        await self.registry.put_manifest(repo, tag, self.model.images[(repo, digest)].manifest)
        self.model.point(repo, tag, digest)

    async def delete(self) -> None:
        repo, digest = self.rng.choice(list(self.model.images))
        await self.registry.delete_manifest(repo, digest)
        self.model.forget(repo, digest)


# --- assemblies -------------------------------------------------------------------------------------------


@dataclass
class Assembly:
    name: str
    processes: list[Target]


def start_assembly(name: str, root: Path, namespace: str, key: str) -> Assembly:
    """`serve` for embedded; `distribution` + `gc` (its gRPC for the GC API) for distributed. Token auth on
    (the management API needs it), with `key` as the bootstrap admin's API key."""
    main = make_target(name, root, namespace)
    main.env.update(
        {
            "HANZO_REGISTRY_GC__ENABLED": "false",
            "HANZO_REGISTRY_GC__SETTLE_SECONDS": "1",
            "HANZO_REGISTRY_AUTH__MODE": "token",
            "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": key,
        }
    )
    processes = [main]
    if name == "distributed":
        grpc_addr = f"127.0.0.1:{free_port()}"
        main.env["HANZO_REGISTRY_GC__GRPC_ADDR"] = grpc_addr
        gc_dir = root / "distributed-gc"
        gc_dir.mkdir()
        gc_env = {
            **main.env,
            "HANZO_REGISTRY_SERVER__GRPC_ADDR": grpc_addr,
            "HANZO_REGISTRY_SERVER__OPS_ADDR": f"127.0.0.1:{free_port()}",
            "HANZO_REGISTRY_DATA_DIR": str(gc_dir / "data"),
        }
        processes.append(Target("distributed-gc", [main.command[0], "gc"], gc_env, main.port, gc_dir))
    for p in processes:
        p.start()
    return Assembly(name, processes)


async def wait_ready(p: Target, timeout: float = 180.0) -> None:
    """Until the process's /readyz (the gc process's on its ops address) answers 200."""
    addr = p.env.get("HANZO_REGISTRY_SERVER__OPS_ADDR") if p.name == "distributed-gc" else f"127.0.0.1:{p.port}"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://{addr}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{p.name} not ready after {timeout:.0f}s:\n{p.log_tail()}")


async def sample_rss(assembly: Assembly, stats: Stats, started: float, interval: float, until: float) -> None:
    while time.monotonic() < until:
        stats.rss.append((time.monotonic() - started, {p.name: rss_bytes([p.pid]) for p in assembly.processes}))
        await asyncio.sleep(min(interval, max(0.0, until - time.monotonic())))
    stats.rss.append((time.monotonic() - started, {p.name: rss_bytes([p.pid]) for p in assembly.processes}))


async def gc_loop(registry: Registry, stats: Stats, every: float, until: float) -> None:
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        started = time.perf_counter()
        try:
            # Followed to its end even past `until`: the soak waits for it (a run cut short is no error).
            record = await registry.gc(timeout=GC_RUN_TIMEOUT)
        except (SoakError, aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            stats.failed("gc", exc)
        else:
            stats.ok("gc", time.perf_counter() - started)
            stats.gc_runs.append({k: record.get(k) for k in ("manifests_deleted", "blobs_deleted", "bytes_freed")})


def rss_windows(duration: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(baseline window, end window) in seconds from the start: [2 min, 3 min) and the last minute of a
    10-minute run, the same fractions (0.2-0.3, 0.9-1.0) of a shorter one."""
    if duration >= 600:
        return (120.0, 180.0), (duration - 60.0, duration + 1.0)
    return (0.2 * duration, 0.3 * duration), (0.9 * duration, duration + 1.0)


def rss_growth(stats: Stats, duration: float) -> dict[str, dict[str, float]]:
    """Per process: baseline and end RSS (MiB, medians of their windows) and the growth between them."""
    (b0, b1), (e0, e1) = rss_windows(duration)
    out: dict[str, dict[str, float]] = {}
    names = stats.rss[0][1].keys() if stats.rss else []
    for name in names:
        base = [s[name] for t, s in stats.rss if b0 <= t < b1] or [stats.rss[0][1][name]]
        end = [s[name] for t, s in stats.rss if e0 <= t < e1] or [stats.rss[-1][1][name]]
        b, e = statistics.median(base) / MIB, statistics.median(end) / MIB
        out[name] = {"baseline_mib": b, "end_mib": e, "growth": (e - b) / b if b else float("nan")}
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def soak(
    name: str, root: Path, *, seconds: float, workers: int, gc_every: float, interval: float
) -> dict[str, Any]:
    namespace = new_namespace()
    key = generate_key().key
    assembly = start_assembly(name, root, namespace, key)
    stats = Stats()
    try:
        try:
            await asyncio.gather(*(wait_ready(p) for p in assembly.processes))
        except RuntimeError as exc:
            stats.failed("start", exc)
            return summarize(name, stats, seconds)
        print(
            f"{name}: ready ({', '.join(f'{p.name} pid {p.pid}' for p in assembly.processes)}); "
            f"soaking {seconds:.0f}s with {workers} workers, GC every {gc_every:.0f}s",
            flush=True,
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        # Bearer <API key> on every request: the key is checked each time (no token dance to time).
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {key}"}) as http:
            registry = Registry(http, assembly.processes[0].base)
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(
                sample_rss(assembly, stats, started, interval, until),
                gc_loop(registry, stats, gc_every, until),
                *(Worker(w, registry, stats).run(until) for w in range(workers)),
            )
        for p in assembly.processes:
            if p.proc is not None and p.proc.poll() is not None:
                stats.failed("process", RuntimeError(f"{p.name} died ({p.proc.returncode}): {p.log_tail(5)}"))
    finally:
        for p in assembly.processes:
            p.stop()
        if name == "distributed":
            problems = await cleanup(assembly.processes[0])
            if problems:
                print(f"soak: cleanup of {namespace} incomplete: {problems}", file=sys.stderr)
    return summarize(name, stats, seconds)


def summarize(name: str, stats: Stats, seconds: float) -> dict[str, Any]:
    total = sum(len(v) for v in stats.seconds.values())
    errors = sum(stats.errors.values())
    ops = {
        op: {
            "count": len(v),
            "errors": stats.errors[op],
            "p50_ms": 1000 * _percentile(v, 0.50),
            "p99_ms": 1000 * _percentile(v, 0.99),
        }
        for op, v in stats.seconds.items()
    }
    return {
        "assembly": name,
        "seconds": seconds,
        "operations": total,
        "errors": errors,
        "error_rate": errors / (total + errors) if total + errors else float("nan"),
        "ops": ops,
        "rss": rss_growth(stats, seconds),
        "gc_runs": stats.gc_runs,
        "first_errors": stats.first_errors,
        "rss_samples": [(round(t, 1), {k: round(v / MIB, 1) for k, v in s.items()}) for t, s in stats.rss],
    }


def table(summaries: list[dict[str, Any]]) -> str:
    header = ["metric", "unit", *[s["assembly"] for s in summaries]]
    body: list[list[str]] = [
        ["operations", "count", *[f"{s['operations']:,}" for s in summaries]],
        ["errors (none intended) ↓", "count", *[str(s["errors"]) for s in summaries]],
        ["error rate ↓", "%", *[f"{100 * s['error_rate']:.3f}" for s in summaries]],
    ]
    for op in OPS:
        body.append([f"{op} (count)", "ops", *[str(s["ops"][op]["count"]) for s in summaries]])
        for q in ("p50", "p99"):
            body.append([f"{op} {q} ↓", "ms", *[f"{s['ops'][op][f'{q}_ms']:,.1f}" for s in summaries]])
    names = sorted({n for s in summaries for n in s["rss"]})
    for n in names:
        for key, label in (("baseline_mib", "RSS at minute 2"), ("end_mib", "RSS at the end")):
            body.append(
                [f"{n} {label}", "MiB", *[f"{s['rss'][n][key]:.1f}" if n in s["rss"] else "-" for s in summaries]]
            )
        body.append(
            [
                f"{n} RSS growth ↓",
                "%",
                *[f"{100 * s['rss'][n]['growth']:+.1f}" if n in s["rss"] else "-" for s in summaries],
            ]
        )
    return report.text_table(header, body)


def checks(summaries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(status, subject, detail) per target."""
    out = []
    for s in summaries:
        out.append(
            (
                "PASS" if s["errors"] == 0 and s["operations"] > 0 else "MISS",
                s["assembly"],
                f"errors: {s['errors']} of {s['operations'] + s['errors']} operations",
            )
        )
        for name, r in s["rss"].items():
            status = "PASS" if r["growth"] < RSS_GROWTH_LIMIT else "MISS"
            out.append(
                (
                    status,
                    s["assembly"],
                    f"{name} RSS growth {100 * r['growth']:+.1f} % "
                    f"({r['baseline_mib']:.1f} -> {r['end_mib']:.1f} MiB) < {100 * RSS_GROWTH_LIMIT:g} %",
                )
            )
    return out


async def amain(args: argparse.Namespace) -> int:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    root = scratch_root()
    summaries = []
    for name in args.only.split(","):
        summary = await soak(
            name, root, seconds=args.seconds, workers=args.workers, gc_every=args.gc_every, interval=args.interval
        )
        summaries.append(summary)
        print(f"{name}: {summary['operations']} operations, {summary['errors']} errors", flush=True)
        for err in summary["first_errors"]:
            print(f"  {err}", flush=True)
    out = ROOT / "reports" / "bench" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summaries": summaries}, indent=2, default=str) + "\n")
    print()
    print(table(summaries))
    print()
    results = checks(summaries)
    for status, subject, detail in results:
        print(f"{status:5} {subject:12} {detail}")
    for s in summaries:
        for err in s["first_errors"]:
            print(f"error {s['assembly']:12} {err}")
    print(f"written: {out}")
    return 0 if all(status == "PASS" for status, _, _ in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("HANZO_SOAK_SECONDS", "600")),
        help="per assembly (default: $HANZO_SOAK_SECONDS or 600)",
    )
    parser.add_argument("--only", default="embedded,distributed", help="comma-separated: embedded,distributed")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--gc-every", type=float, default=None, help="seconds between GC runs (default: seconds/8)")
    parser.add_argument("--interval", type=float, default=None, help="RSS sampling (default: 10 s, less if short)")
    args = parser.parse_args(argv)
    if set(args.only.split(",")) - {"embedded", "distributed"}:
        parser.error("--only takes embedded,distributed")
    args.gc_every = args.gc_every or max(5.0, args.seconds / 8)
    args.interval = args.interval or min(10.0, max(1.0, args.seconds / 30))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
