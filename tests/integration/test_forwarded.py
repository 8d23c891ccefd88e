"""Behind a trusted proxy, X-Forwarded-For/-Proto/-Host give the audit's source address and the token realm;
from any other peer they are ignored."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.settings import AuthSettings
from tests.integration.conftest import Assembly, embedded_settings, running

FORWARDED = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "cr.example"}


@pytest.fixture(params=["127.0.0.1/32", "10.0.0.0/8"], ids=["trusted", "untrusted"])
async def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Assembly, bool, str]]:
    key = generate_key().key
    settings = embedded_settings(tmp_path, server={"trusted_proxies": [request.param]})
    auth = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(key))
    async with running(settings.model_copy(update={"auth": auth}), "embedded") as a:
        yield a, request.param.startswith("127."), key


async def test_challenge_realm_follows_trusted_forwarded_headers(proxied: tuple[Assembly, bool, str]) -> None:
    a, trusted, _ = proxied
    resp = await a.client.get("/v2/", headers=FORWARDED)
    assert resp.status == 401
    realm = resp.headers["WWW-Authenticate"]
    if trusted:
        assert 'realm="https://cr.example/token"' in realm
    else:
        assert "cr.example" not in realm and 'realm="http://127.0.0.1:' in realm


async def test_audit_source_is_the_client_behind_a_trusted_proxy(proxied: tuple[Assembly, bool, str]) -> None:
    a, trusted, key = proxied
    bad = base64.b64encode(b"admin:hzr_00000000_" + b"x" * 40).decode()
    resp = await a.client.get("/v2/", headers={**FORWARDED, "Authorization": f"Basic {bad}"})
    assert resp.status == 401
    admin = {"Authorization": f"Bearer {key}"}
    entries = (await (await a.client.get("/v1/registry/audit", headers=admin)).json())["entries"]
    sources = {e["source_address"] for e in entries if e["outcome"] != "success"}
    assert sources == ({"198.51.100.7"} if trusted else {"127.0.0.1"}), entries
