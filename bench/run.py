"""`python -m bench.run`: throughput and memory of the embedded and distributed assemblies next to CNCF Distribution
(on local disk, and on the same SeaweedFS S3 as the distributed assembly).

Starts each selected registry on a free loopback port, runs every benchmark against each target in turn
(benchmark by benchmark, so slow drift of the shared machine hits all targets alike), prints one table,
writes reports/bench/bench.{json,md}, and stops everything, also on error or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import ops, report
from bench.data import BlobSource
from bench.load import run_load
from bench.targets import (
    ROOT,
    TARGETS,
    RssSampler,
    Target,
    cleanup,
    cpu_seconds,
    hwm_bytes,
    infra_pids,
    make_target,
    new_namespace,
    rss_bytes,
    scratch_root,
    tree,
)

MIB = 1 << 20
RSS_LIMIT_MIB = 256


@dataclass
class Config:
    quick: bool
    blob_size: int
    chunk_size: int
    big_size: int
    load_seconds: float
    warmup_seconds: float
    repeats: int
    conns: int
    procs: int
    small_conns: int
    tags: int
    page: int
    list_repeats: int


def config_of(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    return Config(
        quick=quick,
        blob_size=(32 if quick else 256) * MIB,
        chunk_size=8 * MIB,
        big_size=(256 if quick else 2048) * MIB,
        load_seconds=args.seconds or (3.0 if quick else 10.0),
        warmup_seconds=0.5 if quick else 1.0,
        repeats=2 if quick else 3,
        conns=32,
        procs=args.procs,
        small_conns=16,
        tags=1000,
        page=100,
        list_repeats=3 if quick else 5,
    )


@dataclass
class State:
    target: Target
    client: ops.Client
    single_post: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.target.name

    def server_cpu(self) -> float:
        return cpu_seconds(tree(self.target.pid))


class Blobs:
    """Blob sources shared by all targets (the digest is computed once, outside any timing)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], BlobSource] = {}

    def get(self, seed: int, size: int) -> BlobSource:
        key = (seed, size)
        if key not in self._cache:
            blob = BlobSource(seed, size)
            _ = blob.digest
            self._cache[key] = blob
        return self._cache[key]


def _mibps(size: int, seconds: float) -> float:
    return size / MIB / seconds


def _timed_cpu() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _client_cpu_pct(start: tuple[float, float]) -> float:
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return 100 * cpu / wall if wall else float("nan")


# benchmarks: each sets results on one target's state


async def bench_setup(s: State, cfg: Config, blobs: Blobs) -> None:
    s.single_post = await s.client.supports_single_post("bench/small")
    s.details["single_post_upload"] = s.single_post
    if not s.single_post:
        s.notes.append("1 KiB pushes use POST+PUT (POST ?digest= with a body is not completed in one request)")
    await s.client.image("bench/manifest", "latest")


async def bench_push_mono(s: State, cfg: Config, blobs: Blobs) -> None:
    times, cpu = [], []
    for r in range(cfg.repeats):
        blob = blobs.get(1000 + r, cfg.blob_size)
        start = _timed_cpu()
        times.append(await s.client.push_monolithic("bench/blobs", blob))
        cpu.append(_client_cpu_pct(start))
    s.results["push_mono"] = _mibps(cfg.blob_size, ops.Timing(times).median)
    s.details["push_mono"] = {"seconds": times, "client_cpu_pct": cpu}


async def bench_push_chunked(s: State, cfg: Config, blobs: Blobs) -> None:
    times, commits = [], []
    for r in range(cfg.repeats):
        blob = blobs.get(2000 + r, cfg.blob_size)
        total, commit = await s.client.push_chunked("bench/blobs", blob, cfg.chunk_size)
        times.append(total)
        commits.append(commit)
    s.results["push_chunked"] = _mibps(cfg.blob_size, ops.Timing(times).median)
    s.details["push_chunked"] = {"seconds": times, "final_put_seconds": commits}


PULLS_PER_BLOB = 3


async def bench_pull_verify(s: State, cfg: Config, blobs: Blobs) -> None:
    """Untimed: every blob the timed pulls fetch comes back complete and with its digest."""
    if "push_mono" not in s.results:
        raise ops.BenchError("nothing to pull: the monolithic push failed")
    for r in range(cfg.repeats):
        blob = blobs.get(1000 + r, cfg.blob_size)
        await s.client.pull("bench/blobs", blob.digest, blob.size, verify=True)
    s.details["pull"] = {"seconds": [], "client_cpu_pct": []}


def pull_rounds(cfg: Config) -> int:
    # A 256 MiB pull takes ~0.3 s: 3 per blob, so the median is of 9 and not at the mercy of one hiccup.
    return cfg.repeats * PULLS_PER_BLOB


async def bench_pull(s: State, cfg: Config, blobs: Blobs, round_: int) -> None:
    """One timed pull. The runner interleaves rounds across targets (round 1 of each target, then
    round 2, ...) so that background work of the storage servers, e.g. flushing what the previous
    benchmark wrote, does not fall on whichever target happens to pull first."""
    if "pull" not in s.details:
        raise ops.BenchError("the blobs did not verify")
    blob = blobs.get(1000 + round_ % cfg.repeats, cfg.blob_size)
    start = _timed_cpu()
    seconds = await s.client.pull("bench/blobs", blob.digest, blob.size, verify=False)
    s.details["pull"]["seconds"].append(seconds)
    s.details["pull"]["client_cpu_pct"].append(_client_cpu_pct(start))
    s.results["pull"] = _mibps(cfg.blob_size, ops.Timing(s.details["pull"]["seconds"]).median)


async def _load(s: State, cfg: Config, scenario: dict[str, Any], conns: int) -> Any:
    result = await run_load(
        port=s.target.port,
        scenario=scenario,
        procs=cfg.procs,
        conns=conns,
        duration=cfg.load_seconds,
        warmup=cfg.warmup_seconds,
        server_cpu=s.server_cpu,
        infra_cpu=lambda: cpu_seconds(infra_pids()),
    )
    if result.errors:
        raise ops.BenchError(
            f"{result.errors} of {result.errors + result.requests} requests failed under load; first: "
            + " | ".join(result.first_errors)
        )
    return result


async def bench_manifest(s: State, cfg: Config, blobs: Blobs) -> None:
    path = "/v2/bench/manifest/manifests/latest"
    for kind, key in (("manifest-get", "manifest_get"), ("manifest-head", "manifest_head")):
        r = await _load(s, cfg, {"kind": kind, "path": path, "accept": ops.OCI_MANIFEST}, cfg.conns)
        s.results[key] = r.rps
        if key == "manifest_get":
            s.results["manifest_get_p99"] = r.p99_ms
            s.results["manifest_get_cpu"] = r.server_cpu_pct
            s.results["manifest_get_machine"] = r.machine_cpu_pct
            s.results["manifest_get_infra"] = r.infra_cpu_pct
        s.details[key] = asdict(r)


async def bench_small(s: State, cfg: Config, blobs: Blobs) -> None:
    scenario = {"kind": "small-blob", "path": "/v2/bench/small/blobs/uploads/", "monolithic": s.single_post}
    r = await _load(s, cfg, scenario, cfg.small_conns)
    s.results["small_push"] = r.rps
    s.details["small_push"] = {**asdict(r), "single_post": s.single_post, "conns": cfg.small_conns}


async def bench_tags(s: State, cfg: Config, blobs: Blobs) -> None:
    repo = "bench/tags"
    manifest = await s.client.image(repo, "tag-base")
    names = [f"tag-{i:04d}" for i in range(cfg.tags - 1)]
    sem = asyncio.Semaphore(16)

    async def tag(name: str) -> None:
        async with sem:
            await s.client.put_manifest(repo, name, manifest)

    t0 = time.perf_counter()
    await asyncio.gather(*(tag(n) for n in names))
    s.results["tags_create"] = len(names) / (time.perf_counter() - t0)
    expected = {"tag-base", *names}

    async def listing(n: int | None) -> tuple[float, int]:
        t = time.perf_counter()
        tags, requests = await s.client.list_tags(repo, n)
        elapsed = time.perf_counter() - t
        if set(tags) != expected or len(tags) != len(expected):
            raise ops.BenchError(f"GET /v2/{repo}/tags/list (n={n}) listed {len(tags)} tags, expected {len(expected)}")
        return elapsed, requests

    full = [(await listing(None))[0] for _ in range(cfg.list_repeats)]
    s.results["tags_full"] = 1000 * ops.Timing(full).median
    s.results["tags_full_first"] = 1000 * full[0]  # right after the pushes: what a listing costs unkept
    try:
        paged = [await listing(cfg.page) for _ in range(cfg.list_repeats)]
    except ops.PaginationUnsupportedError as exc:
        s.results["tags_paged"] = s.results["tags_page"] = "unsupported"
        s.notes.append(str(exc))
        paged = []
    else:
        s.results["tags_paged"] = 1000 * ops.Timing([p[0] for p in paged]).median
        s.results["tags_page"] = 1000 * ops.Timing([p[0] / p[1] for p in paged]).median
    s.details["tags"] = {"full_seconds": full, "paged": paged, "count": len(expected)}


async def bench_rss(s: State, cfg: Config, blobs: Blobs) -> None:
    blob = blobs.get(3000, cfg.big_size)
    pids = tree(s.target.pid)
    before = rss_bytes(pids)
    with RssSampler(s.target.pid, 0.05) as sampler:
        seconds = await s.client.push_monolithic("bench/rss", blob)
    peak = max(sampler.peak, before)
    s.results["big_push"] = _mibps(blob.size, seconds)
    s.results["rss_before"] = before / MIB
    s.results["rss_peak"] = peak / MIB
    s.details["rss"] = {
        "size": blob.size,
        "samples": sampler.samples,
        "processes": len(tree(s.target.pid)),
        "main_vmhwm_mib_lifetime": hwm_bytes(s.target.pid) / MIB,
    }


@dataclass(frozen=True)
class Phase:
    """One benchmark, run against every target in turn; with `rounds`, `func` takes a round number
    and the runner interleaves: round 0 on every target, then round 1 in reverse order, and so on."""

    name: str
    func: Callable[..., Awaitable[None]]
    timeout: float
    rounds: Callable[[Config], int] | None = None


BENCHMARKS: list[Phase] = [
    Phase("setup", bench_setup, 60),
    Phase("push_mono", bench_push_mono, 900),
    Phase("push_chunked", bench_push_chunked, 900),
    Phase("pull_verify", bench_pull_verify, 900),
    Phase("pull", bench_pull, 120, rounds=pull_rounds),
    Phase("manifest", bench_manifest, 300),
    Phase("small_push", bench_small, 300),
    Phase("tags", bench_tags, 600),
    Phase("rss", bench_rss, 1200),
]


# orchestration


def _write_reports(
    cfg: Config, targets: list[str], states: dict[str, State], meta: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    results = {name: s.results for name, s in states.items()}
    header, body = report.rows(results, targets)
    table = report.text_table(header, body)
    checked = report.checks(results, targets, RSS_LIMIT_MIB)
    out_dir = ROOT / "reports" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        **meta,
        "config": asdict(cfg),
        "targets": targets,
        "results": results,
        "details": {n: s.details for n, s in states.items()},
        "errors": {n: s.errors for n, s in states.items() if s.errors},
        "notes": {n: s.notes for n, s in states.items() if s.notes},
        "checks": checked,
    }
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = [
        f"# Registry benchmark ({'quick' if cfg.quick else 'full'} mode"
        + (f", ABORTED: {meta['aborted']})" if meta.get("aborted") else ")"),
        "",
        f"{meta['started']}, {meta['machine']}; blob {cfg.blob_size // MIB} MiB, large push {cfg.big_size // MIB} MiB, "
        f"load {cfg.load_seconds:g} s with {cfg.conns} connections over {cfg.procs} client processes. "
        "↑ higher is better, ↓ lower is better; a ratio column `a/b` is column a / column b.",
        "",
        report.markdown_table(header, body),
        "",
        "## Targets",
        "",
        *[f"- **{c['status']}** {report.subject(c)}: {c['check']} ({c['detail']})" for c in checked],
    ]
    for name, s in states.items():
        for note in s.notes:
            md.append(f"- note, {name}: {note}")
        for err in s.errors:
            md.append(f"- **error**, {name}: {err}")
    (out_dir / "bench.md").write_text("\n".join(md) + "\n")
    return table, checked


async def amain(
    cfg: Config, targets: list[str], keep: bool, phases: list[str] | None = None, mongo_uri: str | None = None
) -> int:
    root = scratch_root()
    namespace = new_namespace()  # distributed: bench-<id>; distribution-s3: S3 prefix bench-<id>-distribution
    started = [make_target(name, root, namespace, mongo_uri=mongo_uri) for name in targets]
    states: dict[str, State] = {}
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "loadavg_start": os.getloadavg(),
        "mongo_uri": next((t.env["HANZO_REGISTRY_METADATA__URI"] for t in started if t.namespace), None),
    }
    exit_code = 0
    http = ops.session()
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM and Ctrl-C cancel the run; the finally clause below still stops and cleans up everything.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        for t in started:
            t.start()
        await asyncio.gather(*(t.wait_ready() for t in started))
        print(f"ready: {', '.join(f'{t.name} {t.base} (pid {t.pid})' for t in started)}", flush=True)
        for t in started:
            states[t.name] = State(t, ops.Client(http, t.base))
        blobs = Blobs()
        for phase in [p for p in BENCHMARKS if phases is None or p.name == "setup" or p.name in phases]:
            rounds = phase.rounds(cfg) if phase.rounds is not None else 1
            elapsed = dict.fromkeys(states, 0.0)
            failed: set[str] = set()
            for round_ in range(rounds):
                # ABBA order (reversed every other round): no target always goes first.
                turn = list(states.values()) if round_ % 2 == 0 else list(reversed(states.values()))
                for s in turn:
                    if s.name in failed or (phase.name != "setup" and any(e.startswith("setup:") for e in s.errors)):
                        continue
                    t0 = time.perf_counter()
                    args = (s, cfg, blobs) if phase.rounds is None else (s, cfg, blobs, round_)
                    try:
                        await asyncio.wait_for(phase.func(*args), phase.timeout)
                    except Exception as exc:
                        failed.add(s.name)
                        msg = f"{phase.name}: {type(exc).__name__}: {exc}"
                        if not isinstance(exc, (ops.BenchError, TimeoutError)):
                            msg += "\n" + traceback.format_exc(limit=3)
                        s.errors.append(msg)
                        print(f"  {s.name:15} {phase.name:12} ERROR {msg}", flush=True)
                        if s.target.proc is not None and s.target.proc.poll() is not None:
                            s.errors.append(f"{s.name} exited ({s.target.proc.returncode}):\n{s.target.log_tail()}")
                            raise RuntimeError(f"{s.name} died") from exc
                    elapsed[s.name] += time.perf_counter() - t0
                    if round_ == rounds - 1 and s.name not in failed:
                        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in s.results.items()}
                        print(f"  {s.name:15} {phase.name:12} {elapsed[s.name]:6.1f}s  {shown}", flush=True)
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:
        print(f"bench: aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
        meta["aborted"] = f"{type(exc).__name__}: {exc}"
        exit_code = 1
    finally:
        await http.close()
        for t in started:
            t.stop()
        for t in started:
            problems = await cleanup(t)
            if problems:
                print(
                    f"bench: cleanup of {t.name} ({t.namespace or t.s3_prefix}) incomplete: {problems}", file=sys.stderr
                )
        meta["loadavg_end"] = os.getloadavg()
        meta["server_logs_tail"] = {t.name: t.log_tail(10) for t in started}
        if keep:
            print(f"scratch kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if states:
        table, checked = _write_reports(cfg, targets, states, meta)
        print()
        print(table)
        print()
        width = max((len(report.subject(c)) for c in checked), default=0)
        for c in checked:
            print(f"{c['status']:5} {report.subject(c):{width}}  {c['check']}: {c['detail']}")
        for s in states.values():
            for note in s.notes:
                print(f"note  {s.name:15} {note}")
        print(f"\nload average {meta['loadavg_start'][0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end")
        print(f"written: {ROOT / 'reports/bench/bench.json'}, {ROOT / 'reports/bench/bench.md'}")
    errors = [(n, e) for n, s in states.items() for e in s.errors]
    if errors:
        print("\nbenchmark errors:", file=sys.stderr)
        for n, e in errors:
            print(f"  {n}: {e}", file=sys.stderr)
        exit_code = 1
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 MiB blobs, 256 MiB RSS push, 3 s load")
    parser.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--procs", type=int, default=2, help="load-client processes for the req/s benchmarks")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each req/s benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (data and server logs)")
    parser.add_argument(
        "--mongo-uri",
        default=os.environ.get("HANZO_BENCH_MONGO_URI"),
        help="MongoDB/FerretDB of the distributed target instead of infra.env's (env HANZO_BENCH_MONGO_URI), "
        "e.g. mongodb://127.0.0.1:27018 for a second FerretDB on PostgreSQL",
    )
    names = [p.name for p in BENCHMARKS if p.name != "setup"]
    parser.add_argument(
        "--benchmarks",
        default=None,
        help=f"comma-separated subset of {','.join(names)} (a focused run; setup always runs)",
    )
    args = parser.parse_args(argv)
    phases = None if args.benchmarks is None else [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if phases is not None and (not phases or set(phases) - set(names)):
        parser.error(f"--benchmarks takes names from {', '.join(names)}; got {args.benchmarks!r}")
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        parser.error(f"--only takes names from {', '.join(TARGETS)}; got {args.only!r}")
    targets = [t for t in TARGETS if t in targets]
    cfg = config_of(args)
    try:
        import uvloop

        return uvloop.run(amain(cfg, targets, args.keep, phases, args.mongo_uri))
    except ImportError:
        return asyncio.run(amain(cfg, targets, args.keep, phases, args.mongo_uri))


if __name__ == "__main__":
    sys.exit(main())
