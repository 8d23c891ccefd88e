"""Helpers of the GC tests: a collector over an assembly's ports, and a retrying OCI pusher/puller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from services.core.bootstrap import Container
from services.core.runtime import EventConsumer
from services.core.storage.gcmarks import GC_MARKS
from services.gc import service as gc_service
from services.gc.candidates import CANDIDATES
from services.gc.runs import GcRuns
from services.gc.sweep import Collector
from tests.integration.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, digest_of


def collector(c: Container, *, settle: float = 0.05, grace: float = 3600.0,
              clock: Callable[[], float] = time.time) -> Collector:
    return Collector(
        docs=c.docs, blobs=c.blobs, outbox=c.outbox, topics=c.settings.topics,
        default_policy=c.settings.policy.default, blob_grace_seconds=grace,
        upload_expiry_seconds=c.settings.registry.upload_expiry_seconds, settle_seconds=settle,
        forget_manifest=getattr(c.meta, "forget_manifest", None), clock=clock,
    )


async def drop_gc_collections(c: Container) -> None:
    for name in (GC_MARKS, CANDIDATES, "gc_runs", "gc_run_items", "gc_storage"):
        await c.docs.drop_collection(name)


async def unsettled_marks(c: Container) -> list[dict[str, Any]]:
    """Marks a run left that are neither seen nor deleted: a blob mark with verdicts counts as deleted once its
    tombstone is there (services/core/storage/gcmarks.py)."""
    marks = {str(m["_id"]): m for m in await c.docs.find(GC_MARKS)}

    def settled(key: str, mark: dict[str, Any]) -> bool:
        if mark.get("state") in ("deleted", "seen"):
            return True
        if mark.get("verdict"):
            return f"t:{mark.get('run')}:{key}" in marks
        return key.startswith("x:") and mark.get("state") == "deleting" and f"t:{key[2:]}" in marks

    return [m for k, m in marks.items() if not settled(k, m)]


class PushFailed(Exception):
    pass


@dataclass
class Image:
    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    children: list[Image] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def make_image(*, shared: list[bytes] = (), layers: int = 2) -> Image:  # type: ignore[assignment]
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    own = [os.urandom(512 + i) for i in range(layers)]
    all_layers = [*shared, *own]
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(x), "size": len(x)} for x in all_layers],
    }
    return Image(json.dumps(doc).encode(), OCI_MANIFEST, {digest_of(b): b for b in [config, *all_layers]})


def make_index(children: list[Image]) -> Image:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": ch.digest, "size": len(ch.manifest),
         "platform": {"architecture": f"arch{i}", "os": "linux"}} for i, ch in enumerate(children)]}
    return Image(json.dumps(doc).encode(), OCI_INDEX, children=children)


async def push_blob(client: TestClient[web.Request, web.Application], repo: str, data: bytes, *,
                    mount_from: str | None = None) -> None:
    digest = digest_of(data)
    head = await client.head(f"/v2/{repo}/blobs/{digest}")
    if head.status == 200:
        return  # as real clients do: a blob the registry says it has is not sent again
    query = f"?mount={digest}&from={mount_from}" if mount_from else ""
    resp = await client.post(f"/v2/{repo}/blobs/uploads/{query}")
    if resp.status == 201:
        return
    if resp.status != 202:
        raise PushFailed(f"POST upload {resp.status}: {await resp.text()}")
    location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    resp = await client.put(f"{location}{sep}digest={digest}", data=data,
                            headers={"Content-Type": "application/octet-stream"})
    if resp.status != 201:
        raise PushFailed(f"PUT blob {resp.status}: {await resp.text()}")


async def push(client: TestClient[web.Request, web.Application], repo: str, image: Image,
               reference: str | None = None, *, mount_from: str | None = None) -> None:
    for child in image.children:
        await push(client, repo, child, mount_from=mount_from)
    for data in image.blobs.values():
        await push_blob(client, repo, data, mount_from=mount_from)
    resp = await client.put(f"/v2/{repo}/manifests/{reference or image.digest}", data=image.manifest,
                            headers={"Content-Type": image.media_type})
    if resp.status != 201:
        raise PushFailed(f"PUT manifest {resp.status}: {await resp.text()}")


async def push_retrying(client: TestClient[web.Request, web.Application], repo: str, image: Image,
                        reference: str | None = None, *, mount_from: str | None = None,
                        attempts: int = 20) -> None:
    """What a client does when a push fails: push it all again."""
    for attempt in range(attempts):
        try:
            await push(client, repo, image, reference, mount_from=mount_from)
            return
        except PushFailed:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))


async def pull_exact(client: TestClient[web.Request, web.Application], repo: str, reference: str, image: Image) -> None:
    """The manifest by `reference` has `image`'s exact bytes, and every blob and child pulls byte-exact."""
    resp = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": image.media_type})
    assert resp.status == 200, f"{repo}:{reference}: {resp.status} {await resp.text()}"
    assert await resp.read() == image.manifest, f"{repo}:{reference} has other bytes"
    for child in image.children:
        await pull_exact(client, repo, child.digest, child)
    for digest, data in image.blobs.items():
        resp = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert resp.status == 200, f"{repo} lost blob {digest}: {resp.status}"
        assert await resp.read() == data, f"{repo} blob {digest} has other bytes"


@contextlib.asynccontextmanager
async def gc_consumers(c: Container) -> AsyncIterator[GcRuns]:
    """The gc service's consumers (candidates from tag moves and deletes) running on the assembly's event
    log (Kafka on the distributed one), in a consumer group of the test's own; yields its runs (no loops)."""
    parts = await gc_service.build(c)
    runs = gc_service.build_runs(c)
    await runs.setup()
    group = f"hanzo-registry.gc-test-{uuid.uuid4().hex[:8]}"
    consumers = [EventConsumer(events=c.events, docs=c.docs, metrics=c.metrics, service=parts.name, topic=topic,
                               group=group, handler=handler, settings=c.settings.consumer)
                 for topic, handler in parts.consumes]
    for consumer in consumers:
        await consumer.setup()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)) for consumer in consumers]
    try:
        yield runs
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runs.wait()


async def wait_for_candidates(c: Container, keys: set[str], *, timeout: float = 60.0) -> None:
    """Until every one of `keys` is a recorded candidate (the events went through the relay and the log)."""
    async with asyncio.timeout(timeout):
        while True:
            found = await c.docs.get_many(CANDIDATES, sorted(keys))
            if set(found) == keys:
                return
            await asyncio.sleep(0.1)
