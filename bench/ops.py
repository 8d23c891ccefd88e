"""OCI operations the benchmark times, over an aiohttp client session: blob push/pull, manifests, tags."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from bench.data import BlobSource

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


class BenchError(Exception):
    """A request the benchmark needed failed: the message names the request and the reply."""


class PaginationUnsupportedError(BenchError):
    """The registry ignores `n` on tags/list."""


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        auto_decompress=False,
        read_bufsize=1 << 20,
    )


async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
    if resp.status != status:
        body = (await resp.read())[:500]
        raise BenchError(f"{what} -> HTTP {resp.status} (expected {status}): {body!r}")


def _with_digest(location: str, digest: str) -> URL:
    return URL(f"{location}{'&' if '?' in location else '?'}digest={digest}", encoded=True)


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def start_upload(self, repo: str) -> str:
        what = f"POST /v2/{repo}/blobs/uploads/"
        async with self.http.post(self.url(f"/v2/{repo}/blobs/uploads/"), data=b"") as r:
            await _expect(r, 202, what)
            return urljoin(self.base, r.headers["Location"])

    async def push_monolithic(self, repo: str, blob: BlobSource) -> float:
        """POST + one streaming PUT; returns seconds."""
        t0 = time.perf_counter()
        location = await self.start_upload(repo)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        url = _with_digest(location, blob.digest)
        async with self.http.put(url, data=blob.stream(), headers=headers) as r:
            await _expect(r, 201, f"PUT {url.path_qs} ({blob.size} bytes, streamed)")
        return time.perf_counter() - t0

    async def push_chunked(self, repo: str, blob: BlobSource, chunk: int) -> tuple[float, float]:
        """POST, PATCH per `chunk` bytes with Content-Range, then PUT ?digest= without a body.

        Returns the total seconds and the seconds of the final PUT (the registry's commit)."""
        t0 = time.perf_counter()
        location = await self.start_upload(repo)
        for start in range(0, blob.size, chunk):
            end = min(start + chunk, blob.size)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{end - 1}",
                "Content-Length": str(end - start),
            }
            async with self.http.patch(location, data=blob.stream(start, end), headers=headers) as r:
                await _expect(r, 202, f"PATCH {URL(location).path} Content-Range {start}-{end - 1}")
                location = urljoin(self.base, r.headers["Location"])
        url = _with_digest(location, blob.digest)
        t1 = time.perf_counter()
        async with self.http.put(url, headers={"Content-Length": "0"}) as r:
            await _expect(r, 201, f"PUT {url.path_qs} (close chunked upload)")
        done = time.perf_counter()
        return done - t0, done - t1

    async def pull(self, repo: str, digest: str, size: int, *, verify: bool = True) -> float:
        """GET the blob and discard it, hashing it when `verify`; returns seconds.

        Timed pulls do not hash: at ~1 GB/s SHA-256 in this one client process was the limit for
        every target alike, hiding the registries' differences. Each blob is verified by an untimed
        pull first (bench_pull)."""
        t0 = time.perf_counter()
        h, n = hashlib.sha256(), 0
        what = f"GET /v2/{repo}/blobs/{digest}"
        async with self.http.get(self.url(f"/v2/{repo}/blobs/{digest}")) as r:
            await _expect(r, 200, what)
            async for data in r.content.iter_chunked(1 << 20):
                if verify:
                    h.update(data)
                n += len(data)
        elapsed = time.perf_counter() - t0
        if n != size:
            raise BenchError(f"{what}: got {n} bytes, expected {size}")
        if verify and f"sha256:{h.hexdigest()}" != digest:
            raise BenchError(f"{what}: got digest sha256:{h.hexdigest()}, expected {digest}")
        return elapsed

    async def push_small(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = await self.start_upload(repo)
        url = _with_digest(location, digest)
        async with self.http.put(url, data=data, headers={"Content-Type": "application/octet-stream"}) as r:
            await _expect(r, 201, f"PUT {url.path_qs}")
        return digest

    async def supports_single_post(self, repo: str) -> bool:
        """Whether POST ?digest= with the body completes a push in one request (201)."""
        data = b"single-post-probe " + str(time.time_ns()).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        url = URL(self.url(f"/v2/{repo}/blobs/uploads/?digest={digest}"), encoded=True)
        async with self.http.post(url, data=data, headers={"Content-Type": "application/octet-stream"}) as r:
            await r.read()
            if r.status == 201:
                return True
            if r.status == 202:
                return False
            raise BenchError(f"POST {url.path_qs} (probe) -> HTTP {r.status}")

    async def put_manifest(self, repo: str, reference: str, body: bytes) -> str:
        what = f"PUT /v2/{repo}/manifests/{reference}"
        async with self.http.put(
            self.url(f"/v2/{repo}/manifests/{reference}"), data=body, headers={"Content-Type": OCI_MANIFEST}
        ) as r:
            await _expect(r, 201, what)
            return r.headers.get("Docker-Content-Digest", "")

    async def image(self, repo: str, tag: str) -> bytes:
        """Push a small OCI image (config + one layer) tagged `tag`; return its manifest bytes."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        layer = b"bench layer " + repo.encode()
        cd, ld = await asyncio.gather(self.push_small(repo, config), self.push_small(repo, layer))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": len(layer)}],
                "annotations": {"org.opencontainers.image.title": "hanzo-registry bench"},
            }
        ).encode()
        await self.put_manifest(repo, tag, manifest)
        return manifest

    async def list_tags(self, repo: str, n: int | None = None) -> tuple[list[str], int]:
        """Follow Link headers to the end; return the tags and the number of requests."""
        path: str | None = f"/v2/{repo}/tags/list" + (f"?n={n}" if n else "")
        tags: list[str] = []
        requests = 0
        while path is not None:
            async with self.http.get(URL(self.url(path), encoded=True)) as r:
                await _expect(r, 200, f"GET {path}")
                doc = await r.json(content_type=None)
                link = r.headers.get("Link")
            requests += 1
            page = doc.get("tags") or []
            if n is not None and len(page) > n:
                raise PaginationUnsupportedError(f"GET {path} returned {len(page)} tags for n={n}: no pagination")
            tags.extend(page)
            path = None
            if link:
                m = re.match(r"<([^>]+)>", link)
                if m:
                    path = m.group(1) if m.group(1).startswith("/") else URL(m.group(1)).path_qs
            if requests > 100_000:
                raise BenchError(f"GET /v2/{repo}/tags/list: pagination does not end")
        return tags, requests


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        s = sorted(self.seconds)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
