"""The management API (/v1/registry/), its OpenAPI document, and the audit log, on both assemblies."""

from __future__ import annotations

import json
import os
import random
import string
from typing import Any

import jsonschema
from referencing.jsonschema import DRAFT202012

from services.core.auth.ratelimit import FailureLimiter
from services.core.events.envelope import decode
from services.distribution.management import ROUTES, openapi_document
from services.distribution.management_api import Requirement, route_of
from services.distribution.management_models import MAX_KEY_LIFETIME
from tests.integration.conftest import Assembly
from tests.integration.test_auth_oci import Authed, token_access
from tests.integration.test_auth_support import Api, admin_key, basic, bearer, grant, new_user
from tests.integration.topics import read_topic


async def test_openapi_document_is_valid_and_served(auth_assembly: Assembly) -> None:
    resp = await auth_assembly.client.get("/v1/registry/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # every route of the implementation is documented, and every documented path is routed
    routes = {r.resource.canonical for r in auth_assembly.client.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith(("/v1/registry", "/token"))}
    assert routes - {"/v1/registry/{tail}"} == set(doc["paths"])
    assert DRAFT202012.create_resource(doc)


async def test_every_management_route_declares_its_requirement(auth_assembly: Assembly) -> None:
    """Each /v1/registry route is made from one route table entry naming who may call it."""
    seen = set()
    for route in auth_assembly.client.app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if not info.startswith("/v1/registry"):
            continue
        declared = route_of(route.handler)
        assert declared is not None, f"{route.method} {info} declares no authorization requirement"
        assert declared.requirement in Requirement
        seen.add((route.method, declared.template))
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["x-hanzo-access"] in {r.value for r in Requirement}
            if path.startswith("/v1/registry"):
                assert (method.upper(), path) in seen
    # the security rules of key management, in the table
    keys = {(r.method, r.path): r.requirement for r in ROUTES if r.path.startswith("/users/{user}/keys")}
    assert set(keys.values()) == {Requirement.KEY_MANAGER} and len(keys) == 3


async def test_request_bodies_are_typed_and_bounded(auth_assembly: Assembly) -> None:
    admin = Api(auth_assembly.client, bearer(admin_key(auth_assembly)))
    keys = "/v1/registry/users/admin/keys"
    for value in (10**309, 2**64, 0, -1, MAX_KEY_LIFETIME + 1, "3600", True, 1.5):
        answer = await admin.call("POST", keys, json_body={"expires_in_seconds": value}, expect=400)
        assert answer["errors"][0]["message"].startswith("field 'expires_in_seconds': "), answer
        assert answer["errors"][0]["code"] == "INVALID_REQUEST"
    for raw in (b'{"expires_in_seconds": 1e309}', b'{"expires_in_seconds": NaN}'):
        answer = await admin.call("POST", keys, raw=raw, expect=400)
        assert "expires_in_seconds" in answer["errors"][0]["message"]
    await admin.call("POST", keys, raw=b'{"expires_in_seconds": 1' + b"0" * 5000 + b"}", expect=400)
    await admin.call("POST", keys, json_body={"expires_in_seconds": MAX_KEY_LIFETIME}, expect=201)
    for body, field in [({"name": "x" * 201}, "name"), ({"namespaces": ["ml"] * 101}, "namespaces"),
                        ({"namespaces": [1]}, "namespaces.0"), ({"role": "god"}, "role"),
                        ({"other": 1}, "other"), ({"name": {"a": [[[]]]}}, "name")]:
        answer = await admin.call("POST", keys, json_body=body, expect=400)
        assert answer["errors"][0]["message"].startswith(f"field {field!r}: "), answer
    # deep nesting, wrong shapes and broken JSON are 400s, never 500s
    for raw in (b"[" * 60_000, b'{"name": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", b"[]", b"null", b"1", b"{",
                b"\xff"):
        await admin.call("POST", keys, raw=raw, expect=400)
    await admin.call("POST", "/v1/registry/users", json_body={"name": "bob", "admin": "true"}, expect=400)
    await admin.call("POST", "/v1/registry/ml/permissions", json_body={"role": "reader", "user": "admin",
                                                                      "team": "x"}, expect=400)
    await admin.call("GET", "/v1/registry/users?limit=" + "9" * 400, expect=400)
    await admin.call("GET", "/v1/registry/audit?limit=0", expect=400)


async def test_users_teams_keys_and_permissions(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    admin = Api(client, bearer(admin_key(auth_assembly)))
    bob_key = await new_user(admin, "bob", email="bob@example.com")
    await admin.call("POST", "/v1/registry/users", json_body={"name": "bob"}, expect=409)
    await admin.call("POST", "/v1/registry/users", json_body={"name": "Bad Name"}, expect=400)
    await admin.call("POST", "/v1/registry/users", json_body={"name": "x", "extra": 1}, expect=400)
    await admin.call("POST", "/v1/registry/users", raw=b"not json", expect=400)
    users = await admin.call("GET", "/v1/registry/users", expect=200)
    assert [u["name"] for u in users["users"]] == ["admin", "bob"]
    assert (await admin.call("GET", "/v1/registry/users/bob", expect=200))["email"] == "bob@example.com"
    await admin.call("GET", "/v1/registry/users/nobody", expect=404)
    # bob manages his own keys and reads himself, nothing else
    bob = Api(client, bearer(bob_key))
    assert (await bob.call("GET", "/v1/registry/me", expect=200))["name"] == "bob"
    await bob.call("GET", "/v1/registry/users", expect=403)
    await bob.call("GET", "/v1/registry/users/admin", expect=403)
    await bob.call("POST", "/v1/registry/users", json_body={"name": "eve"}, expect=403)
    created = await bob.call("POST", "/v1/registry/users/bob/keys",
                             json_body={"name": "ci", "expires_in_seconds": 3600, "namespaces": ["ml"],
                                        "role": "writer"}, expect=201)
    assert created["key"].startswith(f"hzr_{created['prefix']}_") and created["expires"]
    listed = await bob.call("GET", "/v1/registry/users/bob/keys", expect=200)
    assert {k["prefix"] for k in listed["keys"]} >= {created["prefix"]}
    assert created["key"] not in json.dumps(listed)
    await bob.call("DELETE", f"/v1/registry/users/bob/keys/{created['prefix']}", expect=204)
    await bob.call("DELETE", "/v1/registry/users/bob/keys/000000000000", expect=404)
    await bob.call("POST", "/v1/registry/users/admin/keys", json_body={}, expect=403)
    await Api(client, {}).call("GET", "/v1/registry/me", expect=401)
    # teams, memberships, grants (the product's example) and their revocation
    await admin.call("POST", "/v1/registry/teams", json_body={"name": "ml-engineers", "description": "ML"},
                     expect=201)
    await admin.call("PUT", "/v1/registry/teams/ml-engineers/members/bob", expect=204)
    await admin.call("PUT", "/v1/registry/teams/ml-engineers/members/nobody", expect=404)
    team = await admin.call("GET", "/v1/registry/teams/ml-engineers", expect=200)
    assert team["members"] == ["bob"]
    assert (await admin.call("GET", "/v1/registry/teams", expect=200))["teams"][0]["name"] == "ml-engineers"
    writer_grant = await admin.call("POST", "/v1/registry/ml/permissions",
                                    json_body={"team": "ml-engineers", "role": "writer"}, expect=201)
    assert writer_grant["team"] == "ml-engineers" and writer_grant["role"] == "writer"
    await admin.call("POST", "/v1/registry/ml/permissions", json_body={"team": "nope", "role": "writer"}, expect=404)
    await admin.call("POST", "/v1/registry/ml/permissions", json_body={"team": "ml-engineers", "role": "god"},
                     expect=400)
    await admin.call("POST", "/v1/registry/ml/permissions", json_body={"role": "reader"}, expect=400)
    repo_grant = await grant(admin, "ml", "admin", user="bob", repository="llama")
    assert repo_grant["repository"] == "ml/llama"
    await Authed(client, bearer(bob_key)).push_image("ml/app", "v1")
    await bob.call("GET", "/v1/registry/ml/permissions", expect=403)  # repository admin, not namespace admin
    perms = await admin.call("GET", "/v1/registry/ml/permissions", expect=200)
    assert {g["id"] for g in perms["grants"]} == {writer_grant["id"], repo_grant["id"]}
    await admin.call("DELETE", f"/v1/registry/ml/permissions/{writer_grant['id']}", expect=204)
    await admin.call("DELETE", f"/v1/registry/ml/permissions/{writer_grant['id']}", expect=404)
    resp = await client.post("/v2/ml/app/blobs/uploads/", headers=bearer(bob_key))
    assert resp.status == 403
    # a namespace admin manages its namespace, not others
    await grant(admin, "ml", "admin", user="bob")
    await bob.call("GET", "/v1/registry/ml/permissions", expect=200)
    await bob.call("PUT", "/v1/registry/ml/visibility", json_body={"public": True, "repository": "app"}, expect=200)
    await bob.call("GET", "/v1/registry/web/permissions", expect=403)
    assert (await client.get("/v2/ml/app/manifests/v1")).status == 200
    # deleting users and teams takes their grants and keys along
    await admin.call("DELETE", "/v1/registry/teams/ml-engineers", expect=204)
    await admin.call("DELETE", "/v1/registry/users/bob", expect=204)
    await admin.call("DELETE", "/v1/registry/users/admin", expect=400)
    assert (await client.get("/v2/", headers=bearer(bob_key))).status == 401
    assert (await admin.call("GET", "/v1/registry/ml/permissions", expect=200))["grants"] == []
    resp = await client.get("/v1/registry/no/such/endpoint", headers=admin.headers)
    assert resp.status == 404 and (await resp.json())["errors"][0]["code"] == "NOT_FOUND"


async def test_namespace_routes_have_an_unambiguous_spelling(auth_assembly: Assembly) -> None:
    """A namespace named like a management route (`users`) is managed under /v1/registry/namespaces/."""
    admin = Api(auth_assembly.client, bearer(admin_key(auth_assembly)))
    await new_user(admin, "carol")
    created = await admin.call("POST", "/v1/registry/namespaces/users/permissions",
                               json_body={"user": "carol", "role": "reader"}, expect=201)
    assert created["namespace"] == "users"
    listed = await admin.call("GET", "/v1/registry/namespaces/users/permissions", expect=200)
    assert [g["id"] for g in listed["grants"]] == [created["id"]]
    # the short spelling of that GET is the route of user "permissions"
    await admin.call("GET", "/v1/registry/users/permissions", expect=404)
    await admin.call("PUT", "/v1/registry/namespaces/users/visibility", json_body={"public": True}, expect=200)
    await admin.call("DELETE", f"/v1/registry/namespaces/users/permissions/{created['id']}", expect=204)
    assert (await admin.call("GET", "/v1/registry/namespaces/users/permissions", expect=200))["grants"] == []


async def test_audit_log_records_changes_and_failures(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    admin = Api(client, bearer(admin_key(auth_assembly)))
    bob_key = await new_user(admin, "bob")
    await grant(admin, "ml", "reader", user="bob")
    pusher = Authed(client, bearer(admin_key(auth_assembly)))
    digest = await pusher.push_image("ml/app", "latest")
    await pusher.push_image("ml/app", "latest")  # the tag moves
    assert (await client.delete("/v2/ml/app/manifests/latest", headers=pusher.headers)).status == 202
    assert (await client.delete(f"/v2/ml/app/manifests/{digest}", headers=pusher.headers)).status == 202
    resp = await client.put("/v2/ml/app/manifests/evil", data=b"{}", headers=basic("bob", bob_key))
    assert resp.status == 403
    assert (await client.get("/v2/", headers=basic("bob", "hzr_000000000000_" + "0" * 64))).status == 401
    listed = await admin.call("GET", "/v1/registry/users/bob/keys", expect=200)
    await admin.call("DELETE", f"/v1/registry/users/bob/keys/{listed['keys'][0]['prefix']}", expect=204)
    await Api(client, bearer(bob_key)).call("GET", "/v1/registry/audit", expect=401)
    page = await admin.call("GET", "/v1/registry/audit?limit=1000", expect=200)
    entries = page["entries"]
    actions = [(e["actor"], e["action"], e["resource"], e["outcome"]) for e in entries]
    assert ("admin", "apikey.create", f"apikey:{listed['keys'][0]['prefix']}", "success") in actions
    assert ("admin", "permission.grant", "namespace:ml", "success") in actions
    pushes = [e for e in entries if e["action"] == "push" and e["outcome"] == "success"]
    assert len(pushes) == 2 and all(e["detail"]["reference"] == "latest" for e in pushes)
    assert ("admin", "tag.delete", "repository:ml/app", "success") in actions
    assert ("admin", "delete", "repository:ml/app", "success") in actions
    assert ("bob", "push", "repository:ml/app", "denied") in actions
    assert ("bob", "auth.login", "registry", "failure") in actions
    assert ("admin", "apikey.revoke", f"apikey:{listed['keys'][0]['prefix']}", "success") in actions
    assert all(e["source_address"] == "127.0.0.1" for e in entries if e["actor"] != "system")
    assert bob_key not in json.dumps(entries) and admin_key(auth_assembly) not in json.dumps(entries)
    # paging and filters
    first = await admin.call("GET", "/v1/registry/audit?limit=2", expect=200)
    assert len(first["entries"]) == 2 and first["next"]
    second = await admin.call("GET", f"/v1/registry/audit?limit=2&after={first['next']}", expect=200)
    assert second["entries"][0]["id"] > first["entries"][1]["id"]
    only = await admin.call("GET", "/v1/registry/audit?actor=bob&action=push", expect=200)
    assert [e["outcome"] for e in only["entries"]] == ["denied"]
    await Api(client, basic("admin", admin_key(auth_assembly))).call("GET", "/v1/registry/audit", expect=200)
    # each entry is an AuditEntry event on the audit topic
    topic = auth_assembly.c.settings.topics.audit
    seen = [decode(r.value).audit_entry for r in await read_topic(auth_assembly.c.events, topic, len(entries))]
    # (ordered per key only: the key is the repository, or the resource)
    assert sorted((e.actor, e.action, e.resource, e.source_address) for e in seen) == sorted(
        (e["actor"], e["action"], e["resource"], e["source_address"]) for e in entries)


# A schema-driven fuzz of the management API: random (valid, nearly valid and invalid) requests from the
# OpenAPI document; every answer must be documented, match its schema, and never be a 5xx.

_WEIRD = ["", "a", "bob", "admin", "ml-engineers", "ml", "x" * 300, "..", "%2e%2e", "é", "a b", "*", "null",
          "0", "-1", "hzr_000000000000_" + "0" * 64, "user:bob@ml", "\u202e", "a/b"]


# Path parameters are non-empty single segments (an empty or "/" one would name another endpoint).
_PATH_SAFE = [w for w in _WEIRD if w and "/" not in w and w not in ("..", "%2e%2e")]


def _value(schema: dict[str, Any], rnd: random.Random, doc: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _value(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], rnd, doc)
    roll = rnd.random()
    if roll < 0.1:
        return rnd.choice([None, 1, -5, 1.5, True, "", [], {}, "x" * 2000, ["a"], {"a": 1}])
    kind = schema.get("type", "string")
    kind = kind[0] if isinstance(kind, list) else kind
    if "enum" in schema:
        return rnd.choice([v for v in schema["enum"] if v is not None] + ["bogus"])
    if kind == "object":
        props = schema.get("properties", {})
        body = {k: _value(v, rnd, doc) for k, v in props.items() if rnd.random() < 0.7}
        if rnd.random() < 0.1:
            body["unexpected"] = 1
        return body
    if kind == "array":
        return [_value(schema.get("items", {}), rnd, doc) for _ in range(rnd.randint(0, 3))]
    if kind == "integer":
        return rnd.choice([0, 1, 60, 3600, -1, 2**40, 2**70])
    if kind == "boolean":
        return rnd.choice([True, False])
    if rnd.random() < 0.5:
        return rnd.choice(_WEIRD)
    return "".join(rnd.choice(string.ascii_lowercase + string.digits + "-._") for _ in range(rnd.randint(1, 12)))


async def test_fuzz_management_api_against_its_openapi_document(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    doc = openapi_document()
    admin = Api(client, bearer(admin_key(auth_assembly)))
    bob_key = await new_user(admin, "bob")
    await admin.call("POST", "/v1/registry/teams", json_body={"name": "ml-engineers"}, expect=201)
    # The bad-credential callers would soon hit the failed-login limit of 127.0.0.1 (tested elsewhere).
    token_access(auth_assembly).limiter = FailureLimiter(limit=1_000_000, window_seconds=60)
    callers = [admin, Api(client, bearer(bob_key)), Api(client, {}), Api(client, bearer("garbage")),
               Api(client, basic("admin", "wrong"))]
    rnd = random.Random(int(os.environ.get("HANZO_FUZZ_SEED", "4")))
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
                  if path.startswith("/v1/registry/") and not path.endswith("openapi.json")]
    for _ in range(int(os.environ.get("HANZO_FUZZ_REQUESTS", "400"))):
        path, method, op = rnd.choice(operations)
        concrete = path
        for param in op.get("parameters", []):
            if param["in"] == "path":
                value = rnd.choice([*_WEIRD[1:6], rnd.choice(_PATH_SAFE)])
                concrete = concrete.replace("{" + param["name"] + "}", value)
        query = []
        for param in op.get("parameters", []):
            if param["in"] == "query" and rnd.random() < 0.4:
                query.append(f"{param['name']}={_value(param['schema'], rnd, doc)}")
        url = concrete + ("?" + "&".join(query) if query else "")
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        caller = admin if rnd.random() < 0.7 else rnd.choice(callers[1:])
        if body is None:
            await caller.call(method.upper(), url)
        elif rnd.random() < 0.05:
            await caller.call(method.upper(), url, raw=rnd.choice([b"{", b"[]", b"\xff\xfe", b"null"]))
        else:
            await caller.call(method.upper(), url, json_body=_value(body, rnd, doc))
    # A refusal of a known user, whichever operations the random walk drew (it may have deleted bob).
    refused = Api(client, bearer(await new_user(admin, "fuzz-" + os.urandom(4).hex())))
    await refused.call("GET", "/v1/registry/users", expect=403)
    callers.append(refused)
    # the fuzz reached real outcomes, not only refusals
    statuses = {s for c in callers for _, _, s in c.seen}
    assert {200, 201, 400, 401, 403, 404} <= statuses
