"""One access-log line per request without credentials in it; `GET /` names the API roots."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.settings import AuthSettings
from tests.integration.conftest import Assembly, embedded_settings, running


@pytest.fixture
async def token_assembly(tmp_path: Path) -> AsyncIterator[tuple[Assembly, str]]:
    key = generate_key().key
    auth = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(key))
    async with running(embedded_settings(tmp_path).model_copy(update={"auth": auth}), "embedded") as a:
        yield a, key


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hanzo_registry.access"]


async def test_one_line_per_request_without_secrets(
    token_assembly: tuple[Assembly, str], caplog: pytest.LogCaptureFixture
) -> None:
    a, key = token_assembly
    caplog.set_level(logging.INFO, logger="hanzo_registry.access")
    resp = await a.client.get("/v2/_catalog", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    body = await resp.read()
    resp = await a.client.get(f"/token?account=admin&scope=repository:a/b:pull&password={key}")
    await resp.read()
    resp = await a.client.get("/nowhere")
    assert resp.status == 404
    lines = _access_lines(caplog)
    assert len(lines) == 3, [r.getMessage() for r in lines]
    catalog, token, missing = lines
    assert (catalog.method, catalog.path, catalog.status, catalog.user) == ("GET", "/v2/_catalog", 200, "admin")  # type: ignore[attr-defined]
    assert catalog.bytes == len(body) and catalog.duration_ms >= 0  # type: ignore[attr-defined]
    assert '"GET /v2/_catalog" 200' in catalog.getMessage()
    assert token.path == "/token" and "account" not in token.getMessage()  # type: ignore[attr-defined]
    assert (missing.path, missing.status, missing.user) == ("/nowhere", 404, "-")  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() + str(r.__dict__) for r in lines)
    assert key not in text and "Bearer" not in text


async def test_access_log_can_be_turned_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hanzo_registry.access")
    async with running(embedded_settings(tmp_path, telemetry={"access_log": False}), "embedded") as a:
        assert (await a.client.get("/v2/")).status == 200
    assert _access_lines(caplog) == []


async def test_root_names_the_api_roots_and_the_version(token_assembly: tuple[Assembly, str]) -> None:
    a, _ = token_assembly
    resp = await a.client.get("/")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["name"] == "hanzo-registry" and doc["version"]
    assert doc["api"] == {
        "oci": "/v2/",
        "management": "/v1/registry/",
        "openapi": "/v1/registry/openapi.json",
        "token": "/token",
        "console": "/console/",
        "metrics": "/metrics",
    }
