"""Replication lag (issue 14, item 5): two registries on loopback, token auth on in both, a replication rule
from A to B; p50/p99 of push-to-target lag for small images, and the lag of a 256 MiB image against a direct
`crane copy` of a 256 MiB image between the same two registries.

Source A is the embedded assembly (`hanzo-registry serve`, the replicator in the same process) and/or the
distributed one (`hanzo-registry distribution` + `hanzo-registry replicator`, each its own process, on Kafka,
FerretDB and SeaweedFS from `make infra-up`); target B is always `hanzo-registry serve`.

Lag = from the tag push at A returning to the tag resolving to the pushed digest at B (a HEAD every 5 ms).
The first image after start is a warm-up (reported apart: it includes the replicator's consumer joining its
group). Targets: small-image p99 < 1 s; 256 MiB lag <= 1.5x `crane copy`. Run: `python -m bench.replication`
(`make bench` runs it). Writes reports/bench-replication.json. Exit 1 only when a benchmark errored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.data import BlobSource
from bench.targets import TOOLS_ENV, RssSampler, Target, cleanup, free_port, make_target
from services.core.auth.apikeys import generate_key
from services.core.client import (
    ClientOptions,
    Credentials,
    OciClient,
    OciNotFoundError,
    RegistryOptions,
    RemoteRepository,
)
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName

SMALL_P99_TARGET = 1.0
LARGE_RATIO_TARGET = 1.5
LARGE_BYTES = 256 * 1024 * 1024


def crane_binary() -> str:
    path = os.environ.get("HANZO_TOOL_CRANE", "")
    if not path and TOOLS_ENV.exists():
        for line in TOOLS_ENV.read_text().splitlines():
            if line.startswith("HANZO_TOOL_CRANE="):
                path = line.split("=", 1)[1].strip()
    path = path or shutil.which("crane") or ""
    if not path or not Path(path).exists():
        raise RuntimeError("crane not found (HANZO_TOOL_CRANE in tools.env): run `make tools`")
    return path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Region:
    """One registry (and, for the distributed source, its replicator process) with token auth."""

    def __init__(self, name: str, assembly: str, root: Path, *, source: bool, extra: dict[str, str] | None = None
                 ) -> None:
        self.key = generate_key().key
        self.main = make_target(assembly, root / name)
        env = {
            "HANZO_REGISTRY_AUTH__MODE": "token",
            "HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY": self.key,
            "HANZO_REGISTRY_SIGNER__MASTER_KEY": secrets.token_hex(24),
            "HANZO_REGISTRY_REPLICATION__POLL_INTERVAL_SECONDS": "0.5",
            "HANZO_REGISTRY_REPLICATION__BACKOFF_INITIAL_SECONDS": "0.2",
        }
        self.main.env.update(env)
        if source:
            self.main.env.update(extra or {})
        self.targets = [self.main]
        self.replicator: Target | None = None
        if source and assembly == "distributed":
            ops_port = free_port()
            workdir = root / name / "replicator"
            workdir.mkdir(parents=True)
            rep_env = {**self.main.env, "HANZO_REGISTRY_SERVER__OPS_ADDR": f"127.0.0.1:{ops_port}"}
            self.replicator = Target("replicator", [self.main.command[0], "replicator"], rep_env, ops_port, workdir)
            self.targets.append(self.replicator)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.main.port}"

    @property
    def replicator_pid(self) -> int:
        return (self.replicator or self.main).pid

    def start(self) -> None:
        for t in self.targets:
            t.start()

    async def wait_ready(self, timeout: float = 90.0) -> None:
        async with aiohttp.ClientSession() as http:
            for t in self.targets:
                deadline = time.monotonic() + timeout
                while True:
                    assert t.proc is not None
                    if t.proc.poll() is not None:
                        raise RuntimeError(f"{t.name} exited with {t.proc.returncode}:\n{t.log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(f"{t.base}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{t.name} not ready after {timeout}s:\n{t.log_tail()}")
                    await asyncio.sleep(0.2)

    def stop(self) -> None:
        for t in reversed(self.targets):
            t.stop()


async def _push_small(client: OciClient, repo: RemoteRepository, tag: str) -> Digest:
    layer = os.urandom(2048) + os.urandom(30_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "salt": secrets.token_hex(8)}).encode()
    for blob in (config, layer):
        await client.push_blob(repo, blob, digest=Digest.of(blob), skip_existing=False)
    return await _push_manifest(client, repo, tag, config, [(Digest.of(layer), len(layer))])


async def _push_manifest(client: OciClient, repo: RemoteRepository, tag: str, config: bytes,
                         layers: list[tuple[Digest, int]]) -> Digest:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR_GZIP, "digest": str(d), "size": n} for d, n in layers],
    }).encode()
    return (await client.push_manifest(repo, manifest, reference=tag)).digest


async def _push_large(client: OciClient, repo: RemoteRepository, tag: str, seed: int, size: int) -> Digest:
    blob = BlobSource(seed, size)
    digest = Digest.parse(blob.digest)
    await client.push_blob(repo, blob.stream(), digest=digest, size=size, method="chunked",
                           chunk_size=16 * 1024 * 1024, skip_existing=False)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    await client.push_blob(repo, config, digest=Digest.of(config), skip_existing=False)
    return await _push_manifest(client, repo, tag, config, [(digest, size)])


async def _arrival(client: OciClient, repo: RemoteRepository, tag: str, digest: Digest, *,
                   within: float = 600.0) -> float:
    """Seconds until `tag` resolves to `digest` at `repo`, polling every 5 ms."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        with contextlib.suppress(OciNotFoundError):
            if (await client.resolve(repo, tag)).digest == digest:
                return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise RuntimeError(f"{repo}:{tag} did not arrive within {within}s")


async def _crane_copy(crane: str, src: str, dst: str, docker_config: Path) -> float:
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(crane, "copy", "--insecure", src, dst, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"crane copy {src} {dst} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return took


@contextlib.asynccontextmanager
async def _regions(source: str, root: Path, extra: dict[str, str]) -> AsyncIterator[tuple[Region, Region]]:
    a, b = Region("a", source, root, source=True, extra=extra), Region("b", "embedded", root, source=False)
    try:
        for region in (a, b):
            region.start()
        for region in (a, b):
            await region.wait_ready()
        yield a, b
    finally:
        for region in (a, b):
            region.stop()
        for region in (a, b):
            for t in region.targets:
                if t.namespace:
                    problems = await cleanup(t)
                    if problems:
                        print(f"cleanup of {t.namespace} left things behind: {problems}", file=sys.stderr)


async def run_source(source: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    extra = dict(item.split("=", 1) for item in args.source_env)
    async with _regions(source, root / source, extra) as (a, b):
        async with aiohttp.ClientSession() as http:
            rule = {"name": "to-b", "repositories": "bench/**", "tags": "*",
                    "target": {"url": f"http://{b.addr}", "username": "admin", "password": b.key},
                    "mode": "event", "delete": False, "enabled": True}
            async with http.post(f"{a.main.base}/v1/registry/admin/replication/rules", json=rule,
                                 headers={"Authorization": f"Bearer {a.key}"}) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"rule not created: {resp.status} {await resp.text()}")
        options = ClientOptions(registries={a.addr: RegistryOptions(credentials=Credentials("admin", a.key)),
                                            b.addr: RegistryOptions(credentials=Credentials("admin", b.key))})
        result: dict[str, Any] = {"source": source}
        async with OciClient(options) as client:
            def at(region: Region, name: str) -> RemoteRepository:
                return RemoteRepository(region.addr, RepositoryName(name))

            started = time.monotonic()
            digest = await _push_small(client, at(a, "bench/small"), "warm-up")
            result["first_image_lag_s"] = round(await _arrival(client, at(b, "bench/small"), "warm-up", digest), 3)
            result["first_image_after_start_s"] = round(time.monotonic() - started, 3)
            lags: list[float] = []
            for i in range(args.small):
                digest = await _push_small(client, at(a, "bench/small"), f"v{i}")
                lags.append(await _arrival(client, at(b, "bench/small"), f"v{i}", digest))
            result.update(small_images=len(lags), small_p50_s=round(statistics.median(lags), 4),
                          small_p99_s=round(_pct(lags, 0.99), 4), small_max_s=round(max(lags), 4),
                          small_lags_s=[round(x, 4) for x in lags])
            if args.large_mib:
                result.update(await _large(client, a, b, args, root / source))
        return result


async def _large(client: OciClient, a: Region, b: Region, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    crane = crane_binary()
    size = args.large_mib * 1024 * 1024
    docker = work / "docker"
    docker.mkdir(parents=True, exist_ok=True)
    auths = {r.addr: {"username": "admin", "password": r.key} for r in (a, b)}
    (docker / "config.json").write_text(json.dumps({"auths": auths}))
    repl, direct, rss_peaks = [], [], []
    for round_ in range(args.rounds):
        seed = int.from_bytes(hashlib.sha256(f"{round_}-{time.time_ns()}".encode()).digest()[:4], "big")

        async def replicate(seed: int = seed, round_: int = round_) -> None:
            repo_a = RemoteRepository(a.addr, RepositoryName(f"bench/large-{round_}"))
            with RssSampler(a.replicator_pid) as sampler:
                digest = await _push_large(client, repo_a, "v1", seed, size)
                repl.append(await _arrival(client, RemoteRepository(b.addr, RepositoryName(f"bench/large-{round_}")),
                                           "v1", digest))
            rss_peaks.append(sampler.peak)

        async def copy(seed: int = seed + 1, round_: int = round_) -> None:
            # Not matched by the rule: only crane moves it to B.
            src = RemoteRepository(a.addr, RepositoryName(f"direct/large-{round_}"))
            await _push_large(client, src, "v1", seed, size)
            direct.append(await _crane_copy(crane, f"{a.addr}/direct/large-{round_}:v1",
                                            f"{b.addr}/direct/large-{round_}:v1", docker))

        steps = (replicate, copy) if round_ % 2 == 0 else (copy, replicate)  # ABBA
        for step in steps:
            await step()
    repl_med, crane_med = statistics.median(repl), statistics.median(direct)
    return {"large_mib": args.large_mib, "large_lag_s": [round(x, 3) for x in repl],
            "crane_copy_s": [round(x, 3) for x in direct], "large_lag_median_s": round(repl_med, 3),
            "crane_copy_median_s": round(crane_med, 3), "large_ratio": round(repl_med / crane_med, 3),
            "replicator_rss_peak_mib": round(max(rss_peaks) / 2**20, 1)}


def _verdicts(result: dict[str, Any]) -> list[str]:
    lines = []
    ok = result["small_p99_s"] < SMALL_P99_TARGET
    lines.append(f"{'PASS' if ok else 'MISS'} {result['source']}: small-image lag p99 "
                 f"{result['small_p99_s'] * 1000:.0f} ms "
                 f"(p50 {result['small_p50_s'] * 1000:.0f} ms, n={result['small_images']}; target < "
                 f"{SMALL_P99_TARGET * 1000:.0f} ms)")
    if "large_ratio" in result:
        ok = result["large_ratio"] <= LARGE_RATIO_TARGET
        lines.append(f"{'PASS' if ok else 'MISS'} {result['source']}: {result['large_mib']} MiB lag "
                     f"{result['large_lag_median_s']:.2f} s vs crane copy {result['crane_copy_median_s']:.2f} s = "
                     f"{result['large_ratio']:.2f}x (target <= {LARGE_RATIO_TARGET}x); replicator RSS peak "
                     f"{result['replicator_rss_peak_mib']:.0f} MiB")
    return lines


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hzr-bench-replication-"))
    report: dict[str, Any] = {"sources": {}, "errors": {}}
    try:
        for source in args.source.split(","):
            try:
                report["sources"][source] = await run_source(source, args, root)
            except Exception as exc:
                report["errors"][source] = f"{type(exc).__name__}: {exc}"
                print(f"ERROR {source}: {report['errors'][source]}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="embedded,distributed", help="embedded, distributed or both")
    parser.add_argument("--small", type=int, default=50, help="small images pushed one after the other")
    parser.add_argument("--large-mib", type=int, default=LARGE_BYTES // 2**20, help="0: skip the large image")
    parser.add_argument("--rounds", type=int, default=2, help="large image vs crane copy, ABBA")
    parser.add_argument("--source-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the source (and its replicator), e.g. "
                        "HANZO_REGISTRY_REPLICATION__CHUNK_BYTES=33554432")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (data, logs)")
    parser.add_argument("--out", default="reports/bench-replication.json")
    args = parser.parse_args(argv)
    report = asyncio.run(amain(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for result in report["sources"].values():
        print(f"{result['source']}: first image after start {result['first_image_lag_s']:.2f} s (warm-up, not "
              "counted)")
        for line in _verdicts(result):
            print(line)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
