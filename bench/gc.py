"""GC at scale (issue 11, item 6): `python -m bench.gc`, also run by `make bench`.

1. **Metadata scale** (embedded ports: SQLite, filesystem): synthetic metadata written straight into the
   SQLite store (default 100,000 manifests of 10 blobs each = 1,000,000 blob records, 10 % of it garbage:
   untagged manifests 30 days old and their blobs). In a fresh process: an incremental run over 10
   repositories recorded as candidates (as tag moves would), then one real (not dry) full run: time and peak
   RSS of each (VmHWM; target < 500 MiB). The blob bytes are not written (the metadata side is measured here;
   deleting an absent file is the filesystem store's no-op).
2. **S3 deletes** against the local SeaweedFS (infra.env): N blobs stored under a prefix of their own, then
   (a) the S3 store's multi-object delete alone, and (b) a whole collector run over FerretDB + SeaweedFS
   (N unreferenced, old blob links: mark, claim, link deletes through the outbox, bulk delete, tombstones).
   Target: >= 10,000 blob deletions a minute.
3. **Push latency during a run** (embedded, in one process as `serve` runs it): small image pushes
   back to back, in rounds of a window during a run (fresh garbage seeded before each) and a window without
   one that lasts as long as that run, the two taking turns going first; p99 with / p99 without
   (target <= 1.5).
4. **The same on the distributed assembly**: `hanzo-registry distribution` in a process of its own, the collector
   in another as the gc service builds it (it paces on the replicas' activity beacons), on FerretDB, SeaweedFS
   and Kafka from `make infra-up`; 1,000 kept manifests written through FerretDB (`--push-manifests-distributed`).

Nothing is asserted: the numbers go to stdout and reports/bench-gc.json. `--manifests`, `--s3-blobs`,
`--push-rounds`, `--push-manifests` scale each part down on a loaded machine; `--skip` leaves parts out;
`--gc-concurrency` and `--gc-yield` override `gc.concurrency` (S3 and distributed push parts) and
`gc.yield_ratio` (push parts); `--gc-page` the collector's page (distributed push part). Diagnostics of the
distributed push part: `--gc-announce-only SECONDS` (runs that only announce themselves: the pushes' side of the
handshake alone) and `--trace-ops` (which of the collector's store calls the slow pushes overlapped).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import optrace
from bench.targets import ROOT, distributed_env, drop_database

DAY = 86400.0
BLOBS_PER_MANIFEST = 10
REPOSITORIES = 1000


def _digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def seed(db_path: Path, *, manifests: int, garbage: float, now: float, tag: str = "s") -> dict[str, int]:
    """Write `manifests` manifests (BLOBS_PER_MANIFEST own blobs each) with their links and tags straight
    into the SQLite store; the last `garbage` fraction untagged and 30 days old."""
    from services.core.storage import meta as m
    from services.core.storage.sqlite import _split_doc

    n_garbage = int(manifests * garbage)
    con = sqlite3.connect(db_path, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    rows: dict[str, list[tuple[str, str]]] = {m.MANIFESTS: [], m.BLOB_LINKS: [], m.TAGS: []}
    payload = b"{" + b" " * 900 + b"}"

    def flush() -> None:
        for collection, batch in rows.items():
            if batch:
                sql = f'INSERT OR REPLACE INTO "{collection}" (_id, doc) VALUES (?, ?)'  # noqa: S608 - our names
                con.executemany(sql, batch)
                batch.clear()
        con.commit()

    for i in range(manifests):
        repo = _repository(i)
        is_garbage = i >= manifests - n_garbage
        created = now - 30 * DAY if is_garbage else now - 2 * DAY
        blobs = [_digest(tag, i, b) for b in range(BLOBS_PER_MANIFEST)]
        digest = _digest(tag, "manifest", i)
        rows[m.MANIFESTS].append(_split_doc({
            "_id": f"{repo}@{digest}", "repository": repo, "digest": digest,
            "media_type": "application/vnd.oci.image.manifest.v1+json", "size": len(payload), "data": payload,
            "subject": None, "artifact_type": None, "annotations": [], "references": blobs, "created": created,
            "generation": uuid.uuid4().hex}))
        for b in blobs:
            rows[m.BLOB_LINKS].append(_split_doc({"_id": f"{repo}@{b}", "repository": repo, "digest": b,
                                                  "size": 4096, "created": created}))
        if not is_garbage:
            rows[m.TAGS].append(_split_doc({"_id": f"{repo}:t{tag}{i}", "repository": repo, "name": f"t{tag}{i}",
                                             "digest": digest}))
        if len(rows[m.BLOB_LINKS]) >= 50_000:
            flush()
    flush()
    con.close()
    return {"manifests": manifests, "blob_links": manifests * BLOBS_PER_MANIFEST, "garbage_manifests": n_garbage,
            "garbage_blobs": n_garbage * BLOBS_PER_MANIFEST}


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _settings(data_dir: Path, **extra: Any) -> Any:
    from services.core.settings import load_settings

    return load_settings(data_dir=data_dir, auth={"mode": "none"}, **extra)


def _collector(c: Any, *, settle: float = 0.0) -> Any:
    """The collector the gc service builds (build_runs: its concurrency for the store), with `settle`."""
    from services.gc.service import build_runs

    collector = build_runs(c).collector
    collector.settle = settle
    return collector


CANDIDATE_REPOSITORIES = 10


async def _child_run(data_dir: Path) -> dict[str, Any]:
    """In a fresh process: an incremental run over CANDIDATE_REPOSITORIES repositories recorded as candidates
    (as tag moves would), then one real full run over what `seed` wrote; time and peak RSS of each."""
    from services.core.bootstrap import container
    from services.gc.candidates import REPOSITORY, Candidate
    from services.gc.sweep import RunOptions

    async with container(_settings(data_dir)) as c:
        gc = _collector(c)
        await gc.setup()
        base = _hwm_bytes()
        for i in range(CANDIDATE_REPOSITORIES):
            await gc.candidates.record(Candidate(REPOSITORY, _repository(i)))
        started = time.perf_counter()
        incremental = await gc.run(RunOptions(run_id=uuid.uuid4().hex, incremental=True))
        incremental_seconds = time.perf_counter() - started
        after_incremental = _hwm_bytes()
        started = time.perf_counter()
        result = await gc.run(RunOptions(run_id=uuid.uuid4().hex))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(_hwm_bytes() / 2**20, 1),
            "rss_before_run_mib": round(base / 2**20, 1), "manifests_deleted": result.manifests_deleted,
            "blobs_deleted": result.blobs_deleted, "errors": len(result.errors),
            "incremental": {"candidate_repositories": CANDIDATE_REPOSITORIES,
                            "seconds": round(incremental_seconds, 1),
                            "peak_rss_mib": round(after_incremental / 2**20, 1),
                            "manifests_deleted": incremental.manifests_deleted,
                            "blobs_deleted": incremental.blobs_deleted, "errors": len(incremental.errors)}}


def _repository(i: int) -> str:
    return f"ns{i % 100:03d}/repo{(i // 100) % (REPOSITORIES // 100):02d}"


async def metadata_scale(manifests: int) -> dict[str, Any]:
    from services.core.bootstrap import container

    data_dir = Path(tempfile.mkdtemp(prefix="hzr-bench-gc-"))
    try:
        settings = _settings(data_dir)
        async with container(settings):  # creates the collections and indexes
            pass
        t = time.perf_counter()
        counts = seed(data_dir / "metadata.db", manifests=manifests, garbage=0.10, now=time.time())
        seeded = time.perf_counter() - t
        command = [sys.executable, "-m", "bench.gc", "--child", str(data_dir)]
        out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout  # noqa: ASYNC221
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)  # 1.3 GB at the default size
    run = json.loads(out.strip().splitlines()[-1])
    scale = 1_000_000 / counts["blob_links"]
    return {**counts, "seed_seconds": round(seeded, 1), **run,
            "extrapolated_seconds_at_1m_blobs": round(run["seconds"] * scale, 0) if scale != 1 else None}


async def s3_deletes(n: int, *, concurrency: int | None = None) -> dict[str, Any]:
    from services.core.bootstrap import container
    from services.core.oci.digest import Digest
    from services.core.storage import meta as m
    from services.gc.sweep import RunOptions

    namespace = f"bench-gc-{uuid.uuid4().hex[:8]}"
    env = distributed_env(namespace)
    s3 = {k.removeprefix("HANZO_REGISTRY_STORAGE__BLOBS__").lower(): v for k, v in env.items()
          if k.startswith("HANZO_REGISTRY_STORAGE__BLOBS__")}
    mongo = {"kind": "mongo", "uri": env["HANZO_REGISTRY_METADATA__URI"],
             "database": env["HANZO_REGISTRY_METADATA__DATABASE"]}
    scratch = Path(tempfile.mkdtemp(prefix="hzr-bench-gc-s3-"))
    settings = _settings(scratch, storage={"blobs": s3}, metadata=mongo, gc={"concurrency": concurrency})
    out: dict[str, Any] = {"blobs": n, "gc_concurrency": concurrency or "default"}
    async with container(settings) as c:
        try:
            async def store(i: int, tag: str) -> Digest:
                data = f"{tag} {i} {namespace}".encode()
                digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())

                async def chunks() -> Any:
                    yield data

                await c.blobs.put(digest, chunks())  # type: ignore[attr-defined]
                return digest

            async def store_all(tag: str) -> list[Digest]:
                sem = asyncio.Semaphore(32)

                async def one(i: int) -> Digest:
                    async with sem:
                        return await store(i, tag)

                return list(await asyncio.gather(*(one(i) for i in range(n))))

            t = time.perf_counter()
            digests = await store_all("raw")
            out["store_seconds"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            failed = await c.blobs.delete_many(digests)  # type: ignore[attr-defined]
            seconds = time.perf_counter() - t
            out["multi_object_delete"] = {"seconds": round(seconds, 2), "failed": len(failed),
                                          "per_minute": round(n / seconds * 60)}

            digests = await store_all("gc")
            old = time.time() - 30 * DAY
            sem = asyncio.Semaphore(32)

            async def link(d: Digest, i: int) -> None:
                async with sem:
                    repo = f"bench/r{i % 10}"
                    await c.docs.put(m.BLOB_LINKS, {"_id": f"{repo}@{d}", "repository": repo, "digest": str(d),
                                                    "size": 40, "created": old})

            await asyncio.gather(*(link(d, i) for i, d in enumerate(digests)))
            gc = _collector(c)
            await gc.setup()
            t = time.perf_counter()
            result = await gc.run(RunOptions(run_id=uuid.uuid4().hex))
            seconds = time.perf_counter() - t
            out["collector_run"] = {"seconds": round(seconds, 1), "blobs_deleted": result.blobs_deleted,
                                    "errors": len(result.errors),
                                    "per_minute": round(result.blobs_deleted / seconds * 60)}
        finally:
            for name in await _collections(c):
                await c.docs.drop_collection(name)
            shutil.rmtree(scratch, ignore_errors=True)
    await drop_database(mongo["uri"], mongo["database"])  # what the store made beside them (its lock collection)
    return out


async def _collections(c: Any) -> list[str]:
    from services.core.storage import meta as m

    return [m.BLOB_LINKS, m.MANIFESTS, m.TAGS, m.REPOSITORIES, m.UPLOADS, "outbox", "leases", "gc_marks"]


def _image(counter: int) -> tuple[list[tuple[str, bytes]], str, bytes]:
    """A small new image: its blobs (digest, bytes), and its manifest's media type and bytes."""
    layer = os.urandom(2048)
    config = json.dumps({"n": counter}).encode()
    blobs = [("sha256:" + hashlib.sha256(b).hexdigest(), b) for b in (layer, config)]
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[1][0],
                      "size": len(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[0][0],
                       "size": len(layer)}]}
    return blobs, str(doc["mediaType"]), json.dumps(doc).encode()


Push = Callable[[str, str, bytes, str], Awaitable[tuple[int, str]]]
"""(method, path, body, content type) -> (status, text): one request to the registry."""


async def _push_rounds(rounds: int, push: Push,
                       start_run: Callable[[], Awaitable[Awaitable[Any]]],
                       seed_garbage: Callable[[int], Awaitable[None]], *, lag: LoopLag | None = None,
                       spans: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """Rounds of small image pushes back to back, during a GC run and in a window without one as long as that
    run, the two taking turns going first. `lag`: this loop's lag, reported per kind of window. `spans`: gets
    each push during a run as (start, end) in wall-clock time (`--trace-ops`)."""
    off: list[float] = []
    on: list[float] = []
    windows: dict[str, list[tuple[float, float]]] = {"without": [], "during": []}
    runs_seconds: list[float] = []
    cuts: list[tuple[int, int]] = [(0, 0)]
    counter = 0

    async def push_for(until: Callable[[], bool], into: list[float]) -> None:
        nonlocal counter
        while not until():
            counter += 1
            blobs, media_type, manifest = _image(counter)
            wall = time.time()
            t = time.perf_counter()
            for digest, data in blobs:
                status, text = await push("POST", f"/v2/bench/push/blobs/uploads/?digest={digest}", data,
                                          "application/octet-stream")
                assert status == 201, text
            status, text = await push("PUT", f"/v2/bench/push/manifests/t{counter % 50}", manifest, media_type)
            assert status == 201, text
            into.append(time.perf_counter() - t)
            if spans is not None and into is on:
                spans.append((wall, time.time()))

    async def during_run() -> float:
        t = time.perf_counter()
        task = asyncio.ensure_future(await start_run())
        await push_for(task.done, on)
        await task
        windows["during"].append((t, time.perf_counter()))
        return time.perf_counter() - t

    async def without_run(window: float) -> None:
        t = time.perf_counter()
        deadline = t + window
        await push_for(lambda: time.perf_counter() > deadline, off)
        windows["without"].append((t, time.perf_counter()))

    # Windows without a run last as long as the run next to them, and the two take turns going first: a p99 is
    # only comparable over samples of the same length of time on this noisy machine.
    window = 0.0  # round 0 goes during-first: no window is needed before a run has been timed
    for r in range(rounds):
        await seed_garbage(r)
        if r % 2:
            await without_run(window)
            runs_seconds.append(await during_run())
        else:
            runs_seconds.append(await during_run())
            await without_run(runs_seconds[-1])
        window = runs_seconds[-1]
        cuts.append((len(off), len(on)))
    p99_off, p99_on = _p99(off), _p99(on)
    lags = {} if lag is None else {"client_loop_lag_ms": {
        kind: {"p99": round(_p99(xs) * 1000, 2), "max": round(max(xs) * 1000, 2)}
        for kind, spans in windows.items() if (xs := [x for a, b in spans for x in lag.between(a, b)])}}
    return {**lags, "rounds": rounds, "pushes_without": len(off), "pushes_during": len(on),
            "p99_without_ms": round(p99_off * 1000, 1), "p99_during_ms": round(p99_on * 1000, 1),
            "median_without_ms": round(statistics.median(off) * 1000, 1),
            "median_during_ms": round(statistics.median(on) * 1000, 1),
            "ratio": round(p99_on / p99_off, 2), "run_seconds": [round(x, 1) for x in runs_seconds],
            "p99_ms_by_round": [[round(_p99(off[a:b]) * 1000, 1), round(_p99(on[c:d]) * 1000, 1)]
                                for (a, c), (b, d) in itertools.pairwise(cuts)]}


async def _finished(runs: Any, run_id: str, into: list[dict[str, int]]) -> None:
    """Until run `run_id` is over; what it deleted and its errors go `into` the report (a run that leaves its
    work for later, e.g. claims too old to delete safely, must not pass for a fast one)."""
    await asyncio.gather(*runs._tasks)
    record = await runs.get(run_id, limit=0)
    into.append({k: int(record[k]) for k in ("manifests_deleted", "blobs_deleted", "errors")})


async def push_latency(rounds: int, seconds: float, manifests: int, *, yield_ratio: float | None = None
                       ) -> dict[str, Any]:
    """Embedded: the distribution app and the collector in one process, as `serve` runs them."""
    from aiohttp.test_utils import TestClient, TestServer

    from services.core.bootstrap import container
    from services.distribution import service as distribution
    from services.gc.runs import GcRuns

    data_dir = Path(tempfile.mkdtemp(prefix="hzr-bench-gc-push-"))
    settings = _settings(data_dir, gc={"enabled": False, "settle_seconds": 1.0, "yield_ratio": yield_ratio})
    async with container(settings) as c:
        parts = await distribution.build(c)
        assert parts.http is not None
        runs = GcRuns(c.docs, c.outbox, _collector(c, settle=1.0), settings.topics)
        await runs.setup()
        seed(data_dir / "metadata.db", manifests=manifests, garbage=0.0, now=time.time(), tag="kept")
        async with TestClient(TestServer(parts.http)) as client:
            async def push(method: str, path: str, body: bytes, content_type: str) -> tuple[int, str]:
                resp = await client.request(method, path, data=body, headers={"Content-Type": content_type})
                return resp.status, await resp.text()

            async def start_run() -> Awaitable[Any]:
                return _finished(runs, await runs.start(trigger="api"), outcomes)

            async def seed_garbage(r: int) -> None:
                seed(data_dir / "metadata.db", manifests=manifests // 10, garbage=1.0, now=time.time(), tag=f"g{r}")

            outcomes: list[dict[str, int]] = []
            out = await _push_rounds(rounds, push, start_run, seed_garbage)
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"assembly": "embedded", "gc_yield_ratio": "default" if yield_ratio is None else yield_ratio, **out,
            "runs": outcomes}


async def _seed_documents(c: Any, *, manifests: int, garbage: bool, now: float, tag: str) -> None:
    """`seed`'s documents through the metadata port (the distributed store: FerretDB), 32 writes at a time."""
    from services.core.storage import meta as m

    created = now - 30 * DAY if garbage else now - 2 * DAY
    docs: list[tuple[str, dict[str, Any]]] = []
    for i in range(manifests):
        repo = _repository(i)
        blobs = [_digest(tag, i, b) for b in range(BLOBS_PER_MANIFEST)]
        digest = _digest(tag, "manifest", i)
        docs.append((m.MANIFESTS, {
            "_id": f"{repo}@{digest}", "repository": repo, "digest": digest,
            "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 902, "data": b"{" + b" " * 900 + b"}",
            "subject": None, "artifact_type": None, "annotations": [], "references": blobs, "created": created,
            "generation": uuid.uuid4().hex}))
        docs += [(m.BLOB_LINKS, {"_id": f"{repo}@{b}", "repository": repo, "digest": b, "size": 4096,
                                 "created": created}) for b in blobs]
        if not garbage:
            docs.append((m.TAGS, {"_id": f"{repo}:t{tag}{i}", "repository": repo, "name": f"t{tag}{i}",
                                  "digest": digest, "version": 1, "updated": created}))
    sem = asyncio.Semaphore(32)

    async def put(collection: str, doc: dict[str, Any]) -> None:
        async with sem:
            await c.docs.put(collection, doc)

    await asyncio.gather(*(put(collection, doc) for collection, doc in docs))


async def push_latency_distributed(rounds: int, manifests: int, *, yield_ratio: float | None = None,
                                   concurrency: int | None = None, page: int | None = None,
                                   busy_concurrency: int | None = None, busy_page: int | None = None,
                                   announce_only: float | None = None, trace_ops: bool = False) -> dict[str, Any]:
    """Distributed: the distribution service in a process of its own (`hanzo-registry distribution`) and the
    collector in another (`_collector_child`, built as the gc service builds it), on FerretDB, SeaweedFS and
    Kafka: what a run costs the pushes through the shared metadata store. The collector used to run in this
    process, beside the pushing client: its work on this event loop then delayed the client's own reads of
    the replies, which production (a gc service of its own) never sees; `client_loop_lag_ms` reports what
    this loop's lag still is. The blob bytes of the garbage are not written (deleting an absent S3 object is
    a no-op)."""
    import aiohttp

    from bench.targets import cleanup, make_target, new_namespace
    from services.core.bootstrap import container

    namespace = new_namespace()
    root = Path(tempfile.mkdtemp(prefix="hzr-bench-gc-dpush-"))
    target = make_target("distributed", root, namespace)
    env = {k: v for k, v in distributed_env(namespace).items() if k.startswith("HANZO_REGISTRY_")}
    saved = {k: v for k, v in os.environ.items() if k.startswith("HANZO_REGISTRY_")}
    os.environ.update(env)
    try:
        settings = _settings(root / "bench", gc={"enabled": False})
    finally:
        for k in [k for k in os.environ if k.startswith("HANZO_REGISTRY_")]:
            del os.environ[k]
        os.environ.update(saved)
    knobs = {"data_dir": str(root / "gc"), "yield_ratio": yield_ratio, "concurrency": concurrency, "page": page,
             "busy_concurrency": busy_concurrency, "busy_page": busy_page, "announce_only": announce_only,
             "trace_file": str(root / "ops.json") if trace_ops else None}
    spans: list[tuple[float, float]] | None = [] if trace_ops else None
    overlaps: dict[str, Any] = {}
    target.start()
    child: asyncio.subprocess.Process | None = None
    try:
        await target.wait_ready(timeout=90)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.gc", "--collector-child", json.dumps(knobs), cwd=ROOT,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("HANZO_REGISTRY_")}, **env},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        collector = await _child_reply(child)  # ready: what the gc service's build gave it
        async with container(settings) as c, aiohttp.ClientSession() as http:
            await _seed_documents(c, manifests=manifests, garbage=False, now=time.time(), tag="kept")

            async def push(method: str, path: str, body: bytes, content_type: str) -> tuple[int, str]:
                async with http.request(method, target.base + path, data=body,
                                        headers={"Content-Type": content_type}) as resp:
                    return resp.status, await resp.text()

            async def start_run() -> Awaitable[Any]:
                assert child is not None and child.stdin is not None
                child.stdin.write(b"run\n")
                await child.stdin.drain()

                async def finished() -> None:
                    assert child is not None
                    outcomes.append(await _child_reply(child))
                return finished()

            async def seed_garbage(r: int) -> None:
                await _seed_documents(c, manifests=manifests // 10, garbage=True, now=time.time(), tag=f"g{r}")

            outcomes: list[dict[str, int]] = []
            with LoopLag() as lag:
                out = await _push_rounds(rounds, push, start_run, seed_garbage, lag=lag, spans=spans)
            if spans is not None:
                threshold = out["p99_without_ms"] / 1000
                overlaps["slow_push_overlap"] = optrace.overlap(spans, optrace.load(root / "ops.json"),
                                                                lambda seconds: seconds > threshold)
    finally:  # the namespace's database, prefix and topics go with it
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
        target.stop()
        await cleanup(target)
        shutil.rmtree(root, ignore_errors=True)
    return {"assembly": "distributed", "kept_manifests": manifests, "collector": "a process of its own",
            **collector, **out, "runs": outcomes, **overlaps}


async def _child_reply(child: asyncio.subprocess.Process) -> dict[str, Any]:
    assert child.stdout is not None
    line = await child.stdout.readline()
    if not line:
        raise RuntimeError(f"the collector process ended (exit {await child.wait()}); its stderr says why")
    return dict(json.loads(line))


async def _collector_child(knobs: dict[str, Any]) -> None:
    """The distributed push part's collector, as the gc service builds it, in a process of its own: it says
    it is ready with its knobs (one JSON line), then for each `run` line on stdin starts a run and answers,
    once it is over, with what it deleted and its errors."""
    from services.core.bootstrap import container
    from services.gc import service
    from services.gc.runs import GcRuns

    if knobs.get("trace_file"):
        optrace.install()
    settings = _settings(Path(knobs["data_dir"]), gc={"enabled": False, "settle_seconds": 1.0,
                                                      "yield_ratio": knobs["yield_ratio"],
                                                      "concurrency": knobs["concurrency"]})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with container(settings) as c:
        collector = _collector(c, settle=1.0)
        if knobs["page"] is not None:
            collector.page = knobs["page"]
        if knobs["busy_concurrency"] is not None:
            collector.busy_concurrency = knobs["busy_concurrency"] or None
        if knobs["busy_page"] is not None:
            collector.busy_page = knobs["busy_page"] or None
        if knobs.get("announce_only"):
            collector.run = _announcing_only(collector, knobs["announce_only"])
        runs = GcRuns(c.docs, c.outbox, collector, settings.topics)
        await runs.setup()
        print(json.dumps({"gc_announce_only": knobs.get("announce_only"),
                          "gc_concurrency": service.concurrency(c), "gc_yield_ratio": service.yield_ratio(c),
                          "gc_page": collector.page, "gc_busy_concurrency": collector.busy_concurrency,
                          "gc_busy_page": collector.busy_page}), flush=True)
        while (await reader.readline()).strip() == b"run":
            outcomes: list[dict[str, int]] = []
            await _finished(runs, await runs.start(trigger="api"), outcomes)
            if knobs.get("trace_file"):
                optrace.dump(Path(knobs["trace_file"]))
            print(json.dumps(outcomes[0]), flush=True)


def _announcing_only(collector: Any, seconds: float) -> Callable[[Any], Awaitable[Any]]:
    """A run that only announces itself for `seconds` (`--gc-announce-only`): what the push side's share of the
    handshake (a mark read per blob link, a hold and the marks' read per manifest) costs, with no collector
    work beside it."""
    from services.gc.sweep import RunResult

    async def run(options: Any) -> Any:
        await collector.marks.announce(options.run_id)
        try:
            await asyncio.sleep(seconds)
        finally:
            await collector.marks.conclude(options.run_id)
        return RunResult()

    return run


class LoopLag:
    """How late this event loop wakes a 1 ms sleep: what the pushing client's own timing includes beyond the
    registry's answer (a busy loop here reads replies late)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (when, lag)
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.samples.append((now, now - t - 0.001))

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._probe())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def between(self, start: float, end: float) -> list[float]:
        return [lag for when, lag in self.samples if start <= when <= end]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if "metadata" not in args.skip:
        report["metadata_scale"] = await metadata_scale(args.manifests)
        print("metadata scale:", json.dumps(report["metadata_scale"]), flush=True)
    if "s3" not in args.skip:
        report["s3_deletes"] = await s3_deletes(args.s3_blobs, concurrency=args.gc_concurrency)
        print("S3 deletes:", json.dumps(report["s3_deletes"]), flush=True)
    if "push" not in args.skip:
        report["push_latency"] = await push_latency(args.push_rounds, args.push_seconds, args.push_manifests,
                                                    yield_ratio=args.gc_yield)
        print("push latency:", json.dumps(report["push_latency"]), flush=True)
    if "push-distributed" not in args.skip:
        report["push_latency_distributed"] = await push_latency_distributed(
            args.push_rounds, args.push_manifests_distributed, yield_ratio=args.gc_yield,
            concurrency=args.gc_concurrency, page=args.gc_page, busy_concurrency=args.gc_busy_concurrency,
            busy_page=args.gc_busy_page, announce_only=args.gc_announce_only, trace_ops=args.trace_ops)
        print("push latency (distributed):", json.dumps(report["push_latency_distributed"]), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=int, default=100_000, help="x10 blob records (default 100000)")
    parser.add_argument("--s3-blobs", type=int, default=10_000)
    parser.add_argument("--gc-concurrency", type=int, help="gc.concurrency of the S3 part (default: the service's)")
    parser.add_argument("--gc-yield", type=float, help="gc.yield_ratio of the push part (default: the service's)")
    parser.add_argument("--gc-page", type=int, help="the collector's page of the distributed push part")
    parser.add_argument("--gc-busy-concurrency", type=int,
                        help="steps in flight while requests come, distributed push part (0: no limit)")
    parser.add_argument("--gc-busy-page", type=int, help="the page while requests come, distributed push part")
    parser.add_argument("--gc-announce-only", type=float, metavar="SECONDS",
                        help="distributed push part: runs that only announce themselves for this long (what the "
                             "pushes' side of the handshake costs alone)")
    parser.add_argument("--trace-ops", action="store_true",
                        help="distributed push part: rank the collector's kinds of store call by how many slow "
                             "pushes each overlapped (bench/optrace.py), in the report's slow_push_overlap")
    parser.add_argument("--push-rounds", type=int, default=3)
    parser.add_argument("--push-seconds", type=float, default=10.0,
                        help="unused since windows match the run's length; kept for old command lines")
    parser.add_argument("--push-manifests", type=int, default=5_000,
                        help="kept metadata beside the pushes (a run over 5,000 takes about a minute here)")
    parser.add_argument("--push-manifests-distributed", type=int, default=1_000,
                        help="kept metadata beside the distributed pushes (written through FerretDB)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["metadata", "s3", "push", "push-distributed"])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--collector-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collector_child:
        asyncio.run(_collector_child(json.loads(args.collector_child)))
        return 0
    if args.child:
        print(json.dumps(asyncio.run(_child_run(args.child))))
        return 0
    report = asyncio.run(amain(args))
    out = ROOT / "reports" / "bench-gc.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("child", "collector_child")},
                               **report}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
