"""A policy's tag rules apply to pushes and deletes of its namespace (issue 8, item 4), on both assemblies:
`immutable` globs freeze tags, `mutable` globs exempt tags from the registry's rules, other namespaces keep
the registry's rules, and a policy change applies at once."""

from __future__ import annotations

from tests.integration.conftest import Assembly
from tests.integration.test_auth_oci import Authed
from tests.integration.test_auth_support import Api, admin_key, bearer


async def _push_twice(client: Authed, repo: str, tag: str) -> int:
    await client.push_image(repo, tag)
    try:
        await client.push_image(repo, tag)
    except AssertionError as exc:
        return 409 if "409" in str(exc) else 500
    return 201


async def test_a_namespace_policy_decides_which_tags_are_immutable(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api = Api(client, bearer(admin_key(auth_assembly)))
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    assert await _push_twice(admin, "ops/app", "release-a") == 201, "mutable before the policy"
    await api.call("PUT", "/v1/registry/namespaces/ops/policy",
                   json_body={"tags": {"immutable": ["release-*"], "mutable": ["1.*"]}}, expect=200)
    assert await _push_twice(admin, "ops/app", "release-b") == 409
    resp = await client.delete("/v2/ops/app/manifests/release-b", headers=admin.headers)
    assert resp.status == 409 and "policy immutable release-*" in (await resp.json())["errors"][0]["message"]
    assert await _push_twice(admin, "ops/app", "1.0.0") == 201, "the policy's mutable glob exempts semver"
    assert await _push_twice(admin, "dev/app", "1.0.0") == 409, "other namespaces keep the registry's rules"
    await api.call("DELETE", "/v1/registry/namespaces/ops/policy", expect=204)
    assert await _push_twice(admin, "ops/app", "release-c") == 201, "the change applies at once"
