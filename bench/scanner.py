"""The vulnerability scanner's speed (issue 12, item 9), in one process holding the embedded registry (files +
SQLite in a temp dir), its HTTP API on a loopback port, and the scanner consuming its manifest pushes:

- push -> complete report of the debootstrap bookworm image (tests/integration/scan_images.py, built and
  cached once): from the first blob upload to the stored `complete` report; target < 5 s. The scanner's
  throughput (images per minute, one scan at a time) is measured on the same image by forced re-scans;
- re-matching 10,000 stored inventories (synthetic, written directly: a Debian base of 90 packages plus PyPI
  and npm packages, 120 per image) after a database import that changes every report; target < 60 s;
- the process's RSS while scanning a 1 GiB image (one layer of random files plus a dpkg status, built once
  under ~/.cache/hanzo-registry/scan-images/bench-1g/); the peak (VmHWM, reset just before the scan) and the
  sampled maximum; target < 300 MiB.

Run: `python -m bench.scanner` (`make bench` runs it). Writes reports/bench-scanner.json. Exit code 0 even if
a target is missed (it is a report), 1 if a benchmark failed.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.core.bootstrap import Container, container
from services.core.runtime import EventConsumer
from services.core.scan.store import REPORTS, ReportStore, report_id
from services.core.settings import load_settings
from services.distribution import service as distribution
from services.scanner import service as scanner_service
from services.scanner.engine import INVENTORIES, ScanEngine
from services.scanner.inventory.scan import Inventory, OsInfo, Package

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BIG_DIR = Path.home() / ".cache/hanzo-registry/scan-images/bench-1g"
MIB = 1024 * 1024


@dataclass
class Harness:
    c: Container
    base: str
    http: aiohttp.ClientSession
    engine: ScanEngine
    reports: ReportStore


@asynccontextmanager
async def harness(root: Path) -> AsyncIterator[Harness]:
    settings = load_settings(data_dir=root, auth={"mode": "none"})
    settings.scanner.rematch_interval_seconds = 0.2
    async with container(settings) as c:
        parts = await distribution.build(c)
        assert parts.http is not None
        runner = web.AppRunner(parts.http, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        engine = ScanEngine(registry=scanner_service.build_registry(c), docs=c.docs, outbox=c.outbox,
                            settings=c.settings.scanner, topics=c.settings.topics)
        await engine.setup()
        consumer = EventConsumer(events=c.events, docs=c.docs, metrics=c.metrics, service="scanner",
                                 topic=c.settings.topics.manifests, group="hanzo-registry.scanner",
                                 handler=scanner_service.Handler(engine), settings=c.settings.consumer)
        await consumer.setup()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loop(stop)) for loop in parts.loops]
        tasks.append(asyncio.create_task(consumer.run(stop)))
        try:
            async with aiohttp.ClientSession() as http:
                yield Harness(c, f"http://127.0.0.1:{port}", http, engine, engine.reports)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob_file(h: Harness, repo: str, path: Path | None, *, data: bytes = b"", digest: str = "") -> None:
    async with h.http.post(f"{h.base}/v2/{repo}/blobs/uploads/") as r:
        assert r.status == 202, await r.text()
        location = r.headers["Location"]
    url = location if location.startswith("http") else h.base + location
    sep = "&" if "?" in url else "?"
    body: Any = data
    if path is not None:
        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(4 * MIB):
                    yield chunk
        body = chunks()
    async with h.http.put(f"{url}{sep}digest={digest or _digest(data)}", data=body,
                          headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201, await r.text()


async def push_image(h: Harness, repo: str, tag: str, layers: list[tuple[Path, str, int, str]]) -> str:
    """Push (path, digest, size, diff_id) layers with a config and manifest; the manifest digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [x[3] for x in layers]}, "nonce": uuid.uuid4().hex}).encode()
    for path, digest, _, _ in layers:
        await push_blob_file(h, repo, path, digest=digest)
    await push_blob_file(h, repo, None, data=config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for _, d, s, _ in layers]
                           }).encode()
    async with h.http.put(f"{h.base}/v2/{repo}/manifests/{tag}", data=manifest,
                          headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201, await r.text()
    return _digest(manifest)


async def wait_report(h: Harness, repo: str, digest: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = await h.reports.get(repo, digest)
        if doc is not None and doc.get("status") in ("complete", "failed", "unsupported"):
            if doc["status"] != "complete":
                raise RuntimeError(f"scan of {repo}@{digest}: {doc['status']} {doc.get('error')}")
            return doc
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no report for {repo}@{digest} within {timeout}s")


# 1. push -> report ------------------------------------------------------------------------------------


async def bench_push_to_report(h: Harness, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration.scan_images import build_all  # the images the accuracy test uses

    t = time.monotonic()
    img = build_all()["debian"]
    build_seconds = time.monotonic() - t
    layers = [(x.path, x.digest, x.size, x.diff_id) for x in img.layers]
    samples: list[float] = []
    packages = 0
    first = ""
    for i in range(rounds):
        t0 = time.monotonic()
        digest = await push_image(h, f"bench/debian{i}", "v1", layers)  # a new repository: a full upload each time
        doc = await wait_report(h, f"bench/debian{i}", digest, timeout=120)
        samples.append(time.monotonic() - t0)
        packages = doc["images"][0]["packages"]
        first = first or digest
    # the scanner alone: forced re-scans (layers read from the blob store again, inventory, match, SBOM, store)
    scans: list[float] = []
    for _ in range(rounds):
        t0 = time.monotonic()
        await h.engine.scan("bench/debian0", first, force=True)
        scans.append(time.monotonic() - t0)
    scan = statistics.median(scans)
    return {"image": "debootstrap --variant=minbase bookworm", "compressed_bytes": img.layers[0].size,
            "packages": packages, "push_to_report_seconds": [round(x, 2) for x in samples],
            "push_to_report_median": round(statistics.median(samples), 2), "target": "< 5 s",
            "scan_seconds": [round(x, 2) for x in scans],
            "images_per_minute_one_at_a_time": round(60 / scan, 1) if scan else None,
            "image_build_or_cache_seconds": round(build_seconds, 1)}


# 2. re-matching 10,000 inventories ---------------------------------------------------------------------

DEBIAN = OsInfo("debian", "12", "Debian GNU/Linux 12 (bookworm)", "bookworm", "Debian:12")


def synthetic_inventory(i: int, rng: random.Random) -> Inventory:
    layer = f"sha256:{i:064x}"
    pkgs: list[Package] = []
    for j in range(90):
        name, version = f"libdemo{j}", f"1.{rng.randrange(0, 6)}-{rng.randrange(1, 4)}"
        pkgs.append(Package("deb", name, version, f"pkg:deb/debian/{name}@{version}?distro=debian-12", layer,
                            "/var/lib/dpkg/status", f"src{j // 3}", version, "amd64"))
    for j in range(15):
        name, version = f"pydemo{j}", f"2.{rng.randrange(0, 30)}.0"
        pkgs.append(Package("pypi", name, version, f"pkg:pypi/{name}@{version}", layer,
                            f"/usr/lib/python3/site-packages/{name}-{version}.dist-info/METADATA"))
    for j in range(15):
        name, version = f"jsdemo{j}", f"4.{rng.randrange(0, 20)}.{rng.randrange(0, 3)}"
        pkgs.append(Package("npm", name, version, f"pkg:npm/{name}@{version}", layer,
                            f"/app/node_modules/{name}/package.json"))
    return Inventory(DEBIAN, pkgs, [layer])


def synthetic_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """A database the size of a real one's slice for these ecosystems: most records name packages no
    stored image holds (as in OSV: ~100k packages, an image holds a few hundred); one names a package the
    images hold (`src*`), so about 1 in 6 images' reports change."""
    records = []
    for k in range(n):
        kind = k % 3
        held = k == 0
        if kind == 0:
            name = f"src{rng.randrange(0, 30)}" if held else f"other-src{k}"
            eco, fixed, rtype = "Debian:12", "1.0-2", "ECOSYSTEM"
        elif kind == 1:
            name = f"pydemo{rng.randrange(0, 15)}" if held else f"other-py{k}"
            eco, fixed, rtype = "PyPI", "2.1.0", "ECOSYSTEM"
        else:
            name = f"jsdemo{rng.randrange(0, 15)}" if held else f"other-js{k}"
            eco, fixed, rtype = "npm", "4.1.0", "SEMVER"
        records.append({"id": f"BENCH-{k:05d}", "modified": "2025-01-01T00:00:00Z", "aliases": [f"CVE-2099-{k:05d}"],
                        "affected": [{"package": {"ecosystem": eco, "name": name}, "ranges": [
                            {"type": rtype, "events": [{"introduced": "0"}, {"fixed": fixed}]}]}],
                        "severity": [{"type": "CVSS_V3",
                                      "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]})
    return records


async def bench_rematch(h: Harness, count: int, records: int) -> dict[str, Any]:
    rng = random.Random(12)
    docs = h.c.docs
    t0 = time.monotonic()
    for i in range(count):
        inv = synthetic_inventory(i, rng)
        image = f"sha256:{i + 10**6:064x}"
        await docs.put(INVENTORIES, {"_id": image, "inventory": inv.to_doc(), "at": time.time()})
        repo = f"bench/rematch{i % 100}"
        await docs.put(REPORTS, {"_id": report_id(repo, image), "repository": repo, "digest": image,
                                 "media_type": OCI_MANIFEST, "status": "complete", "error": "", "findings": [],
                                 "images": [{"digest": image, "platform": "", "status": "complete", "error": "",
                                             "findings": [], "os": "Debian", "packages": len(inv.packages)}],
                                 "scanned_at": time.time(), "updated_at": time.time(), "db_generation": 0})
    setup = time.monotonic() - t0
    rec = synthetic_records(records, rng)
    t1 = time.monotonic()
    result = await h.engine.vulndb.import_records(rec, source="bench")
    imported = time.monotonic() - t1
    t2 = time.monotonic()
    await h.engine.refresh_index()
    index_seconds = time.monotonic() - t2
    changed = await h.engine.rematch_all()
    total = time.monotonic() - t2
    return {"inventories": count, "packages_each": 120, "records": result.imported, "reports_changed": changed,
            "seconds_per_changed_report_upper_bound": round(total / changed, 3) if changed else None,
            "import_seconds": round(imported, 2), "index_load_seconds": round(index_seconds, 2),
            "rematch_seconds_after_import": round(total, 2), "target": "< 60 s",
            "setup_seconds_writing_inventories": round(setup, 1)}


# 3. RSS while scanning 1 GiB ---------------------------------------------------------------------------


def big_layer(size: int) -> tuple[Path, str, int, str]:
    """A gzip layer of random files totalling `size` bytes plus a dpkg status and os-release (cached)."""
    BIG_DIR.mkdir(parents=True, exist_ok=True)
    meta = BIG_DIR / f"layer-{size}.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        return BIG_DIR / m["file"], m["digest"], m["size"], m["diff_id"]
    rng = random.Random(1)
    tmp = BIG_DIR / f".layer-{os.getpid()}.tmp"
    outer_h, inner_h = hashlib.sha256(), hashlib.sha256()

    class Tee(io.RawIOBase):
        def __init__(self, sink: Any, h: Any) -> None:
            self.sink, self.h = sink, h

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.h.update(b)
            self.sink.write(b)
            return len(b)

    status = b"".join(
        f"Package: pkg{j}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.{j}-1\n\n".encode()
        for j in range(200))
    with open(tmp, "wb") as raw:
        outer = Tee(raw, outer_h)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=1, mtime=0) as gz:
            inner = Tee(gz, inner_h)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for name, data in (("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'),
                                   ("var/lib/dpkg/status", status)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                written, k = 0, 0
                while written < size:
                    n = min(size - written, rng.choice((4096, 65536, 1 << 20, 8 << 20)))
                    info = tarfile.TarInfo(f"data/d{k % 64}/f{k}.bin")
                    info.size = n
                    tf.addfile(info, io.BytesIO(os.urandom(n)))
                    written += n
                    k += 1
    digest = "sha256:" + outer_h.hexdigest()
    final = BIG_DIR / digest.split(":")[1]
    os.replace(tmp, final)
    meta.write_text(json.dumps({"file": final.name, "digest": digest, "size": final.stat().st_size,
                                "diff_id": "sha256:" + inner_h.hexdigest()}))
    return final, digest, final.stat().st_size, "sha256:" + inner_h.hexdigest()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def bench_rss(h: Harness, size: int) -> dict[str, Any]:
    layer = await asyncio.to_thread(big_layer, size)
    digest = await push_image(h, "bench/big", "v1", [layer])
    # the push scans it too: wait for that report, then measure a forced re-scan alone
    await wait_report(h, "bench/big", digest, timeout=600)
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_status_kib("VmRSS"))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        doc = await h.engine.scan("bench/big", digest, force=True)
    finally:
        done.set()
        thread.join()
    seconds = time.monotonic() - t0
    assert doc is not None and doc["status"] == "complete", doc
    peak = _status_kib("VmHWM")
    return {"layer_compressed_bytes": layer[2], "uncompressed_file_bytes": size,
            "packages": doc["images"][0]["packages"], "scan_seconds": round(seconds, 1),
            "rss_before_mib": round(baseline / 1024, 1), "rss_sampled_max_mib": round(max(samples) / 1024, 1),
            "rss_peak_mib": round(peak / 1024, 1), "target": "< 300 MiB (process peak during the scan)",
            "mib_per_second": round(size / MIB / seconds, 1) if seconds else None}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hzr-bench-scanner-"))
    out: dict[str, Any] = {}
    try:
        async with harness(root) as h:
            if "push" in args.benchmarks:
                out["push_to_report"] = await bench_push_to_report(h, args.rounds)
                print(json.dumps(out["push_to_report"]), flush=True)
            if "rss" in args.benchmarks:
                out["rss_1gib"] = await bench_rss(h, args.big_mib * MIB)
                print(json.dumps(out["rss_1gib"]), flush=True)
            if "rematch" in args.benchmarks:
                out["rematch"] = await bench_rematch(h, args.inventories, args.records)
                print(json.dumps(out["rematch"]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inventories", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=3_000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--benchmarks", default="push,rss,rematch")
    parser.add_argument("--out", default="reports/bench-scanner.json")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(amain(args))
    except (AssertionError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"bench.scanner failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
