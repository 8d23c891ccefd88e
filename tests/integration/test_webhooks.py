"""Webhooks on both assemblies, with the distribution, scanner, signer and webhooks services in one process
(as `serve` runs them): signed deliveries of the subscribed events, tag patterns (a push by digest alone is
not delivered), retries of failing receivers, the delivery log and redelivery, who may manage which webhook,
the SSRF guard at creation, deliveries of events that happened while the webhooks service was down, and
`image.deployable` firing once, when the scan is clean and the signature verified."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.bootstrap import Container, container
from services.core.runtime import EventConsumer, ServiceParts
from services.core.settings import AuthSettings, Settings
from services.distribution import service as distribution
from services.scanner import service as scanner
from services.signer import service as signer
from services.webhooks import service as webhooks
from tests.integration.conftest import ASSEMBLIES, _drop_everything, distributed_settings, embedded_settings
from tests.integration.images import build_image
from tests.integration.oci import OCI_MANIFEST, digest_of, push_blob, push_image
from tests.unit.signer import material as mk

R = "/v1/registry"
SECRET = "s3cret-of-the-receiver"
K1 = ec.generate_private_key(ec.SECP256R1())


@dataclass
class Receiver:
    """An HTTP endpoint that records deliveries; `fail` answers 500 to that many requests first."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    fail: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500, text="try later")
        self.received.append({"headers": dict(request.headers), "raw": body, "json": json.loads(body)})
        self.arrived.set()
        return web.Response(status=204)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["headers"]["X-Hanzo-Event"] == event]

    async def wait_for(self, event: str, count: int = 1, *, within: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while len(self.of(event)) < count:
            assert time.monotonic() < deadline, f"{event} x{count} not delivered: {[r['json'] for r in self.received]}"
            await asyncio.sleep(0.05)
        return self.of(event)


@dataclass
class Env:
    name: str
    client: TestClient[web.Request, web.Application]
    c: Container
    receiver: Receiver
    admin: dict[str, str]
    start_webhooks: Any = None
    stop_webhooks: Any = None

    async def api(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                  status: int | None = None) -> Any:
        resp = await self.client.request(method, R + path, json=body, headers=headers or self.admin)
        text = await resp.text()
        if status is not None:
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
        return json.loads(text) if text else None


async def _consumers(c: Container, parts: list[ServiceParts], settings: Settings) -> list[EventConsumer]:
    consumers = [EventConsumer(events=c.events, docs=c.docs, metrics=c.metrics, service=p.name, topic=topic,
                               group=f"hanzo-registry.{p.name}", handler=handler, settings=settings.consumer)
                 for p in parts for topic, handler in p.consumes]
    for consumer in consumers:
        await consumer.setup()
    return consumers


@contextlib.asynccontextmanager
async def webhook_env(kind: str, tmp_path: Path, *, allow_private: bool = True) -> AsyncIterator[Env]:
    run_id = uuid.uuid4().hex[:10]
    settings = embedded_settings(tmp_path) if kind == "embedded" else distributed_settings(tmp_path, run_id)
    if kind != "embedded":
        settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={
            name: f"{name}-{run_id}" for name in ("scans", "signatures", "replication", "gc")})})
    admin_key = generate_key().key
    settings = settings.model_copy(update={
        "auth": AuthSettings(mode="token", bootstrap_admin_key=SecretStr(admin_key)),
        "signer": settings.signer.model_copy(update={"master_key": SecretStr("webhook-test-master-key-0123")}),
        "webhooks": settings.webhooks.model_copy(update={
            "allow_private_targets": allow_private, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5,
            "poll_interval_seconds": 0.1, "timeout_seconds": 5.0}),
    })
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    receiver_server = TestServer(app, host="127.0.0.1")
    await receiver_server.start_server()
    receiver.url = str(receiver_server.make_url("/hook"))
    async with container(settings) as c:
        parts = [await distribution.build(c), await scanner.build(c), await signer.build(c)]
        http = parts[0].http
        assert http is not None
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loop(stop)) for p in parts for loop in p.loops]
        tasks += [asyncio.create_task(cons.run(stop)) for cons in await _consumers(c, parts, settings)]
        hook_state: dict[str, Any] = {}

        async def start_webhooks() -> None:
            part = await webhooks.build(c)
            hook_stop = asyncio.Event()
            hook_tasks = [asyncio.create_task(loop(hook_stop)) for loop in part.loops]
            hook_tasks += [asyncio.create_task(cons.run(hook_stop)) for cons in await _consumers(c, [part], settings)]
            hook_state.update(stop=hook_stop, tasks=hook_tasks)

        async def stop_webhooks() -> None:
            hook_state["stop"].set()
            await asyncio.gather(*hook_state["tasks"], return_exceptions=True)

        await start_webhooks()
        client = TestClient(TestServer(http), headers={"Authorization": f"Bearer {admin_key}"})
        await client.start_server()
        try:
            yield Env(kind, client, c, receiver, {"Authorization": f"Bearer {admin_key}"}, start_webhooks,
                      stop_webhooks)
        finally:
            await client.close()
            with contextlib.suppress(Exception):
                await stop_webhooks()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await receiver_server.close()
            if kind == "distributed":
                from services.core.auth.store import AuthStore
                from services.core.webhooks.store import DELIVERIES, FIRED, WEBHOOKS

                for coll in (WEBHOOKS, DELIVERIES, FIRED, "scan_reports", "scan_requests", "signer_signatures",
                             "policies"):
                    await c.docs.drop_collection(coll)
                await AuthStore(c.docs).drop_all()
                await _drop_everything(c)


@pytest.fixture(params=ASSEMBLIES)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async with webhook_env(request.param, tmp_path) as e:
        yield e


def _signed(delivery: dict[str, Any], secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), delivery["raw"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(delivery["headers"]["X-Hanzo-Signature-256"], expected)


async def test_signed_deliveries_tag_pattern_log_and_redelivery(env: Env) -> None:
    created = await env.api("POST", "/webhooks", {
        "name": "ci", "url": env.receiver.url, "secret": SECRET, "events": ["manifest.pushed", "tag.updated"],
        "repositories": "hooks/**", "tag_pattern": "v*"}, status=201)
    assert "secret" not in created and created["secret_sealed"] is True
    assert created["namespace"] == "hooks" and created["tag_pattern"] == "v*"
    hook = created["id"]
    assert (await env.api("GET", f"/webhooks/{hook}", status=200))["url"] == env.receiver.url
    assert [h["id"] for h in (await env.api("GET", "/webhooks", status=200))["webhooks"]] == [hook]

    # A push by digest alone is about no tag: not delivered. `latest` does not match v*.
    await push_image(env.client, "hooks/app")
    await push_image(env.client, "hooks/app", "latest")
    await push_image(env.client, "other/app", "v1")  # outside hooks/**
    digest, _ = await push_image(env.client, "hooks/app", "v1")
    [pushed] = await env.receiver.wait_for("manifest.pushed")
    [tagged] = await env.receiver.wait_for("tag.updated")
    await asyncio.sleep(0.5)
    assert len(env.receiver.received) == 2, [r["json"] for r in env.receiver.received]
    for delivery in (pushed, tagged):
        assert _signed(delivery) and not _signed(delivery, "another secret")
        assert delivery["headers"]["Content-Type"] == "application/json"
        assert delivery["json"]["delivery"] == delivery["headers"]["X-Hanzo-Delivery"]
        assert delivery["json"]["repository"] == "hooks/app" and delivery["json"]["digest"] == digest
    assert pushed["json"]["data"]["tags"] == ["v1"] and pushed["json"]["data"]["media_type"] == OCI_MANIFEST
    assert tagged["json"]["data"]["tag"] == "v1"
    assert pushed["headers"]["X-Hanzo-Delivery"] != tagged["headers"]["X-Hanzo-Delivery"]

    log = (await env.api("GET", f"/webhooks/{hook}/deliveries", status=200))["deliveries"]
    assert {d["event"] for d in log} == {"manifest.pushed", "tag.updated"}
    assert all(d["status"] == "succeeded" and d["response_code"] == 204 and d["attempts"] == 1 for d in log)
    again = await env.api("POST", f"/webhooks/{hook}/deliveries/{log[0]['id']}/redeliver", status=202)
    assert again["redelivery_of"] == log[0]["id"] and again["id"] != log[0]["id"]
    await env.receiver.wait_for(log[0]["event"], 2)
    resent = env.receiver.of(log[0]["event"])[-1]
    assert resent["headers"]["X-Hanzo-Delivery"] == again["id"] and _signed(resent)

    # PUT keeps the secret unless given; DELETE stops deliveries.
    body = {"name": "ci", "url": env.receiver.url, "events": ["tag.deleted"], "repositories": "hooks/**"}
    assert (await env.api("PUT", f"/webhooks/{hook}", body, status=200))["events"] == ["tag.deleted"]
    assert (await env.client.delete("/v2/hooks/app/manifests/latest")).status == 202
    [deleted] = await env.receiver.wait_for("tag.deleted")
    assert _signed(deleted) and deleted["json"]["data"]["tag"] == "latest"
    await env.api("DELETE", f"/webhooks/{hook}", status=204)
    await env.api("GET", f"/webhooks/{hook}", status=404)


async def test_failing_receiver_is_retried_until_it_answers(env: Env) -> None:
    env.receiver.fail = 2
    hook = (await env.api("POST", "/webhooks", {
        "name": "flaky", "url": env.receiver.url, "secret": SECRET, "events": ["tag.updated"],
        "repositories": "flaky/**"}, status=201))["id"]
    await push_image(env.client, "flaky/app", "v1")
    [delivery] = await env.receiver.wait_for("tag.updated")
    assert _signed(delivery)
    [entry] = (await env.api("GET", f"/webhooks/{hook}/deliveries", status=200))["deliveries"]
    assert entry["status"] == "succeeded" and entry["attempts"] == 3 and entry["response_code"] == 204


async def test_events_while_the_service_is_down_are_delivered(env: Env) -> None:
    await env.api("POST", "/webhooks", {"name": "down", "url": env.receiver.url, "secret": SECRET,
                                        "events": ["tag.updated"], "repositories": "down/*"}, status=201)
    await env.stop_webhooks()
    await push_image(env.client, "down/app", "v1")
    await asyncio.sleep(0.5)
    assert env.receiver.received == []
    await env.start_webhooks()
    [delivery] = await env.receiver.wait_for("tag.updated")
    assert delivery["json"]["data"]["tag"] == "v1"


async def test_who_may_manage_which_webhook(env: Env) -> None:
    await env.api("POST", "/users", {"name": "nina"}, status=201)
    key = (await env.api("POST", "/users/nina/keys", {"name": "k"}, status=201))["key"]
    await env.api("POST", "/team/permissions", {"user": "nina", "role": "admin"}, status=201)
    nina = {"Authorization": f"Bearer {key}"}
    mine = {"name": "n", "url": env.receiver.url, "secret": SECRET, "events": ["tag.updated"],
            "repositories": "team/**"}
    hook = (await env.api("POST", "/webhooks", mine, headers=nina, status=201))["id"]
    await env.api("POST", "/webhooks", {**mine, "repositories": "**"}, headers=nina, status=403)
    await env.api("POST", "/webhooks", {**mine, "repositories": "*/app"}, headers=nina, status=403)
    await env.api("POST", "/webhooks", {**mine, "repositories": "other/**"}, headers=nina, status=403)
    wide = (await env.api("POST", "/webhooks", {**mine, "repositories": "**"}, status=201))["id"]
    assert [h["id"] for h in (await env.api("GET", "/webhooks", headers=nina, status=200))["webhooks"]] == [hook]
    await env.api("GET", f"/webhooks/{wide}", headers=nina, status=404)
    await env.api("DELETE", f"/webhooks/{wide}", headers=nina, status=404)
    # Link-local and metadata addresses are refused for everyone, bad input names the field.
    for url in ("http://169.254.169.254/latest", "http://[fe80::1]/x", "ftp://example.com/x"):
        resp = await env.client.post(f"{R}/webhooks", json={**mine, "url": url}, headers=nina)
        assert resp.status == 400 and "url" in await resp.text()
    resp = await env.client.post(f"{R}/webhooks", json={**mine, "events": ["push"]})
    assert resp.status == 400 and "events" in await resp.text()


async def test_untrusted_private_targets_refused_without_the_setting(tmp_path: Path) -> None:
    async with webhook_env("embedded", tmp_path, allow_private=False) as env:
        await env.api("POST", "/users", {"name": "nina"}, status=201)
        key = (await env.api("POST", "/users/nina/keys", {"name": "k"}, status=201))["key"]
        await env.api("POST", "/team/permissions", {"user": "nina", "role": "admin"}, status=201)
        body = {"name": "n", "url": env.receiver.url, "secret": SECRET, "events": ["tag.updated"],
                "repositories": "team/**"}
        resp = await env.client.post(f"{R}/webhooks", json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 400 and "loopback" in await resp.text()
        # A registry admin's registry-wide webhook is trusted: loopback is fine, link-local is not.
        await env.api("POST", "/webhooks", {**body, "repositories": "**"}, status=201)
        await env.api("POST", "/webhooks", {**body, "repositories": "**", "url": "http://169.254.169.254/"},
                      status=400)


async def _push_real_image(env: Env, repo: str, tag: str) -> str:
    image = build_image([{"etc/os-release": b"ID=hanzo\nVERSION_ID=1\n", "bin/hello": uuid.uuid4().bytes}])
    for blob in (image.config, *image.layers):
        await push_blob(env.client, repo, blob)
    resp = await env.client.put(f"/v2/{repo}/manifests/{tag}", data=image.manifest,
                                headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return digest_of(image.manifest)


async def _push_cosign_signature(env: Env, repo: str, image: str) -> None:
    from tests.integration.signer_env import push_cosign_layer

    payload, notes = mk.cosign_layer(K1, image, reference=repo)
    await push_cosign_layer(env.client, repo, image, payload, notes)


async def test_image_deployable_fires_once_when_scanned_and_signed(env: Env) -> None:
    await env.api("PUT", "/namespaces/prod/policy", {"signing": {"keys": [mk.pem(K1)]}}, status=200)
    await env.api("POST", "/webhooks", {
        "name": "deploy", "url": env.receiver.url, "secret": SECRET, "events": ["image.deployable"],
        "repositories": "prod/**", "tag_pattern": "v*", "require": {"scan_gate": "high", "verify_signature": True},
    }, status=201)
    image = await _push_real_image(env, "prod/api", "v1")
    await _push_real_image(env, "prod/api", "latest")  # not v*: never deployable here
    # Scanned (clean: the vulnerability database is empty) but not signed yet: nothing fires.
    deadline = time.monotonic() + 30
    while (await env.api("GET", f"/prod/api/{image}/vulnerabilities", status=200))["status"] != "complete":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert env.receiver.of("image.deployable") == []
    await _push_cosign_signature(env, "prod/api", image)
    [fired] = await env.receiver.wait_for("image.deployable", within=30)
    assert _signed(fired)
    data = fired["json"]["data"]
    assert (data["repository"], data["tag"], data["digest"]) == ("prod/api", "v1", image)
    assert data["checks"]["scan"]["gate"] == "high" and "signature" in data["checks"]
    # More facts about the same (repository, tag, digest) fire nothing new: a re-scan, the tag set again.
    await env.api("POST", f"/prod/api/{image}/scan", status=202)
    deadline = time.monotonic() + 30
    while (await env.api("GET", f"/prod/api/{image}/vulnerabilities", status=200))["status"] != "complete":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert len(env.receiver.of("image.deployable")) == 1
