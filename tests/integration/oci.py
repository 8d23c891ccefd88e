"""Small helpers that speak the OCI API through an aiohttp test client."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(client: TestClient[web.Request, web.Application], repo: str, data: bytes) -> str:
    digest = digest_of(data)
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    location = resp.headers["Location"]
    resp = await client.put(f"{location}?digest={digest}", data=data,
                            headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201, await resp.text()
    return digest


def image_manifest(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)} for layer in layers],
        **extra,
    }
    return json.dumps(doc).encode()


async def push_image(client: TestClient[web.Request, web.Application], repo: str, tag: str | None = None, *,
                     layers: int = 2, **extra: Any) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    blobs = [os.urandom(1024 + i) for i in range(layers)]
    for blob in [config, *blobs]:
        await push_blob(client, repo, blob)
    manifest = image_manifest(config, blobs, **extra)
    reference = tag or digest_of(manifest)
    resp = await client.put(f"/v2/{repo}/manifests/{reference}", data=manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return digest_of(manifest), manifest


async def error_code(resp: Any) -> str:
    body = await resp.json()
    return str(body["errors"][0]["code"])
