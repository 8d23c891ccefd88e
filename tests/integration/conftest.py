"""Registry assemblies for integration tests: the embedded one and the distributed one on the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.core.bootstrap import Container, container
from services.core.settings import Settings, load_settings
from services.distribution import service as distribution
from tests.conftest import infra


def embedded_settings(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(data_dir=data_dir, auth={"mode": "none"}, **overrides)


def distributed_settings(data_dir: Path, run_id: str, **overrides: Any) -> Settings:
    return load_settings(
        data_dir=data_dir,
        auth={"mode": "none"},
        metadata={"kind": "mongo", "uri": infra("HANZO_TEST_MONGO_URI"), "database": f"hzr_test_{run_id}"},
        storage={
            "blobs": {
                "kind": "s3",
                "endpoint": infra("HANZO_TEST_S3_ENDPOINT"),
                "bucket": infra("HANZO_TEST_S3_BUCKET"),
                "access_key": infra("HANZO_TEST_S3_ACCESS_KEY"),
                "secret_key": infra("HANZO_TEST_S3_SECRET_KEY"),
                "prefix": f"test-{run_id}",
            }
        },
        events={"kind": "kafka", "bootstrap_servers": infra("HANZO_TEST_KAFKA")},
        topics={name: f"{name}-{run_id}" for name in ("manifests", "tags", "blobs", "audit")},
        **overrides,
    )


@dataclass
class Assembly:
    name: str
    client: TestClient[web.Request, web.Application]
    c: Container


async def _drop_everything(c: Container) -> None:
    """Leave nothing behind on the shared servers."""
    from services.core.storage import meta as m

    for coll in (m.REPOSITORIES, m.BLOB_LINKS, m.MANIFESTS, m.TAGS, m.UPLOADS, "outbox", "leases", "processed_events"):
        await c.docs.drop_collection(coll)
    async for info in c.blobs.iter_all():
        await c.blobs.delete(info.digest)
    async for upload_id, _ in c.blobs.iter_uploads():
        await c.blobs.abort(upload_id)


@contextlib.asynccontextmanager
async def running(settings: Settings, name: str) -> AsyncIterator[Assembly]:
    async with container(settings) as c:
        parts = await distribution.build(c)
        assert parts.http is not None
        stop = asyncio.Event()
        loops = [asyncio.create_task(loop(stop)) for loop in parts.loops]
        client = TestClient(TestServer(parts.http))
        await client.start_server()
        try:
            yield Assembly(name, client, c)
        finally:
            await client.close()
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            if name == "distributed":
                await _drop_everything(c)


ASSEMBLIES: list[str | pytest.ParameterSet]
ASSEMBLIES = ["embedded", pytest.param("distributed", marks=[pytest.mark.kafka, pytest.mark.mongo, pytest.mark.s3])]
if os.environ.get("HANZO_TEST_ASSEMBLIES"):
    ASSEMBLIES = [
        a
        for a in ASSEMBLIES
        if (a if isinstance(a, str) else a.values[0]) in os.environ["HANZO_TEST_ASSEMBLIES"].split(",")
    ]


@pytest.fixture(params=ASSEMBLIES)
async def assembly(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Assembly]:
    run_id = uuid.uuid4().hex[:10]
    embedded = request.param == "embedded"
    settings = embedded_settings(tmp_path) if embedded else distributed_settings(tmp_path, run_id)
    async with running(settings, request.param) as a:
        yield a


@pytest.fixture(params=ASSEMBLIES)
async def auth_assembly(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Assembly]:
    """An assembly with `auth.mode: token`; the bootstrap admin's key is in settings.auth.bootstrap_admin_key."""
    from pydantic import SecretStr

    from services.core.auth.apikeys import generate_key
    from services.core.auth.store import AuthStore
    from services.core.settings import AuthSettings

    run_id = uuid.uuid4().hex[:10]
    embedded = request.param == "embedded"
    settings = embedded_settings(tmp_path) if embedded else distributed_settings(tmp_path, run_id)
    auth = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(generate_key().key))
    async with running(settings.model_copy(update={"auth": auth}), request.param) as a:
        try:
            yield a
        finally:
            if not embedded:
                await AuthStore(a.c.docs).drop_all()
