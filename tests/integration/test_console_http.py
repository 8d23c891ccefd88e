"""The console over plain HTTP (no browser): login, session cookie, CSRF, security headers, repository
isolation and admin-only pages, on both assemblies with auth on."""

from __future__ import annotations

import re
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from services.core.storage import meta as registry_meta
from services.distribution.console.headers import CSP
from services.distribution.keys import REGISTRY
from tests.integration.conftest import ASSEMBLIES, Assembly, distributed_settings, embedded_settings
from tests.integration.console_support import console_login, csrf_of, push_image, push_model, seed_report, seed_tags
from tests.integration.test_auth_support import Api, admin_key, basic, bearer, grant, new_user
from tests.integration.test_gc_api import _finished as gc_finished
from tests.integration.test_gc_api import gc_assembly


async def _setup(a: Assembly) -> tuple[str, str]:
    """team/app (readable by `reader`) and secret/app (not); the reader's key and the admin's."""
    admin = Api(a.client, bearer(admin_key(a)))
    key = await new_user(admin, "reader")
    await grant(admin, "team", "reader", user="reader")
    headers = basic("admin", admin_key(a))
    digest, _ = await push_image(a.client, headers, "team/app", "v1")
    await push_image(a.client, headers, "secret/app", "v1")
    await seed_report(a, "team/app", digest)
    return key, admin_key(a)


async def test_login_sets_a_strict_short_session_and_pages_are_headed(auth_assembly: Assembly) -> None:
    a = auth_assembly
    key, _ = await _setup(a)
    resp = await a.client.get("/console/repositories", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/console/login?next=")
    assert "WWW-Authenticate" not in resp.headers  # the console is no OCI challenge path
    login = await a.client.get("/console/login")
    for name, value in {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }.items():
        assert login.headers[name] == value, name
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP
    html = await login.text()
    assert "<script>" not in html and " on" + "click=" not in html and "style=" not in html  # nothing inline
    resp = await a.client.post(
        "/console/login",
        allow_redirects=False,
        data={"csrf": csrf_of(html), "username": "reader", "api_key": key, "next": "/console/repositories"},
    )
    assert resp.status == 303 and resp.headers["Location"] == "/console/repositories"
    cookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie"):
        cookie.load(header)
    session = cookie["hzr_console"]
    assert session["httponly"] and session["samesite"] == "Strict" and session["path"] == "/console/"
    assert 0 < int(session["max-age"]) <= 900
    assert not session["secure"]  # plain HTTP here; over TLS the cookie is Secure
    page = await a.client.get("/console/repositories")
    assert page.status == 200 and page.headers["Content-Security-Policy"] == CSP
    assert "team/app" in await page.text()
    static = await a.client.get("/console/static/console.js")
    assert static.status == 200 and static.headers["Content-Type"].startswith("text/javascript")
    assert (await a.client.get("/console/static/..%2fsession.py")).status == 404
    metrics = await (await a.client.get("/metrics")).text()
    assert 'route="console"' in metrics  # its own low-cardinality route label
    # /v2 still challenges as before (the console did not change the OCI API)
    v2 = await a.client.get("/v2/")
    assert v2.status == 401 and v2.headers["WWW-Authenticate"].startswith("Bearer realm=")


async def test_posts_without_csrf_are_refused(auth_assembly: Assembly) -> None:
    a = auth_assembly
    key, _ = await _setup(a)
    # login: the form's value must equal the browser's login cookie (double submit)
    await a.client.get("/console/login")
    for form in ({"username": "reader", "api_key": key}, {"csrf": "forged" * 6, "username": "reader", "api_key": key}):
        resp = await a.client.post("/console/login", data=form, allow_redirects=False)
        assert resp.status == 403 and "hzr_console=" not in resp.headers.get("Set-Cookie", "")
    csrf = await console_login(a.client, "reader", key)
    # logout: the value must be the one signed into the session
    for form in ({}, {"csrf": "x" * 43}):
        resp = await a.client.post("/console/logout", data=form, allow_redirects=False)
        assert resp.status == 403
        assert (await a.client.get("/console/repositories", allow_redirects=False)).status == 200
    resp = await a.client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await a.client.get("/console/repositories", allow_redirects=False)).status == 303


async def test_bad_credentials_get_the_form_again(auth_assembly: Assembly) -> None:
    a = auth_assembly
    key, _ = await _setup(a)
    resp = await a.client.get("/console/login")
    resp = await a.client.post(
        "/console/login",
        allow_redirects=False,
        data={"csrf": csrf_of(await resp.text()), "username": "someone-else", "api_key": key},
    )
    assert resp.status == 401 and "not valid" in await resp.text()
    assert "hzr_console=" not in resp.headers.get("Set-Cookie", "")


async def test_without_an_oidc_issuer_there_is_no_single_sign_on(auth_assembly: Assembly) -> None:
    # (With one: tests/integration/test_oidc.py.)
    a = auth_assembly
    assert "single sign-on" not in await (await a.client.get("/console/login")).text()
    for path in ("/console/login/sso", "/console/login/sso/done", "/console/login/sso/done?next=/console/admin"):
        resp = await a.client.get(path, allow_redirects=False)
        assert resp.status in (401, 404) and "Single sign-on" in await resp.text(), path
        assert "hzr_console=" not in resp.headers.get("Set-Cookie", "")


async def test_reader_sees_only_what_it_may_pull_and_no_admin_pages(auth_assembly: Assembly) -> None:
    a = auth_assembly
    key, _ = await _setup(a)
    await console_login(a.client, "reader", key)
    html = await (await a.client.get("/console/repositories")).text()
    assert "team/app" in html and "secret/app" not in html
    assert "/console/admin" not in html
    for path in (
        "/console/repositories/secret/app",
        "/console/repositories/secret/app/-/manifest/v1",
        "/console/repositories/secret/app/-/vulnerabilities/v1",
        "/console/admin",
        "/console/namespaces/team",
        "/console/namespaces/secret",
    ):
        resp = await a.client.get(path, allow_redirects=False)
        assert resp.status == 403, path
        assert "/console/admin" not in await resp.text()
    ok = await a.client.get("/console/repositories/team/app/-/vulnerabilities/v1")
    text = await ok.text()
    assert ok.status == 200 and "CVE-2024-0001" in text and "3.0.13-1" in text
    assert "Permissions and policy" not in await (await a.client.get("/console/repositories/team/app")).text()


async def test_admin_sees_admin_and_namespace_pages(auth_assembly: Assembly) -> None:
    a = auth_assembly
    _, key = await _setup(a)
    await console_login(a.client, "admin", key)
    html = await (await a.client.get("/console/repositories")).text()
    assert "team/app" in html and "secret/app" in html and "/console/admin" in html
    admin_page = await a.client.get("/console/admin")
    text = await admin_page.text()
    assert admin_page.status == 200
    for heading in ("Garbage collection", "Storage usage", "Replication"):
        assert heading in text
    ns = await a.client.get("/console/namespaces/team")
    assert ns.status == 200 and "user reader" in await ns.text()
    assert (await a.client.get("/console/repositories/team/nothing-here")).status == 404


async def test_a_tag_page_reads_one_page_of_tags(auth_assembly: Assembly) -> None:
    """A page reads only the tags and manifests it shows; the names come from the repository's kept names,
    which the first page this replica serves reads once (all of them: a repository of at most 10,000 tags;
    a bigger one has each page read `limit + 1` names from the tag index, tests/unit/core/storage)."""
    a = auth_assembly
    _, key = await _setup(a)
    registry = a.client.server.app[REGISTRY]  # type: ignore[attr-defined]
    digest, _ = await push_image(a.client, basic("admin", key), "team/many", "latest")
    await seed_tags(registry, "team/many", digest, 1000)
    await console_login(a.client, "admin", key)
    docs = registry.meta.docs
    reads: list[tuple[str, str, int]] = []
    find, get_many, get = docs.find, docs.get_many, docs.get

    async def counting_find(collection: str, *args: Any, **kw: Any) -> Any:
        reads.append(("find", collection, kw.get("limit") or 0))
        return await find(collection, *args, **kw)

    async def counting_get_many(collection: str, keys: Any) -> Any:
        reads.append(("get_many", collection, len(keys)))
        return await get_many(collection, keys)

    async def counting_get(collection: str, key: str) -> Any:
        reads.append(("get", collection, 1))
        return await get(collection, key)

    docs.find, docs.get_many, docs.get = counting_find, counting_get_many, counting_get
    try:
        resp = await a.client.get("/console/repositories/team/many?after=t00499")
        html = await resp.text()
        assert resp.status == 200
        first = [r for r in reads if r[1] in ("tags", "manifests")]
        reads.clear()
        resp = await a.client.get("/console/repositories/team/many?after=t00549")
        assert resp.status == 200 and ">t00550<" in await resp.text()
        then = [r for r in reads if r[1] in ("tags", "manifests")]
    finally:
        del docs.find, docs.get_many, docs.get
    # The names once (kept), the page's 50 tags at once, their one manifest: nothing per row
    names = ("find", "tags", registry_meta.TAG_LIST_NAMES + 1)
    assert first == [names, ("get_many", "tags", 50), ("get_many", "manifests", 1)], first
    assert then == [("get_many", "tags", 50), ("get_many", "manifests", 1)], then
    assert html.count('<th scope="row">') == 50 and ">t00500<" in html and ">t00549<" in html
    assert "after=t00549" in html and "First page" in html


@pytest.mark.parametrize("name", ASSEMBLIES)
async def test_admin_page_shows_gc_history_and_storage(name: str, tmp_path: Path) -> None:
    """With a gc service to ask (in-process as in `serve`, or over gRPC), the admin page shows its runs and
    the storage it counted."""
    embedded = name == "embedded"
    settings = embedded_settings(tmp_path) if embedded else distributed_settings(tmp_path, uuid.uuid4().hex[:10])
    async with gc_assembly(settings, name) as (a, key):
        await _gc_and_look(a, key)


async def _gc_and_look(a: Assembly, key: str) -> None:
    api = Api(a.client, bearer(key))
    await push_image(a.client, basic("admin", key), "team/app", "v1")
    started = await api.call("POST", "/v1/registry/admin/gc", json_body={"dry_run": False}, expect=202)
    await gc_finished(api, started["id"])
    await console_login(a.client, "admin", key)
    resp = await a.client.get("/console/admin")
    html = await resp.text()
    assert resp.status == 200 and started["id"] in html and "succeeded" in html
    assert "in all, counted by run" in html and "Not available" not in html


async def test_the_session_holds_no_more_than_its_key(auth_assembly: Assembly) -> None:
    """A key limited to a namespace logs in to that namespace only, even for a registry admin (and sees no
    admin pages); revoking the key ends its console session at once."""
    a = auth_assembly
    await _setup(a)
    api = Api(a.client, bearer(admin_key(a)))
    limited = await api.call(
        "POST",
        "/v1/registry/users/admin/keys",
        expect=201,
        json_body={"name": "team-only", "namespaces": ["team"], "role": "reader"},
    )
    await console_login(a.client, "admin", limited["key"])
    html = await (await a.client.get("/console/repositories")).text()
    assert "team/app" in html and "secret/app" not in html and "/console/admin" not in html
    assert (await a.client.get("/console/admin", allow_redirects=False)).status == 403
    assert (await a.client.get("/console/repositories/secret/app", allow_redirects=False)).status == 403
    await api.call("DELETE", f"/v1/registry/users/admin/keys/{limited['prefix']}", expect=204)
    resp = await a.client.get("/console/repositories", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/console/login")


async def test_a_user_makes_and_revokes_its_own_api_keys_in_the_console(auth_assembly: Assembly) -> None:
    """The keys page: a key made there is shown once and logs docker in (a token at /token with Basic); revoked
    there, it no longer does. Forms need the session's CSRF value; a session made with a limited key cannot make
    keys (a new key never holds more than the credential that made it)."""
    a = auth_assembly
    key, _ = await _setup(a)
    csrf = await console_login(a.client, "reader", key)
    page = await (await a.client.get("/console/keys")).text()
    assert "API keys" in page and 'aria-current="page">API keys' in page
    resp = await a.client.post("/console/keys", data={"name": "laptop", "expires_days": "30"})
    assert resp.status == 403  # no CSRF value
    resp = await a.client.post("/console/keys", data={"csrf": csrf, "name": "laptop", "expires_days": "0"})
    assert resp.status == 400 and "whole number of days" in await resp.text()
    resp = await a.client.post("/console/keys", data={"csrf": csrf, "name": "laptop", "expires_days": "30"})
    html = await resp.text()
    assert resp.status == 201, html
    found = re.search(r'<code id="new-key">(hzr_[^<]+)</code>', html)
    assert found is not None and "docker login" in html
    made = found.group(1)
    token = await a.client.get("/token?service=hanzo-registry&scope=repository:team/app:pull",
                               headers=basic("reader", made))
    assert token.status == 200
    page = await (await a.client.get("/console/keys")).text()
    assert made not in page and "laptop" in page  # shown once
    prefix = made.split("_")[1]
    resp = await a.client.post(f"/console/keys/{prefix}/revoke", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/keys"
    token = await a.client.get("/token?service=hanzo-registry", headers=basic("reader", made))
    assert token.status == 401
    # Another user's key cannot be revoked from here
    admin_prefix = (await Api(a.client, bearer(admin_key(a))).call(
        "POST", "/v1/registry/users/admin/keys", expect=201, json_body={"name": "x"}))["prefix"]
    resp = await a.client.post(f"/console/keys/{admin_prefix}/revoke", data={"csrf": csrf})
    assert resp.status == 404
    # A session of a limited key may not make keys
    limited = await Api(a.client, bearer(admin_key(a))).call(
        "POST", "/v1/registry/users/reader/keys", expect=201, json_body={"name": "ro", "role": "reader"})
    a.client.session.cookie_jar.clear()
    csrf = await console_login(a.client, "reader", limited["key"])
    resp = await a.client.post("/console/keys", data={"csrf": csrf, "name": "more"})
    assert resp.status == 403 and "no namespace or role limit" in await resp.text()


async def test_model_page_shows_the_model_view(auth_assembly: Assembly, tmp_path: Path) -> None:
    a = auth_assembly
    _, key = await _setup(a)
    made = await push_model(a, tmp_path / "model")
    await console_login(a.client, "admin", key)
    resp = await a.client.get("/console/repositories/models/llama/-/model/v1")
    html = await resp.text()
    assert resp.status == 200
    for expected in ("LlamaForCausalLM", "safetensors", f"{made.parameters:,}", "model.safetensors", "config.json"):
        assert expected in html, expected
    resp = await a.client.get("/console/repositories/team/app/-/model/v1")
    assert resp.status == 200 and "not a model" in await resp.text()
