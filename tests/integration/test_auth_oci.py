"""Token authentication and authorization of the OCI API on both assemblies (auth.mode: token)."""

from __future__ import annotations

import base64
import json
import os
import time

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from services.core.auth.scopes import ResourceScope
from services.core.auth.tokens import issue_token, new_signing_key
from services.distribution.auth_access import TokenAccess
from services.distribution.keys import ACCESS
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_MANIFEST, digest_of, error_code, image_manifest
from tests.integration.test_auth_support import Api, admin_key, basic, bearer, grant, new_user, token_for


class Authed:
    """An OCI client that always sends one Authorization header."""

    def __init__(self, client: TestClient[web.Request, web.Application], headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    async def push_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        resp = await self.client.post(f"/v2/{repo}/blobs/uploads/", headers=self.headers)
        assert resp.status == 202, await resp.text()
        resp = await self.client.put(f"{resp.headers['Location']}?digest={digest}", data=data, headers=self.headers)
        assert resp.status == 201, await resp.text()
        return digest

    async def push_image(self, repo: str, tag: str) -> str:
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(4).hex()}).encode()
        layer = os.urandom(512)
        for blob in (config, layer):
            await self.push_blob(repo, blob)
        manifest = image_manifest(config, [layer])
        resp = await self.client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                                     headers={**self.headers, "Content-Type": OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
        return digest_of(manifest)


def challenge(resp: object) -> str:
    return str(resp.headers["WWW-Authenticate"])  # type: ignore[attr-defined]


def token_access(a: Assembly) -> TokenAccess:
    access = a.client.app[ACCESS]
    assert isinstance(access, TokenAccess)
    return access


async def setup_users(a: Assembly) -> tuple[Api, dict[str, str]]:
    """admin; reader (ml: reader), writer (ml: writer via team ml-engineers)."""
    api = Api(a.client, bearer(admin_key(a)))
    keys = {"reader": await new_user(api, "reader"), "writer": await new_user(api, "writer", email="w@example.com")}
    await api.call("POST", "/v1/registry/teams", json_body={"name": "ml-engineers"}, expect=201)
    await api.call("PUT", "/v1/registry/teams/ml-engineers/members/writer", expect=204)
    await grant(api, "ml", "reader", user="reader")
    await grant(api, "ml", "writer", team="ml-engineers")
    return api, keys


async def test_challenges(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    base = f"http://{client.host}:{client.port}"
    resp = await client.get("/v2/")
    assert resp.status == 401 and await error_code(resp) == "UNAUTHORIZED"
    assert challenge(resp) == f'Bearer realm="{base}/token",service="hanzo-registry"'
    resp = await client.get("/v2/ml/llama/tags/list")
    assert resp.status == 401
    assert challenge(resp) == f'Bearer realm="{base}/token",service="hanzo-registry",scope="repository:ml/llama:pull"'
    resp = await client.post("/v2/ml/llama/blobs/uploads/")
    assert 'scope="repository:ml/llama:pull,push"' in challenge(resp)
    # A HEAD without credentials is how pushers look first: it offers push too (granted only if held).
    resp = await client.head(f"/v2/ml/llama/blobs/sha256:{'0' * 64}")
    assert 'scope="repository:ml/llama:pull,push"' in challenge(resp)
    resp = await client.get("/v2/_catalog")
    assert 'scope="registry:catalog:*"' in challenge(resp)


async def test_docker_login_flow_and_oauth2(auth_assembly: Assembly) -> None:
    client, key = auth_assembly.client, admin_key(auth_assembly)
    # docker login: GET /v2/ (401), token GET with Basic, account, offline_token, client_id, no scope
    resp = await client.get("/token", params={"service": "hanzo-registry", "account": "admin",
                                              "offline_token": "true", "client_id": "docker"},
                            headers=basic("admin", key))
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"].endswith("Z")
    assert body["refresh_token"].startswith("hzr_") and body["refresh_token"] != key
    assert (await client.get("/v2/", headers=bearer(body["token"]))).status == 200
    header = jwt.get_unverified_header(body["token"])
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["kid"]
    assert claims["iss"] == "hanzo-registry" and claims["aud"] == "hanzo-registry" and claims["sub"] == "admin"
    assert claims["access"] == [] and claims["jti"] and claims["nbf"] <= claims["iat"] < claims["exp"]
    # the refresh grant docker uses afterwards (POST, form-encoded)
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                              "service": "hanzo-registry", "client_id": "docker",
                                              "scope": "repository:ml/llama:pull,push repository:ml/other:pull"})
    assert resp.status == 200, await resp.text()
    refreshed = await resp.json()
    assert refreshed["scope"] == "repository:ml/llama:pull,push repository:ml/other:pull"
    assert refreshed["refresh_token"] == body["refresh_token"]
    pusher = Authed(client, bearer(refreshed["access_token"]))
    await pusher.push_image("ml/llama", "latest")
    # the password grant, with and without an offline token
    resp = await client.post("/token", data={"grant_type": "password", "username": "admin", "password": key,
                                              "access_type": "offline", "scope": "repository:ml/llama:pull"})
    assert resp.status == 200 and "refresh_token" in await resp.json()
    resp = await client.post("/token", data={"grant_type": "password", "username": "admin", "password": "nope"})
    assert resp.status == 401
    resp = await client.post("/token", data={"grant_type": "client_credentials"})
    assert resp.status == 400
    # an API key is not a refresh token, nor a refresh token an API key
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": key})
    assert resp.status == 401
    resp = await client.get("/v2/", headers=bearer(body["refresh_token"]))
    assert resp.status == 401


async def test_anonymous_token_and_public_repositories(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api = Api(client, bearer(admin_key(auth_assembly)))
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("pub/app", "v1")
    await admin.push_image("priv/app", "v1")
    await api.call("PUT", "/v1/registry/pub/visibility", json_body={"public": True}, expect=200)
    resp = await client.get("/token", params=[("scope", "repository:pub/app:pull,push"),
                                              ("scope", "repository:priv/app:pull")])
    body = await resp.json()
    assert resp.status == 200 and body["scope"] == "repository:pub/app:pull"
    assert jwt.decode(body["token"], options={"verify_signature": False})["sub"] == ""
    # anonymous pulls of public content need no token at all; private content challenges
    assert (await client.get("/v2/pub/app/manifests/v1")).status == 200
    assert (await client.get("/v2/priv/app/manifests/v1")).status == 401
    resp = await client.put("/v2/pub/app/manifests/v2", data=b"{}", headers=bearer(body["token"]))
    assert resp.status == 401 and 'error="insufficient_scope"' in challenge(resp)
    # the catalog lists only what the caller can read
    anon_catalog = await token_for_anonymous(client, "registry:catalog:*")
    resp = await client.get("/v2/_catalog", headers=bearer(anon_catalog))
    assert (await resp.json())["repositories"] == ["pub/app"]
    resp = await client.get("/v2/_catalog", headers=bearer(admin_key(auth_assembly)))
    assert (await resp.json())["repositories"] == ["priv/app", "pub/app"]
    resp = await client.get("/v2/_catalog", headers=bearer(anon_catalog.replace("e", "f", 1)))
    assert resp.status == 401


async def token_for_anonymous(client: TestClient[web.Request, web.Application], *scopes: str) -> str:
    resp = await client.get("/token", params=[("scope", s) for s in scopes])
    return str((await resp.json())["token"])


async def test_roles_reader_writer_namespaces(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    _, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/llama", "v1")
    await admin.push_image("web/site", "v1")
    # the reader's token holds only pull: the grant is the intersection, pushing is DENIED (403)
    resp = await client.get("/token", params={"scope": "repository:ml/llama:pull,push,delete"},
                            headers=basic("reader", keys["reader"]))
    body = await resp.json()
    assert body["scope"] == "repository:ml/llama:pull"
    reader = bearer(body["token"])
    assert (await client.get("/v2/ml/llama/manifests/v1", headers=reader)).status == 200
    resp = await client.post("/v2/ml/llama/blobs/uploads/", headers=reader)
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    resp = await client.post("/v2/ml/llama/blobs/uploads/", headers=basic("reader", keys["reader"]))
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    # the writer pushes and moves tags, but cannot delete
    for creds in (bearer(await token_for(client, keys["writer"], "repository:ml/llama:pull,push,delete",
                                         user="w@example.com")), basic("hanzo", keys["writer"])):
        writer = Authed(client, creds)
        digest = await writer.push_image("ml/llama", "latest")
        resp = await client.delete(f"/v2/ml/llama/manifests/{digest}", headers=creds)
        assert resp.status == 403 and await error_code(resp) == "DENIED"
        resp = await client.delete("/v2/ml/llama/manifests/latest", headers=creds)
        assert resp.status == 403
    # another namespace is off limits, for reading too
    writer_key = bearer(keys["writer"])
    for method, path in (("GET", "/v2/web/site/manifests/v1"), ("POST", "/v2/web/site/blobs/uploads/"),
                         ("GET", "/v2/web/site/tags/list")):
        resp = await client.request(method, path, headers=writer_key)
        assert resp.status == 403 and await error_code(resp) == "DENIED", (method, path)
    resp = await client.get("/token", params={"scope": "repository:web/site:pull"},
                            headers=basic("writer", keys["writer"]))
    assert (await resp.json())["scope"] == ""
    # a writer asking for a token that lacks a held scope is told to fetch a new one (401)
    pull_only = bearer(await token_for(client, keys["writer"], "repository:ml/llama:pull"))
    resp = await client.post("/v2/ml/llama/blobs/uploads/", headers=pull_only)
    assert resp.status == 401 and 'error="insufficient_scope"' in challenge(resp)
    assert 'scope="repository:ml/llama:pull,push"' in challenge(resp)
    # the catalog of a user
    resp = await client.get("/v2/_catalog", headers=writer_key)
    assert (await resp.json())["repositories"] == ["ml/llama"]


async def test_mount_from_unreadable_repository_falls_back_to_upload(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    _, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    secret = await admin.push_blob("secret/weights", b"secret weights")
    shared = await admin.push_blob("ml/base", b"shared base layer")
    writer = basic("writer", keys["writer"])
    resp = await client.post(f"/v2/ml/app/blobs/uploads/?mount={secret}&from=secret/weights", headers=writer)
    assert resp.status == 202, await resp.text()
    resp = await client.post(f"/v2/ml/app/blobs/uploads/?mount={secret}", headers=writer)
    assert resp.status == 202
    assert (await client.head(f"/v2/ml/app/blobs/{secret}", headers=writer)).status == 404
    resp = await client.post(f"/v2/ml/app/blobs/uploads/?mount={shared}&from=ml/base", headers=writer)
    assert resp.status == 201
    # A token-borne mount is checked against the token's scope: test_auth_security.py shows it with a user
    # who may read the source but whose token does not say so.


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_bad_tokens_are_refused(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/llama", "v1")
    good = await token_for(client, admin_key(auth_assembly), "repository:ml/llama:pull")
    assert (await client.get("/v2/ml/llama/manifests/v1", headers=bearer(good))).status == 200
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    service = token_access(auth_assembly).service
    key = await service.keys.signing_key()
    other_key = new_signing_key(now=time.time(), active_seconds=60, max_token_seconds=60)
    all_access = [ResourceScope("repository", "ml/llama", ("pull", "push", "delete"))]
    forged_claims = {**claims, "access": [s.to_claim() for s in all_access]}
    bad = {
        "forged": f"{header}.{_b64(forged_claims)}.{signature}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{payload}.",
        "other key": jwt.encode(claims, other_key.private_key(), algorithm="ES256", headers={"kid": key.kid}),
        "unknown kid": issue_token(other_key, issuer="hanzo-registry", audience="hanzo-registry", subject="admin",
                                   access=all_access, ttl_seconds=60).token,
        "expired": issue_token(key, issuer="hanzo-registry", audience="hanzo-registry", subject="admin",
                               access=all_access, ttl_seconds=60, now=time.time() - 3600).token,
        "other audience": issue_token(key, issuer="hanzo-registry", audience="elsewhere", subject="admin",
                                      access=all_access, ttl_seconds=60).token,
        "garbage": "not.a.token",
    }
    for name, token in bad.items():
        resp = await client.get("/v2/ml/llama/manifests/v1", headers=bearer(token))
        assert resp.status == 401, name
        assert 'error="invalid_token"' in challenge(resp), name
    # more scopes than held: the grant is reduced, never widened
    _, keys = await setup_users(auth_assembly)
    token = await token_for(client, keys["reader"], "repository:ml/llama:*", "repository:web/x:pull")
    assert jwt.decode(token, options={"verify_signature": False})["access"] == [
        {"type": "repository", "name": "ml/llama", "actions": ["pull"]}]
    resp = await client.delete("/v2/ml/llama/manifests/v1", headers=bearer(token))
    assert resp.status == 403


async def test_api_keys_directly_on_v2(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    for headers in (bearer(keys["writer"]), basic("hanzo", keys["writer"]), basic("writer", keys["writer"]),
                    basic("w@example.com", keys["writer"])):
        assert (await client.get("/v2/", headers=headers)).status == 200
        await Authed(client, headers).push_blob("ml/app", os.urandom(64))
    assert (await client.get("/v2/", headers=basic("reader", keys["writer"]))).status == 401
    created = await api.call("POST", "/v1/registry/users/writer/keys",
                             json_body={"namespaces": ["ml"], "role": "reader"}, expect=201)
    limited = bearer(created["key"])
    assert (await client.get("/v2/ml/app/tags/list", headers=limited)).status == 200  # blobs made the repository
    resp = await client.post("/v2/ml/app/blobs/uploads/", headers=limited)
    assert resp.status == 403
    await api.call("DELETE", f"/v1/registry/users/writer/keys/{created['prefix']}", expect=204)
    assert (await client.get("/v2/", headers=limited)).status == 401


async def test_upload_keeps_its_authorization_after_the_token_expires(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    _, keys = await setup_users(auth_assembly)
    service = token_access(auth_assembly).service
    key = await service.keys.signing_key()

    def expired_token(subject: str, repo: str) -> str:
        return issue_token(key, issuer="hanzo-registry", audience="hanzo-registry", subject=subject,
                           access=[ResourceScope("repository", repo, ("pull", "push"))], ttl_seconds=60,
                           now=time.time() - 600).token

    fresh = bearer(await token_for(client, keys["writer"], "repository:ml/big:pull,push"))
    resp = await client.post("/v2/ml/big/blobs/uploads/", headers=fresh)
    location = resp.headers["Location"]
    data = os.urandom(3000)
    stale = bearer(expired_token("writer", "ml/big"))
    resp = await client.patch(location, data=data[:1000], headers={**stale, "Content-Range": "0-999"})
    assert resp.status == 202, await resp.text()
    # the expired token does nothing else: not another user's upload, not a manifest, not a new upload
    other = bearer(expired_token("reader", "ml/big"))
    assert (await client.patch(location, data=data[1000:2000], headers=other)).status == 401
    assert (await client.post("/v2/ml/big/blobs/uploads/", headers=stale)).status == 401
    assert (await client.get("/v2/ml/big/tags/list", headers=stale)).status == 401
    resp = await client.put(f"{location}?digest={digest_of(data)}", data=data[1000:],
                            headers={**stale, "Content-Range": "1000-2999"})
    assert resp.status == 201, await resp.text()


async def test_only_registry_admins_force_immutable_tags(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    _, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/app", "v1.0.0")
    writer = Authed(client, {**basic("writer", keys["writer"]), "X-Hanzo-Force": "true"})
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = os.urandom(256)
    for blob in (config, layer):
        await writer.push_blob("ml/app", blob)
    manifest = image_manifest(config, [layer])
    headers = {"Content-Type": OCI_MANIFEST, "X-Hanzo-Force": "true"}
    resp = await client.put("/v2/ml/app/manifests/v1.0.0", data=manifest,
                            headers={**basic("writer", keys["writer"]), **headers})
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    token = await token_for(client, admin_key(auth_assembly), "repository:ml/app:pull,push")
    resp = await client.put("/v2/ml/app/manifests/v1.0.0", data=manifest, headers={**bearer(token), **headers})
    assert resp.status == 201, await resp.text()
