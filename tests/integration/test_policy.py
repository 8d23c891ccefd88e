"""Policy documents over the management API, on both assemblies: per namespace and per repository, JSON and
YAML, the effective policy, who may read and write them, and the audit entry and event of every change."""

from __future__ import annotations

import yaml

from services.core.events.envelope import decode
from tests.integration.conftest import Assembly
from tests.integration.test_auth_support import Api, admin_key, bearer, grant, new_user, token_for
from tests.integration.topics import read_topic

R = "/v1/registry"
NS_POLICY = {"scan": {"enabled": True, "severity_gate": "high", "ignore": ["CVE-2024-0000"]},
             "retention": {"keep_last": 5}}
REPO_YAML = b"""# .hanzo/registry.yaml
scan: {severity_gate: critical, ignore: []}
tags: {immutable: ["release-*"], mutable: [latest]}
"""


async def _raw(api: Api, method: str, path: str, *, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    resp = await api.client.request(method, path, data=data, headers={**api.headers, **(headers or {})})
    return resp.status, resp.content_type, await resp.text()


async def test_namespace_and_repository_policies(auth_assembly: Assembly) -> None:
    admin = Api(auth_assembly.client, bearer(admin_key(auth_assembly)))
    bob = Api(auth_assembly.client, bearer(await new_user(admin, "bob")))
    await grant(admin, "ml", "admin", user="bob")
    await admin.call("GET", f"{R}/namespaces/ml/policy", expect=404)
    await admin.call("GET", f"{R}/repositories/ml/llama/policy", expect=404)
    # a namespace admin sets the namespace's policy (JSON) and a repository's (YAML)
    assert await bob.call("PUT", f"{R}/namespaces/ml/policy", json_body=NS_POLICY, expect=200) == NS_POLICY
    assert await bob.call("GET", f"{R}/namespaces/ml/policy", expect=200) == NS_POLICY
    status, _, text = await _raw(bob, "PUT", f"{R}/repositories/ml/llama/policy", data=REPO_YAML,
                                 headers={"Content-Type": "application/yaml"})
    assert status == 200, text
    stored = await bob.call("GET", f"{R}/repositories/ml/llama/policy", expect=200)
    assert stored == {"scan": {"severity_gate": "critical", "ignore": []},
                      "tags": {"immutable": ["release-*"], "mutable": ["latest"]}}
    status, content_type, text = await _raw(bob, "GET", f"{R}/repositories/ml/llama/policy",
                                            headers={"Accept": "application/yaml"})
    assert (status, content_type) == (200, "application/yaml") and yaml.safe_load(text) == stored
    # the effective policy: default <- namespace <- repository, field by field; lists replace
    got = await bob.call("GET", f"{R}/repositories/ml/llama/policy?effective=true", expect=200)
    assert got["scan"] == {"enabled": True, "severity_gate": "critical", "ignore": [], "unscanned": "allow"}
    assert got["retention"] == {"untagged_after_days": 7, "keep_last": 5}
    assert got["tags"] == {"immutable": ["release-*"], "mutable": ["latest"]}
    other = await bob.call("GET", f"{R}/repositories/ml/other/policy?effective=true", expect=200)
    assert other["scan"]["ignore"] == ["CVE-2024-0000"] and other["tags"]["immutable"] == []
    # PUT replaces: fields left out inherit again
    await bob.call("PUT", f"{R}/repositories/ml/llama/policy", json_body={"retention": {"keep_last": 1}}, expect=200)
    got = await bob.call("GET", f"{R}/repositories/ml/llama/policy?effective=true", expect=200)
    assert got["scan"]["severity_gate"] == "high" and got["retention"]["keep_last"] == 1
    # delete
    await bob.call("DELETE", f"{R}/repositories/ml/llama/policy", expect=204)
    await bob.call("DELETE", f"{R}/repositories/ml/llama/policy", expect=404)
    await bob.call("GET", f"{R}/repositories/ml/llama/policy", expect=404)
    assert (await bob.call("GET", f"{R}/repositories/ml/llama/policy?effective=true", expect=200))["retention"] == {
        "untagged_after_days": 7, "keep_last": 5}


async def test_bad_documents_are_refused_naming_the_field(auth_assembly: Assembly) -> None:
    admin = Api(auth_assembly.client, bearer(admin_key(auth_assembly)))
    path = f"{R}/namespaces/ml/policy"
    for body, field in [
        ({"scan": {"severity_gate": "severe"}}, "scan.severity_gate"),
        ({"scan": {"enabled": "yes"}}, "scan.enabled"),
        ({"scanning": {}}, "scanning"),
        ({"retention": {"keep_last": 10**309}}, "retention.keep_last"),
        ({"tags": {"immutable": ["x" * 500]}}, "tags.immutable.0"),
        ({"signing": {"keys": ["not a key"]}}, "signing.keys.0"),
    ]:
        answer = await admin.call("PUT", path, json_body=body, expect=400)
        assert f"field {field!r}" in answer["errors"][0]["message"], answer
    for raw in [b"[" * 50_000, b"{", b"retention: {keep_last: 1e400}"]:
        await admin.call("PUT", path, raw=raw, expect=400)
    status, _, text = await _raw(admin, "PUT", path, data=b"a: &x [1]\nb: *x\n",
                                 headers={"Content-Type": "application/yaml"})
    assert status == 400 and "aliases" in text
    status, _, text = await _raw(admin, "PUT", path, data=b"scan: {unscanned: maybe}",
                                 headers={"Content-Type": "application/yaml"})
    assert status == 400 and "field 'scan.unscanned'" in text
    await admin.call("PUT", f"{R}/namespaces/Bad..Name/policy", json_body={}, expect=400)
    await admin.call("GET", f"{R}/repositories/ml/UPPER/policy", expect=400)
    await admin.call("GET", f"{R}/repositories/ml/x/policy?effective=maybe", expect=400)
    await admin.call("GET", f"{R}/namespaces/ml/policy", expect=404)  # nothing was stored


async def test_who_may_read_and_write_policies(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    admin = Api(client, bearer(admin_key(auth_assembly)))
    keys = {name: await new_user(admin, name) for name in ("owner", "writer", "reader", "repo_reader", "stranger")}
    await grant(admin, "ml", "admin", user="owner")
    await grant(admin, "ml", "writer", user="writer")
    await grant(admin, "ml", "reader", user="reader")
    await grant(admin, "ml", "reader", user="repo_reader", repository="llama")
    as_ = {name: Api(client, bearer(key)) for name, key in keys.items()}
    ns, repo, other = f"{R}/namespaces/ml/policy", f"{R}/repositories/ml/llama/policy", f"{R}/repositories/ml/x/policy"
    await as_["owner"].call("PUT", ns, json_body={"scan": {"enabled": True}}, expect=200)
    await as_["owner"].call("PUT", repo, json_body={"scan": {"enabled": False}}, expect=200)
    for name in ("writer", "reader", "repo_reader", "stranger"):
        await as_[name].call("PUT", ns, json_body={}, expect=403)
        await as_[name].call("PUT", repo, json_body={}, expect=403)
        await as_[name].call("DELETE", repo, expect=403)
    for name in ("owner", "writer", "reader", "repo_reader"):
        await as_[name].call("GET", ns, expect=200)  # any role in the namespace
        await as_[name].call("GET", repo, expect=200)  # pull on the repository
    await as_["repo_reader"].call("GET", other, expect=403)  # no pull on ml/x
    await as_["stranger"].call("GET", ns, expect=403)
    await as_["stranger"].call("GET", repo, expect=403)
    await Api(client, {}).call("GET", ns, expect=401)
    # an owner of ml manages nothing of another namespace
    await as_["owner"].call("PUT", f"{R}/namespaces/web/policy", json_body={}, expect=403)
    # a registry token reads (with pull in its scope) and never writes
    token = await token_for(client, keys["owner"], "repository:ml/llama:pull", user="owner")
    as_token = Api(client, bearer(token))
    await as_token.call("GET", repo, expect=200)
    denied = await as_token.call("PUT", repo, json_body={}, expect=403)
    assert denied["errors"][0]["code"] == "DENIED"
    await as_token.call("DELETE", ns, expect=403)
    # a key limited to a role below admin cannot write either
    limited = await as_["owner"].call("POST", f"{R}/users/owner/keys", json_body={"role": "writer"}, expect=201)
    await Api(client, bearer(limited["key"])).call("PUT", ns, json_body={}, expect=403)
    await Api(client, bearer(limited["key"])).call("GET", ns, expect=200)


async def test_every_change_is_audited_and_announced(auth_assembly: Assembly) -> None:
    admin = Api(auth_assembly.client, bearer(admin_key(auth_assembly)))
    await admin.call("PUT", f"{R}/namespaces/ml/policy", json_body={"scan": {"enabled": True}}, expect=200)
    await admin.call("PUT", f"{R}/repositories/ml/app/policy", json_body={}, expect=200)
    await admin.call("DELETE", f"{R}/repositories/ml/app/policy", expect=204)
    audit = await admin.call("GET", f"{R}/audit?action=policy.set", expect=200)
    assert [(e["actor"], e["resource"]) for e in audit["entries"]] == [
        ("admin", "namespace:ml"), ("admin", "repository:ml/app")]
    deleted = await admin.call("GET", f"{R}/audit?action=policy.delete", expect=200)
    assert [e["resource"] for e in deleted["entries"]] == ["repository:ml/app"]
    records = await read_topic(auth_assembly.c.events, auth_assembly.c.settings.topics.manifests, 3)
    changes = [decode(r.value).policy_changed for r in records]
    assert sorted((c.namespace, c.repository, c.actor, c.deleted) for c in changes) == [
        ("ml", "", "admin", False), ("ml", "ml/app", "admin", False), ("ml", "ml/app", "admin", True)]
    assert {r.key for r in records} == {"ns:ml", "ml/app"}
