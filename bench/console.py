"""The console's tag pages on a repository with 10,000 tags (issue 18, item 3): `python -m bench.console`.

Each assembly in this process (the embedded one on SQLite and the filesystem; the distributed one on the local
FerretDB, SeaweedFS and Kafka of `make infra-up`), auth on, behind a real loopback socket: one image pushed,
then `--tags` tags on it (the tag documents a push writes, inserted directly: pushing 10,000 tags one by one
would take minutes on FerretDB) and, for comparison, a repository of 100 tags. A logged-in console session
then asks the first, a middle and the last page of tags, `--requests` times each, and the same first page of
the small repository. Target: a page of the 10,000-tag repository within 1.5x the 100-tag one's (a page reads
its 51 names from the tag index and only the tags and manifests it shows).

Nothing is asserted: the numbers go to stdout and reports/bench-console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bench.targets import ROOT, distributed_env

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def _registry(kind: str, data_dir: Path) -> AsyncIterator[tuple[str, str, Any]]:
    """(base URL, admin key, container) of a running distribution service with auth on."""
    from services.core.auth.apikeys import generate_key
    from services.core.bootstrap import container
    from services.core.settings import AuthSettings, load_settings
    from services.distribution import service as distribution

    namespace = f"bench-console-{uuid.uuid4().hex[:8]}"
    saved = dict(os.environ)
    if kind == "distributed":
        os.environ.update({k: v for k, v in distributed_env(namespace).items() if k.startswith("HANZO_REGISTRY_")})
    try:
        key = generate_key().key
        settings = load_settings(data_dir=data_dir)
        settings = settings.model_copy(update={"auth": AuthSettings(mode="token", bootstrap_admin_key=SecretStr(key))})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    async with container(settings) as c:
        parts = await distribution.build(c)
        assert parts.http is not None
        runner = web.AppRunner(parts.http)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"http://127.0.0.1:{port}", key, c
        finally:
            await runner.cleanup()
            if kind == "distributed":
                await _drop(c)


async def _drop(c: Any) -> None:
    """Leave nothing behind on the shared servers: the bench's database and blobs."""
    import pymongo

    async for info in c.blobs.iter_all():
        await c.blobs.delete(info.digest)
    database = c.settings.metadata.database
    uri = c.settings.metadata.uri
    client: Any = pymongo.MongoClient(uri.get_secret_value() if hasattr(uri, "get_secret_value") else uri)
    try:
        await asyncio.to_thread(client.drop_database, database)
    finally:
        client.close()


async def _push(http: aiohttp.ClientSession, base: str, auth: dict[str, str], repo: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = os.urandom(4096)
    for blob in (config, layer):
        async with http.post(f"{base}/v2/{repo}/blobs/uploads/", headers=auth) as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        url = location if location.startswith("http") else base + location
        async with http.put(f"{url}?digest={_digest(blob)}", data=blob, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer), "size": len(layer)}
            ],
        }
    ).encode()
    async with http.put(
        f"{base}/v2/{repo}/manifests/latest", data=manifest, headers={**auth, "Content-Type": OCI_MANIFEST}
    ) as resp:
        assert resp.status == 201, await resp.text()
    return _digest(manifest)


async def _seed_tags(c: Any, repo: str, digest: str, count: int) -> float:
    from services.core.events.outbox import Insert
    from services.core.oci.digest import Digest

    start = time.perf_counter()
    target = Digest.parse(digest)
    ops = [c.meta.set_tag_op(repo, f"t{i:05d}", target, current=None) for i in range(count)]
    for first in range(0, count, 64):
        chunk = ops[first : first + 64]
        assert all(isinstance(op, Insert) for op in chunk)
        await asyncio.gather(*(c.docs.insert(op.collection, op.doc) for op in chunk))
    return time.perf_counter() - start


async def _login(http: aiohttp.ClientSession, base: str, key: str) -> None:
    async with http.get(f"{base}/console/login") as resp:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert csrf is not None
    form = {"csrf": csrf.group(1), "username": "admin", "api_key": key}
    async with http.post(f"{base}/console/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()


async def _times(http: aiohttp.ClientSession, urls: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    """p50/p95 of each page, asked in interleaved rounds so that machine noise hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(requests):
        for name, url in urls.items():
            start = time.perf_counter()
            async with http.get(url, allow_redirects=False) as resp:
                body = await resp.read()
                assert resp.status == 200 and body.count(b'<th scope="row">') == 50, (resp.status, body[:300])
            samples[name].append((time.perf_counter() - start) * 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {
            "p50_ms": round(statistics.median(values), 2),
            "p95_ms": round(values[max(int(len(values) * 0.95) - 1, 0)], 2),
        }
    return out


async def measure(kind: str, *, tags: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with _registry(kind, Path(tmp)) as (base, key, c):
            auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()}
            jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                big = await _push(http, base, auth, "bench/many")
                small = await _push(http, base, auth, "bench/few")
                seeded = await _seed_tags(c, "bench/many", big, tags)
                await _seed_tags(c, "bench/few", small, 100)
                await _login(http, base, key)
                page = f"{base}/console/repositories/bench/"
                times = await _times(
                    http,
                    {
                        "small_first_page": page + "few",
                        "first_page": page + "many",
                        "middle_page": page + f"many?after=t{tags // 2:05d}",
                        "last_page": page + f"many?after=t{tags - 51:05d}",
                    },
                    requests,
                )
                out: dict[str, Any] = {"assembly": kind, "tags": tags, "seed_seconds": round(seeded, 1), **times}
                out["ratio_first_page"] = round(times["first_page"]["p50_ms"] / times["small_first_page"]["p50_ms"], 2)
                return out


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for kind in args.assemblies.split(","):
        result = await measure(kind, tags=args.tags, requests=args.requests)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--assemblies", default="embedded,distributed")
    args = parser.parse_args(argv)
    results = asyncio.run(amain(args))
    report = ROOT / "reports" / "bench-console.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
