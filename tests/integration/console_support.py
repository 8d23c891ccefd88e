"""Helpers of the console tests (no tests here): seeding images, tags and scan reports, and logging in to
the console over plain HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from services.core.content.registry import Registry
from services.core.events.outbox import Insert
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.scan.store import REPORTS, ReportStore, report_id
from services.core.signing.results import SignatureResult, SignatureResults
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_INDEX, OCI_MANIFEST, digest_of
from tests.integration.test_models import _client as model_client
from tests.integration.test_models import _push_dir as push_model_dir
from tests.unit.models import makers
from tests.unit.models.makers import Made

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


async def push_blob(client: TestClient[web.Request, web.Application], repo: str, data: bytes,
                    headers: dict[str, str]) -> None:
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    assert resp.status == 202, await resp.text()
    resp = await client.put(
        f"{resp.headers['Location']}?digest={digest_of(data)}",
        data=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()


async def push_image(
    client: TestClient[web.Request, web.Application],
    headers: dict[str, str],
    repo: str,
    tag: str,
    *,
    arch: str = "amd64",
    layers: tuple[bytes, ...] = (b"layer one " * 300, b"layer two"),
) -> tuple[str, int]:
    """An image with a config and `layers`; (its digest, its manifest's size)."""
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}, "tag": tag}).encode()
    for blob in (config, *layers):
        await push_blob(client, repo, blob, headers)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": digest_of(b), "size": len(b)} for b in layers],
        }
    ).encode()
    resp = await client.put(
        f"/v2/{repo}/manifests/{tag}", data=manifest, headers={**headers, "Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    return digest_of(manifest), len(manifest)


async def push_index(client: TestClient[web.Request, web.Application], headers: dict[str, str], repo: str,
                     tag: str) -> str:
    """A two-platform index (linux/amd64, linux/arm64) of fresh images."""
    entries = []
    for arch in ("amd64", "arm64"):
        digest, size = await push_image(
            client, headers, repo, f"{tag}-{arch}", arch=arch, layers=(f"{arch} layer".encode(),)
        )
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=index, headers={**headers, "Content-Type": OCI_INDEX})
    assert resp.status == 201, await resp.text()
    return digest_of(index)


async def seed_tags(registry: Registry, repo: str, digest: str, count: int, *, concurrency: int = 64) -> None:
    """`count` more tags (t00000, t00001 ...) on an existing manifest: the tag documents a push writes
    (MetadataStore.set_tag_op), inserted concurrently and without events. Pushing them (through the outbox,
    one operation after another) takes minutes on FerretDB; what the console reads is the same."""
    target = Digest.parse(digest)
    await registry.resolve(RepositoryName(repo), target)  # the manifest is there
    ops = [registry.meta.set_tag_op(repo, f"t{i:05d}", target, current=None) for i in range(count)]
    for start in range(0, count, concurrency):
        chunk = [op for op in ops[start : start + concurrency] if isinstance(op, Insert)]
        assert len(chunk) == len(ops[start : start + concurrency])
        await asyncio.gather(*(registry.meta.docs.insert(op.collection, op.doc) for op in chunk))


FINDINGS = [
    {
        "id": "CVE-2024-0001",
        "aliases": ["GHSA-aaaa-bbbb-cccc"],
        "package": "openssl",
        "version": "3.0.11-1",
        "ecosystem": "Debian:12",
        "purl": "pkg:deb/debian/openssl@3.0.11-1",
        "fixed_version": "3.0.13-1",
        "severity": "critical",
        "cvss_score": 9.8,
        "layer": "",
        "title": "Heap overflow in the TLS parser",
    },
    {
        "id": "CVE-2024-0002",
        "aliases": [],
        "package": "zlib",
        "version": "1.2.13",
        "ecosystem": "Debian:12",
        "purl": "pkg:deb/debian/zlib@1.2.13",
        "fixed_version": None,
        "severity": "medium",
        "cvss_score": 5.3,
        "layer": "",
        "title": "",
    },
    {
        "id": "CVE-2024-0003",
        "aliases": [],
        "package": "requests",
        "version": "2.28.1",
        "ecosystem": "PyPI",
        "purl": "pkg:pypi/requests@2.28.1",
        "fixed_version": "2.32.0",
        "severity": "high",
        "cvss_score": 7.5,
        "layer": "",
        "title": "",
    },
]


async def seed_report(a: Assembly, repo: str, digest: str, findings: list[dict[str, Any]] | None = None) -> None:
    """A complete scan report as the scanner stores it (services/scanner/engine.py), without running it."""
    await ReportStore(a.c.docs).setup()
    now = time.time()
    await a.c.docs.put(
        REPORTS,
        {
            "_id": report_id(repo, digest),
            "repository": repo,
            "digest": digest,
            "status": "complete",
            "scanned_at": now,
            "updated_at": now,
            "db_updated_at": now,
            "error": "",
            "findings": FINDINGS if findings is None else findings,
            "images": [],
        },
    )


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


async def console_login(client: TestClient[web.Request, web.Application], user: str, key: str) -> str:
    """Log in through the form; the logged-in page's CSRF value (for the logout form)."""
    resp = await client.get("/console/login")
    assert resp.status == 200
    resp = await client.post(
        "/console/login",
        allow_redirects=False,
        data={"csrf": csrf_of(await resp.text()), "username": user, "api_key": key, "next": "/console/repositories"},
    )
    assert resp.status == 303, await resp.text()
    resp = await client.get("/console/repositories")
    assert resp.status == 200
    return csrf_of(await resp.text())


async def push_model(a: Assembly, directory: Path) -> Made:
    """A small safetensors model (LlamaForCausalLM, config and tokenizer) as models/llama:v1, pushed as the
    CLI pushes it; what went in (its parameter count)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = makers.safetensors_model(directory / "model.safetensors", metadata={"format": "pt"})
    makers.hf_config(directory / "config.json")
    makers.tokenizer_json(directory / "tokenizer.json", vocab=64)
    async with model_client(a) as client:
        await push_model_dir(client, a, directory, "models/llama:v1")
    return made


async def seed_signatures(a: Assembly, repo: str, digest: str) -> None:
    """Two signatures as the signer records them: one verified by a key, one that failed."""
    results = SignatureResults(a.c.docs)
    await results.setup()
    for n, (state, reason, key_id) in enumerate(
        [
            ("verified", "verified by a key of the policy", "sha256:" + "1" * 64),
            ("failed", "the signature does not match the image", ""),
        ]
    ):
        signature = "sha256:" + f"{n + 7}" * 64
        await results.replace(
            repo,
            signature,
            [
                SignatureResult(
                    repository=repo,
                    subject=digest,
                    signature=signature,
                    index=0,
                    format="cosign",
                    state=state,
                    reason=reason,
                    key_id=key_id,
                    signed_at=time.time(),
                    checked=time.time(),
                    namespace=repo.split("/")[0],
                )
            ],
        )
