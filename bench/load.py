"""Request-rate load: several processes, each a uvloop loop driving keep-alive HTTP/1.1 connections.

A minimal raw-socket client is used here instead of aiohttp's: aiohttp's client costs ~100-200 µs of
CPU per request, which on a 2-core machine would measure the client rather than a Go registry. Each
process runs `conns` connections, one request in flight per connection (no pipelining)."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(
        self, method: str, target: str, headers: bytes = b"", body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (method.encode(), target.encode(), self.host_header, headers)
        if body or method in ("POST", "PUT", "PATCH"):
            head += b"Content-Length: %d\r\n" % len(body)
        self.writer.write(head + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0][9:12])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        data = b""
        if method != "HEAD" and status not in (204, 304) and not 100 <= status < 200:
            if hdrs.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
                    parts.append(chunk[:-2])
                data = b"".join(parts)
            elif "content-length" in hdrs:
                data = await self.reader.readexactly(int(hdrs["content-length"]))
            else:
                data = await self.reader.read()
                self.close()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, data


def _path_of(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass
class Scenario:
    """What one connection does per iteration; returns nothing or raises HttpError."""

    kind: str  # manifest-get | manifest-head | small-blob
    path: str  # manifest URL path, or the repository's /v2/<name>/blobs/uploads/ path
    accept: str = ""
    monolithic: bool = False
    worker: int = 0

    async def run(self, conn: Conn, seq: int) -> None:
        if self.kind in ("manifest-get", "manifest-head"):
            method = "GET" if self.kind == "manifest-get" else "HEAD"
            status, _, body = await conn.request(method, self.path, f"Accept: {self.accept}\r\n".encode())
            if status != 200:
                raise HttpError(f"{method} {self.path} -> {status} {body[:300]!r}")
            return
        blob = b"%08d:%012d:" % (self.worker, seq) + os.urandom(16).hex().encode()
        blob = blob.ljust(1024, b".")
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        if self.monolithic:
            target = f"{self.path}?digest={digest}"
            status, _, body = await conn.request("POST", target, b"Content-Type: application/octet-stream\r\n", blob)
            if status != 201:
                raise HttpError(f"POST {target} (1 KiB body) -> {status} {body[:300]!r}")
            return
        status, hdrs, body = await conn.request("POST", self.path)
        if status != 202 or "location" not in hdrs:
            raise HttpError(f"POST {self.path} -> {status} {body[:300]!r}")
        loc = _path_of(hdrs["location"])
        target = f"{loc}{'&' if '?' in loc else '?'}digest={digest}"
        status, _, body = await conn.request("PUT", target, b"Content-Type: application/octet-stream\r\n", blob)
        if status != 201:
            raise HttpError(f"PUT {target} (1 KiB body) -> {status} {body[:300]!r}")


async def _worker_main(spec: dict[str, Any], barrier: Any) -> dict[str, Any]:
    scenario = Scenario(**spec["scenario"])
    conns = [Conn("127.0.0.1", spec["port"]) for _ in range(spec["conns"])]
    for c in conns:
        await c.connect()
    await asyncio.to_thread(barrier.wait, 120)
    t0 = time.perf_counter()
    warm_end = t0 + spec["warmup"]
    end = warm_end + spec["duration"]
    latencies: list[float] = []
    errors: list[str] = []
    cpu_at_start = [time.process_time()]

    async def mark_window() -> None:
        await asyncio.sleep(spec["warmup"])
        cpu_at_start[0] = time.process_time()

    async def loop(conn: Conn, index: int) -> None:
        seq = index * 10_000_000
        while True:
            start = time.perf_counter()
            if start >= end:
                return
            seq += 1
            try:
                await scenario.run(conn, seq)
            except (HttpError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                if start >= warm_end:
                    errors.append(f"{type(exc).__name__}: {exc}")
                if len(errors) > 1000:
                    return
                continue
            done = time.perf_counter()
            if start >= warm_end and done <= end:
                latencies.append(done - start)

    await asyncio.gather(mark_window(), *(loop(c, i) for i, c in enumerate(conns)))
    cpu = time.process_time() - cpu_at_start[0]
    for c in conns:
        c.close()
    return {
        "count": len(latencies),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:5],
        "latencies": latencies,
        "cpu": cpu,
    }


def _worker(spec: dict[str, Any], barrier: Any, queue: Any) -> None:
    try:
        import uvloop

        result = uvloop.run(_worker_main(spec, barrier))
    except BaseException as exc:
        barrier.abort()
        result = {"crash": f"{type(exc).__name__}: {exc}"}
    queue.put(result)


@dataclass
class LoadResult:
    rps: float
    requests: int
    errors: int
    first_errors: list[str]
    p50_ms: float
    p99_ms: float
    client_cpu_pct: float
    server_cpu_pct: float
    machine_cpu_pct: float  # every process on the machine, in % of one core (2 cores = 200)
    infra_cpu_pct: float  # Kafka + FerretDB + SeaweedFS (the distributed assembly's servers)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    ticks = os.sysconf("SC_CLK_TCK")
    return (total - idle) / ticks, total / ticks


async def run_load(
    *,
    port: int,
    scenario: dict[str, Any],
    procs: int,
    conns: int,
    duration: float,
    warmup: float,
    server_cpu: Any,
    infra_cpu: Any,
) -> LoadResult:
    """Run `procs` processes with `conns // procs` connections each; `server_cpu()` -> CPU seconds."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    queue = ctx.Queue()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = []
    for i in range(procs):
        spec = {
            "port": port,
            "conns": per[i],
            "warmup": warmup,
            "duration": duration,
            "scenario": {**scenario, "worker": i},
        }
        p = ctx.Process(target=_worker, args=(spec, barrier, queue), daemon=True)
        p.start()
        workers.append(p)
    try:
        try:
            await asyncio.to_thread(barrier.wait, 60)
        except threading.BrokenBarrierError:
            codes = [p.exitcode for p in workers]
            raise RuntimeError(f"load workers did not start (exit codes {codes})") from None
        await asyncio.sleep(warmup)
        cpu0, m0, i0, t0 = server_cpu(), machine_cpu(), infra_cpu(), time.perf_counter()
        await asyncio.sleep(duration)
        cpu1, m1, i1, t1 = server_cpu(), machine_cpu(), infra_cpu(), time.perf_counter()
        results = [await asyncio.to_thread(queue.get, True, duration + warmup + 120) for _ in workers]
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    crashes = [r["crash"] for r in results if "crash" in r]
    if crashes:
        raise RuntimeError(f"load worker failed: {crashes[0]}")
    lat = sorted(x for r in results for x in r["latencies"])
    count = len(lat)
    errors = sum(r["errors"] for r in results)
    first = sorted({e for r in results for e in r["first_errors"]})[:5]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return LoadResult(
        rps=count / duration,
        requests=count,
        errors=errors,
        first_errors=first,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        client_cpu_pct=100 * sum(r["cpu"] for r in results) / duration,
        server_cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        machine_cpu_pct=100 * (m1[0] - m0[0]) / (t1 - t0),
        infra_cpu_pct=100 * (i1 - i0) / (t1 - t0),
    )
