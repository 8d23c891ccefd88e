"""DELETE /v1/registry/repositories/{repository}: namespace admins delete a repository with everything in it;
immutable tags need a registry admin's force; it is audited and leaves the catalog (both assemblies)."""

from __future__ import annotations

from tests.integration.conftest import Assembly
from tests.integration.test_auth_oci import Authed, setup_users
from tests.integration.test_auth_support import Api, admin_key, bearer, grant, new_user


async def test_namespace_admins_delete_repositories(auth_assembly: Assembly) -> None:
    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/old", "latest")
    await admin.push_image("ml/old", "other")
    await admin.push_image("ml/keep", "latest")
    await admin.push_image("ml/release", "1.0.0")
    owner_key = await new_user(api, "owner")
    await grant(api, "ml", "admin", user="owner")
    owner = Api(client, bearer(owner_key))
    writer = Api(client, bearer(keys["writer"]))
    await writer.call("DELETE", "/v1/registry/repositories/ml/old", expect=403)
    deleted = await owner.call("DELETE", "/v1/registry/repositories/ml/old", expect=200)
    assert deleted == {"repository": "ml/old", "manifests": 2, "tags": 2, "blobs": 4, "uploads": 0, "forced": False}
    await owner.call("DELETE", "/v1/registry/repositories/ml/old", expect=404)
    assert (await client.get("/v2/ml/old/manifests/latest", headers=bearer(keys["writer"]))).status == 404
    catalog = await (await client.get("/v2/_catalog", headers=bearer(admin_key(auth_assembly)))).json()
    assert "ml/old" not in catalog["repositories"] and "ml/keep" in catalog["repositories"]
    # Immutable tags: refused to the namespace admin, forced by a registry admin only.
    await owner.call("DELETE", "/v1/registry/repositories/ml/release", expect=409)
    forcing_owner = Api(client, {**bearer(owner_key), "X-Hanzo-Force": "true"})
    await forcing_owner.call("DELETE", "/v1/registry/repositories/ml/release", expect=403)
    forcing_admin = Api(client, {**bearer(admin_key(auth_assembly)), "X-Hanzo-Force": "true"})
    forced = await forcing_admin.call("DELETE", "/v1/registry/repositories/ml/release", expect=200)
    assert forced["forced"] is True and forced["tags"] == 1
    entries = (await api.call("GET", "/v1/registry/audit?action=repository.delete", expect=200))["entries"]
    assert [(e["actor"], e["resource"], e["detail"].get("forced")) for e in entries] == [
        ("owner", "repository:ml/old", None), ("admin", "repository:ml/release", "true")]
    # A repository's policy route is not shadowed by the deletion route.
    await owner.call("DELETE", "/v1/registry/repositories/ml/keep/policy", expect=404)
    assert (await client.get("/v2/ml/keep/manifests/latest", headers=bearer(keys["writer"]))).status == 200
