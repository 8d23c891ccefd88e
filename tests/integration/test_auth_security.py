"""The outside review's access defects, each as the reviewer found it, on both assemblies (auth.mode: token):
key escalation, mounts past a token's scope, tokens outliving their key or user, unbounded integers,
orphaned keys of a deleted user, and the catalog's scan."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest

from services.core.auth.apikeys import generate_key, hash_key
from services.core.auth.model import ApiKey
from services.core.auth.scopes import ResourceScope
from services.core.auth.tokens import issue_token
from services.distribution import oci_api
from tests.integration.conftest import Assembly
from tests.integration.oci import error_code
from tests.integration.test_auth_oci import Authed, setup_users, token_access
from tests.integration.test_auth_support import Api, admin_key, basic, bearer, grant, token_for


async def test_only_an_unrestricted_key_manages_keys(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    writer = Api(client, bearer(keys["writer"]))
    limited = await writer.call("POST", "/v1/registry/users/writer/keys",
                                json_body={"name": "ci", "namespaces": ["ml"], "role": "reader"}, expect=201)
    # A key limited to a namespace and the reader role mints nothing, lists nothing, revokes nothing.
    as_limited = Api(client, bearer(limited["key"]))
    for method, path, body in (("POST", "/v1/registry/users/writer/keys", {"name": "x"}),
                               ("GET", "/v1/registry/users/writer/keys", None),
                               ("DELETE", f"/v1/registry/users/writer/keys/{limited['prefix']}", None)):
        resp = await client.request(method, path, headers=as_limited.headers,
                                    **({"json": body} if body is not None else {}))  # type: ignore[arg-type]
        assert resp.status == 403 and await error_code(resp) == "DENIED", (method, path)
    # A registry access token, even one with an empty scope, cannot become a permanent key ...
    token = await token_for(client, keys["writer"])
    assert jwt.decode(token, options={"verify_signature": False})["access"] == []
    resp = await client.post("/v1/registry/users/writer/keys", json={"name": "x"}, headers=bearer(token))
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    # ... nor change anything else, even an admin's token
    admin_token = await token_for(client, admin_key(auth_assembly))
    resp = await client.post("/v1/registry/users", json={"name": "mallory"}, headers=bearer(admin_token))
    assert resp.status == 403
    resp = await client.post("/v1/registry/ml/permissions", json={"user": "reader", "role": "admin"},
                             headers=bearer(admin_token))
    assert resp.status == 403
    # The unrestricted key still does all of it.
    listed = await writer.call("GET", "/v1/registry/users/writer/keys", expect=200)
    assert {k["prefix"] for k in listed["keys"]} >= {limited["prefix"]}
    await writer.call("DELETE", f"/v1/registry/users/writer/keys/{limited['prefix']}", expect=204)
    await api.call("GET", "/v1/registry/audit?limit=5", expect=200)


async def test_key_lifetimes_are_bounded(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api = Api(client, bearer(admin_key(auth_assembly)))
    for value in (10**309, 10**20, 0, -1, 315360001):
        resp = await client.post("/v1/registry/users/admin/keys",
                                 data=json.dumps({"expires_in_seconds": value}).encode(),
                                 headers={**api.headers, "Content-Type": "application/json"})
        assert resp.status == 400, (value, await resp.text())
        assert "expires_in_seconds" in (await resp.json())["errors"][0]["message"]
    await api.call("POST", "/v1/registry/users/admin/keys", json_body={"expires_in_seconds": 315360000}, expect=201)


async def test_a_mount_needs_pull_on_the_source_in_the_token(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    secret = await admin.push_blob("secret/weights", os.urandom(64))
    # The writer may read the source with its key: the live grant is not what a token-borne mount checks.
    await grant(api, "secret", "reader", user="writer")
    dst_only = bearer(await token_for(client, keys["writer"], "repository:ml/app:pull,push"))
    for query in (f"mount={secret}&from=secret/weights", f"mount={secret}"):
        resp = await client.post(f"/v2/ml/app/blobs/uploads/?{query}", headers=dst_only)
        assert resp.status == 202, (query, await resp.text())
    assert (await client.head(f"/v2/ml/app/blobs/{secret}", headers=dst_only)).status == 404
    both = bearer(await token_for(client, keys["writer"], "repository:ml/app:pull,push",
                                  "repository:secret/weights:pull"))
    resp = await client.post(f"/v2/ml/app/blobs/uploads/?mount={secret}&from=secret/weights", headers=both)
    assert resp.status == 201
    assert (await client.head(f"/v2/ml/app/blobs/{secret}", headers=both)).status == 200


async def test_tokens_die_with_their_key_and_their_user(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/llama", "v1")
    created = await api.call("POST", "/v1/registry/users/reader/keys", json_body={"name": "short"}, expect=201)
    token = bearer(await token_for(client, created["key"], "repository:ml/llama:pull"))
    assert (await client.get("/v2/ml/llama/manifests/v1", headers=token)).status == 200
    await api.call("DELETE", f"/v1/registry/users/reader/keys/{created['prefix']}", expect=204)
    resp = await client.get("/v2/ml/llama/manifests/v1", headers=token)
    assert resp.status == 401 and "revoked" in (await resp.json())["errors"][0]["message"]
    # A refresh token dies with the key it came from.
    resp = await client.get("/token", params={"offline_token": "true"}, headers=basic("writer", keys["writer"]))
    refresh = (await resp.json())["refresh_token"]
    writer_token = bearer(await token_for(client, keys["writer"], "repository:ml/llama:pull"))
    await api.call("DELETE", "/v1/registry/users/writer", expect=204)
    assert (await client.get("/v2/ml/llama/manifests/v1", headers=writer_token)).status == 401
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert resp.status == 401


async def test_an_expired_token_of_a_revoked_key_cannot_continue_its_upload(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, _ = await setup_users(auth_assembly)
    created = await api.call("POST", "/v1/registry/users/writer/keys", json_body={"name": "push"}, expect=201)
    fresh = bearer(await token_for(client, created["key"], "repository:ml/big:pull,push"))
    resp = await client.post("/v2/ml/big/blobs/uploads/", headers=fresh)
    location = resp.headers["Location"]
    key = await token_access(auth_assembly).service.keys.signing_key()
    expired = issue_token(key, issuer="hanzo-registry", audience="hanzo-registry", subject="writer",
                          access=[ResourceScope("repository", "ml/big", ("pull", "push"))], ttl_seconds=60,
                          now=time.time() - 600, extra={"hzr_key": created["prefix"]}).token
    resp = await client.patch(location, data=b"x" * 10, headers={**bearer(expired), "Content-Range": "0-9"})
    assert resp.status == 202, "the grace works for a live key"
    await api.call("DELETE", f"/v1/registry/users/writer/keys/{created['prefix']}", expect=204)
    resp = await client.patch(location, data=b"y" * 10, headers={**bearer(expired), "Content-Range": "10-19"})
    assert resp.status == 401


async def test_a_key_orphaned_by_its_users_deletion_never_serves_a_later_namesake(auth_assembly: Assembly) -> None:
    """A key created while its user was being deleted survives the deletion (no transactions): it must
    not authenticate the next user of that name."""
    client = auth_assembly.client
    api = Api(client, bearer(admin_key(auth_assembly)))
    service = token_access(auth_assembly).service
    await api.call("POST", "/v1/registry/users", json_body={"name": "bob"}, expect=201)
    bob = await service.require_user("bob")
    orphan = generate_key()
    await service.store.insert_key(ApiKey(prefix=orphan.prefix, user="bob", hash=hash_key(orphan.key),
                                          created=bob.created))
    await api.call("DELETE", "/v1/registry/users/bob", expect=204)
    await service.store.insert_key(ApiKey(prefix=orphan.prefix, user="bob", hash=hash_key(orphan.key),
                                          created=bob.created))  # the racing insert, after the deletion
    time.sleep(0.01)
    await api.call("POST", "/v1/registry/users", json_body={"name": "bob"}, expect=201)
    assert (await client.get("/v2/", headers=bearer(orphan.key))).status == 401
    assert (await client.get("/v2/", headers=basic("bob", orphan.key))).status == 401


async def test_the_catalog_reads_grants_per_namespace_and_bounds_its_scan(
    auth_assembly: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = auth_assembly.client
    _, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    for i in range(6):
        await admin.push_blob(f"aaa/r{i}", os.urandom(8))
    await admin.push_blob("ml/visible", os.urandom(8))
    store = token_access(auth_assembly).service.store
    reads: list[str] = []
    real = store.grants_for

    async def counted(namespace: str) -> list[object]:
        reads.append(namespace)
        return await real(namespace)  # type: ignore[return-value]

    monkeypatch.setattr(store, "grants_for", counted)
    writer = bearer(keys["writer"])
    resp = await client.get("/v2/_catalog", headers=writer)
    assert (await resp.json())["repositories"] == ["ml/visible"]
    assert sorted(reads) == ["aaa", "ml"], "one grants read per namespace, not per repository"
    # A caller who can read few of many repositories gets a short page and a link to go on.
    monkeypatch.setattr(oci_api, "CATALOG_SCAN_LIMIT", 3)
    resp = await client.get("/v2/_catalog?n=2", headers=writer)
    assert (await resp.json())["repositories"] == [] and 'rel="next"' in resp.headers["Link"]
    seen: list[str] = []
    url = "/v2/_catalog?n=2"
    for _ in range(10):
        resp = await client.get(url, headers=writer)
        seen += (await resp.json())["repositories"]
        if "Link" not in resp.headers:
            break
        url = resp.headers["Link"].split(";")[0].strip("<>")
    assert seen == ["ml/visible"]


async def test_forced_changes_to_immutable_tags_are_audited_as_such(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api = Api(client, bearer(admin_key(auth_assembly)))
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    first = await admin.push_image("prod/app", "1.0.0")
    forced = {**bearer(admin_key(auth_assembly)), "X-Hanzo-Force": "true"}
    second = await Authed(client, forced).push_image("prod/app", "1.0.0")
    resp = await client.delete("/v2/prod/app/manifests/1.0.0", headers=forced)
    assert resp.status == 202
    entries = (await api.call("GET", "/v1/registry/audit?limit=200", expect=200))["entries"]
    push = [e for e in entries if e["action"] == "push" and e["detail"].get("forced") == "true"]
    assert len(push) == 1 and push[0]["detail"]["previous"] == f"1.0.0={first}"
    delete = [e for e in entries if e["action"] == "tag.delete" and e["detail"].get("forced") == "true"]
    assert len(delete) == 1 and delete[0]["detail"]["digest"] == second
