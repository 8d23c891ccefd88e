"""A registry with its signer running (distribution + signer consumer in one process, like `serve`), on either
assembly, with a Notary trust store, Sigstore roots, a transparency-log key and a master key configured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.bootstrap import Container, container
from services.core.policy.document import parse_data
from services.core.policy.service import PolicyService
from services.core.policy.store import POLICIES, PolicyStore, PolicyTarget
from services.core.runtime import EventConsumer
from services.core.settings import AuthSettings, Settings
from services.core.signing.artifacts import COSIGN_SIMPLESIGNING, signature_tag
from services.core.signing.keys import KEYS
from services.core.signing.results import SIGNATURES
from services.core.signing.sign import signature_manifest
from services.distribution import service as distribution
from services.distribution.keys import GATES
from services.signer import service as signer
from tests.integration.conftest import _drop_everything, distributed_settings, embedded_settings
from tests.integration.oci import OCI_MANIFEST, digest_of, push_blob
from tests.unit.signer import material as mk

MASTER_KEY = "test-master-key-0123456789abcdef"


@dataclass
class SignerEnv:
    name: str
    client: TestClient[web.Request, web.Application]
    c: Container
    ca: mk.Ca
    """The Notary trust store's root."""
    fulcio: mk.Ca
    """The root keyless certificates chain to (`signer.sigstore_roots`)."""
    log: mk.Log
    """The transparency log whose key is `signer.rekor_public_keys`."""

    async def set_policy(self, namespace: str, document: dict[str, object], repository: str | None = None) -> None:
        """Through the PolicyService (so PolicyChanged goes out and the signer re-verifies)."""
        service = PolicyService(store=PolicyStore(self.c.docs), outbox=self.c.outbox, topics=self.c.settings.topics,
                                default=self.c.settings.policy.default)
        await service.setup()
        await service.put(PolicyTarget(namespace, repository), parse_data(document), actor="test", source="test")
        self.client.app[GATES].invalidate(namespace=namespace)


async def push_cosign_layer(client: TestClient[web.Request, web.Application], repo: str, image: str,
                            payload: bytes, notes: dict[str, str]) -> str:
    """Push a cosign simple-signing layer (`payload`, annotated `notes`) under cosign's tag for `image`; the
    signature manifest's digest."""
    await push_blob(client, repo, payload)
    layer = {"mediaType": COSIGN_SIMPLESIGNING, "size": len(payload), "digest": digest_of(payload),
             "annotations": notes}
    config, manifest = signature_manifest([layer])
    await push_blob(client, repo, config)
    resp = await client.put(f"/v2/{repo}/manifests/{signature_tag(image)}", data=manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return digest_of(manifest)


def _notary_files(root: Path, ca: mk.Ca) -> tuple[Path, Path]:
    store = root / "notation" / "x509" / "ca" / "test"
    store.mkdir(parents=True)
    (store / "root.pem").write_bytes(ca.pem())
    policy = root / "notation" / "trustpolicy.json"
    policy.write_text(json.dumps(mk.trust_policy()))
    return root / "notation", policy


@contextlib.asynccontextmanager
async def signer_env(kind: str, tmp_path: Path, *, auth: bool = False, master_key: bool = True
                     ) -> AsyncIterator[SignerEnv]:
    run_id = uuid.uuid4().hex[:10]
    settings: Settings = embedded_settings(tmp_path) if kind == "embedded" else distributed_settings(tmp_path, run_id)
    if kind != "embedded":
        settings = settings.model_copy(update={"topics": settings.topics.model_copy(
            update={"signatures": f"signatures-{run_id}"})})
    ca, fulcio, log = mk.make_ca("Notary Test Root"), mk.make_ca("Fulcio Test Root"), mk.make_log()
    store, policy = _notary_files(tmp_path, ca)
    (tmp_path / "fulcio.pem").write_bytes(fulcio.pem())
    (tmp_path / "rekor.pub").write_text(mk.pem(log.key))
    signer_settings = settings.signer.model_copy(update={
        "notation_trust_store": store, "notation_trust_policy": policy,
        "sigstore_roots": tmp_path / "fulcio.pem", "rekor_public_keys": tmp_path / "rekor.pub",
        "master_key": SecretStr(MASTER_KEY) if master_key else None})
    update: dict[str, object] = {"signer": signer_settings,
                                 "registry": settings.registry.model_copy(update={"pull_gate_cache_seconds": 30.0})}
    if auth:
        update["auth"] = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(generate_key().key))
    settings = settings.model_copy(update=update)
    async with container(settings) as c:
        parts = [await distribution.build(c), await signer.build(c)]
        http = parts[0].http
        assert http is not None
        consumers = [EventConsumer(events=c.events, docs=c.docs, metrics=c.metrics, service=p.name, topic=topic,
                                   group=f"hanzo-registry.{p.name}", handler=handler, settings=settings.consumer)
                     for p in parts for topic, handler in p.consumes]
        for consumer in consumers:
            await consumer.setup()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loop(stop)) for p in parts for loop in p.loops]
        tasks += [asyncio.create_task(consumer.run(stop)) for consumer in consumers]
        client = TestClient(TestServer(http))
        await client.start_server()
        try:
            yield SignerEnv(kind, client, c, ca, fulcio, log)
        finally:
            await client.close()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if kind == "distributed":
                for collection in (SIGNATURES, KEYS, POLICIES):
                    await c.docs.drop_collection(collection)
                if auth:
                    from services.core.auth.store import AuthStore

                    await AuthStore(c.docs).drop_all()
                await _drop_everything(c)
