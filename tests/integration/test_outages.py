"""A backend that cannot be reached is answered with 503 UNAVAILABLE and Retry-After, never a 500, and
logged once when it goes and once when it is back (both assemblies; the drivers' own exceptions)."""

from __future__ import annotations

import asyncio
import logging

import pymongo.errors
import pytest
import urllib3.exceptions

from services.distribution.keys import OUTAGES
from tests.integration.conftest import Assembly
from tests.integration.oci import push_image


async def test_an_unreachable_backend_is_a_503_with_retry_after(
    assembly: Assembly, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = assembly.client
    await push_image(client, "outage/app", "v1")
    tracker = client.app[OUTAGES]
    real_get = assembly.c.docs.get

    async def metadata_down(*args: object, **kwargs: object) -> object:
        raise pymongo.errors.ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused")

    monkeypatch.setattr(assembly.c.docs, "get", metadata_down)
    caplog.set_level(logging.INFO, logger="services.core.outages")
    for method in ("GET", "HEAD", "GET"):
        resp = await client.request(method, "/v2/outage/app/manifests/v1")
        assert resp.status == 503 and resp.headers["Retry-After"] == "5", await resp.text()
    body = await (await client.get("/v2/outage/app/manifests/v1")).json()
    assert body["errors"][0]["code"] == "UNAVAILABLE" and "metadata" in body["errors"][0]["message"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "metadata is unavailable" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "an expected outage logs no traceback"
    # the backend comes back: the next request works, and the log says so once
    monkeypatch.setattr(assembly.c.docs, "get", real_get)
    assert (await client.get("/v2/outage/app/manifests/v1")).status == 200
    async with asyncio.timeout(10):
        while tracker.down:
            await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO][-1].startswith("metadata is back")

    async def blobs_down(*args: object, **kwargs: object) -> object:
        raise urllib3.exceptions.MaxRetryError(None, "/bucket", reason=ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]

    monkeypatch.setattr(assembly.c.blobs, "start_upload", blobs_down)
    resp = await client.post("/v2/outage/app/blobs/uploads/")
    assert resp.status == 503 and "blob storage" in (await resp.json())["errors"][0]["message"]
