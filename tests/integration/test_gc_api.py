"""GC over the management API on both assemblies: the embedded one calls the gc servicer in-process
(link_in_process, as `serve` does), the distributed one over real gRPC at gc.grpc_addr (as `hanzo-registry
distribution` beside `hanzo-registry gc`). Trigger (202, then 409 naming the run), history newest first and
paged, run details, storage accounting, admins only, and the metrics of a run."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.auth.store import AuthStore
from services.core.bootstrap import container
from services.core.runtime import start_grpc
from services.core.settings import AuthSettings, Settings
from services.distribution import service as distribution
from services.distribution.management_gc import GC_CHANNEL, link_in_process
from services.gc import service as gc_service
from tests.integration.conftest import ASSEMBLIES, Assembly, _drop_everything, distributed_settings, embedded_settings
from tests.integration.gc_support import drop_gc_collections, make_image, push
from tests.integration.registry_process import free_port
from tests.integration.test_auth_support import Api, bearer, new_user

R = "/v1/registry/admin"


@contextlib.asynccontextmanager
async def gc_assembly(settings: Settings, name: str) -> AsyncIterator[tuple[Assembly, str]]:
    key = generate_key().key
    gc_addr = f"127.0.0.1:{free_port()}"
    settings = settings.model_copy(update={
        "auth": AuthSettings(mode="token", bootstrap_admin_key=SecretStr(key)),
        "gc": settings.gc.model_copy(update={"enabled": False, "settle_seconds": 0.5,
                                            "grpc_addr": gc_addr if name == "distributed" else None}),
    })
    async with container(settings) as c:
        parts = [await distribution.build(c), await gc_service.build(c)]
        server = None
        if name == "embedded":
            link_in_process(parts)
        else:
            server, _ = await start_grpc(gc_addr, parts[1].grpc)
        app = parts[0].http
        assert app is not None
        assert (app.get(GC_CHANNEL) is None) == (name == "distributed")
        stop = asyncio.Event()
        loops = [asyncio.create_task(loop(stop)) for loop in parts[0].loops]
        client = TestClient(TestServer(app), headers=bearer(key))
        await client.start_server()
        try:
            yield Assembly(name, client, c), key
        finally:
            await client.close()
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            if server is not None:
                await server.stop(grace=None)
            await drop_gc_collections(c)
            if name == "distributed":
                await _drop_everything(c)
                await AuthStore(c.docs).drop_all()


@pytest.fixture(params=ASSEMBLIES)
async def gc_api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Assembly, str]]:
    run_id = uuid.uuid4().hex[:10]
    settings = embedded_settings(tmp_path) if request.param == "embedded" else distributed_settings(tmp_path, run_id)
    async with gc_assembly(settings, request.param) as a:
        yield a


async def _finished(api: Api, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        record: dict[str, Any] = await api.call("GET", f"{R}/gc/runs/{run_id}", expect=200)
        if record["status"] != "running":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"GC run {run_id} did not finish")


async def test_trigger_history_details_and_storage(gc_api: tuple[Assembly, str]) -> None:
    a, _ = gc_api
    api = Api(a.client, {})
    shared = [b"shared " + uuid.uuid4().bytes]
    kept, other, garbage = make_image(shared=shared), make_image(shared=shared), make_image()
    await push(a.client, "team/app", kept, "v1")
    await push(a.client, "team/other.v2", other, "v1")  # a dot: names must not become document keys
    await push(a.client, "team/app", garbage, "moving")
    moved = make_image()
    await push(a.client, "team/app", moved, "moving")  # `garbage` is now untagged
    unmeasured = await api.call("GET", f"{R}/storage", expect=200)
    assert unmeasured["measured"] is False and unmeasured["measured_at"] is None

    started = await api.call("POST", f"{R}/gc", json_body={"dry_run": False, "grace_seconds": 0}, expect=202)
    assert started["status"] == "running"
    # The run announces itself and waits a second before it reads anything: a second trigger meets it.
    refused = await api.call("POST", f"{R}/gc", json_body={"dry_run": True}, expect=409)
    assert refused["errors"][0]["detail"] == {"id": started["id"], "status": "running"}
    record = await _finished(api, started["id"])
    assert record["status"] == "succeeded" and record["trigger"] == "api" and record["dry_run"] is False
    assert record["manifests_deleted"] == 1 and record["errors"] == 0
    own = set(garbage.blobs)
    assert record["blobs_deleted"] == len(own)
    assert record["bytes_freed"] == sum(len(b) for b in garbage.blobs.values())
    assert {(d["kind"], d["digest"]) for d in record["deleted"]} == \
        {("manifest", garbage.digest)} | {("blob", d) for d in own}
    assert record["deleted_total"] == 1 + len(own)
    assert (await a.client.get(f"/v2/team/app/manifests/{garbage.digest}")).status == 404

    storage = await api.call("GET", f"{R}/storage", expect=200)
    assert storage["measured"] is True and storage["run"] == started["id"]
    app_bytes = sum(len(b) for b in [*kept.blobs.values(), *moved.blobs.values()])
    other_bytes = sum(len(b) for b in other.blobs.values())
    shared_bytes = len(shared[0])
    assert storage["repositories"] == {"team/app": app_bytes, "team/other.v2": other_bytes}
    assert storage["namespaces"] == {"team": app_bytes + other_bytes - shared_bytes}  # the shared layer once
    assert storage["total_bytes"] == app_bytes + other_bytes - shared_bytes

    dry = await api.call("POST", f"{R}/gc", json_body={"dry_run": True, "trigger": "cli"}, expect=202)
    dry_record = await _finished(api, dry["id"])
    assert dry_record["dry_run"] is True and dry_record["trigger"] == "cli" and dry_record["manifests_deleted"] == 0

    history = await api.call("GET", f"{R}/gc/history?limit=10", expect=200)
    assert [r["id"] for r in history["runs"]] == [dry["id"], started["id"]] and history["next"] is None
    assert set(history["runs"][1]) == {"id", "trigger", "dry_run", "status", "started", "finished",
                                       "manifests_deleted", "blobs_deleted", "bytes_freed", "errors"}
    first = await api.call("GET", f"{R}/gc/history?limit=1", expect=200)
    assert [r["id"] for r in first["runs"]] == [dry["id"]] and first["next"]
    second = await api.call("GET", f"{R}/gc/history?limit=1&after={first['next']}", expect=200)
    assert [r["id"] for r in second["runs"]] == [started["id"]] and second["next"] is None

    await api.call("GET", f"{R}/gc/runs/{uuid.uuid4().hex}", expect=404)
    await api.call("POST", f"{R}/gc", json_body={"grace_seconds": -1}, expect=400)
    await api.call("POST", f"{R}/gc", json_body={"dry_run": "yes"}, expect=400)

    metrics = a.c.metrics.render()[0].decode()
    assert 'hanzo_registry_gc_runs_total{status="succeeded",trigger="api"} 1.0' in metrics
    assert 'hanzo_registry_gc_deleted_total{kind="manifest"} 1.0' in metrics
    assert f"hanzo_registry_gc_bytes_freed_total {float(record['bytes_freed'])}" in metrics
    age = next(line for line in metrics.splitlines() if line.startswith("hanzo_registry_gc_last_success_age_seconds"))
    assert 0 <= float(age.split()[1]) < 60


async def test_only_registry_admins(gc_api: tuple[Assembly, str]) -> None:
    a, _ = gc_api
    admin = Api(a.client, {})
    key = await new_user(admin, "dev")
    dev = Api(a.client, bearer(key))
    for method, path in (("POST", f"{R}/gc"), ("GET", f"{R}/gc/history"), ("GET", f"{R}/gc/runs/x"),
                         ("GET", f"{R}/storage")):
        await dev.call(method, path, json_body={} if method == "POST" else None, expect=403)
    anonymous: TestClient[web.Request, None] = TestClient(a.client.server)
    async with anonymous:
        assert (await anonymous.get(f"{R}/gc/history")).status == 401
