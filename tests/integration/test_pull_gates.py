"""Pull gates on the HTTP path, both assemblies: a gate plugged in refuses pulls by tag, by digest, HEAD, and
the platform manifests of a refused index, with 403 DENIED naming the rule; the rest pull as before."""

from __future__ import annotations

import json

from services.core.oci.digest import Digest
from services.core.policy.document import PolicyDocument, parse_data
from services.core.policy.gates import Refusal
from services.core.policy.store import PolicyStore, PolicyTarget
from services.core.storage.meta import ManifestRecord
from services.distribution.keys import GATES
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_INDEX, OCI_MANIFEST, error_code, push_image

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


class AnnotationGate:
    """Refuses manifests annotated `test.refuse` while the policy enables scanning (a stand-in scan gate)."""

    name = "scan"

    def applies(self, policy: PolicyDocument) -> bool:
        return policy.scan.enabled

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        if "test.refuse" in manifest.annotations:
            return Refusal("scan", f"scan.severity_gate={policy.scan.severity_gate}", "CVE-2024-3094 (critical)")
        return None


async def test_gates_refuse_pulls_with_a_reason(assembly: Assembly) -> None:
    client = assembly.client
    gates = client.app[GATES]
    gates.add(AnnotationGate())
    bad, _ = await push_image(client, "gated/app", "bad", annotations={"test.refuse": "yes"})
    good, good_manifest = await push_image(client, "gated/app", "good")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "annotations": {"test.refuse": "yes"},
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": good, "size": len(good_manifest),
                                       "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    resp = await client.put("/v2/gated/app/manifests/multi", data=index, headers={"Content-Type": OCI_INDEX})
    assert resp.status == 201
    # No policy: nothing is gated.
    for ref in ("bad", "good", "multi"):
        assert (await client.get(f"/v2/gated/app/manifests/{ref}", headers=ACCEPT)).status == 200
    store = PolicyStore(assembly.c.docs)
    await store.setup()
    op = store.put_op(PolicyTarget("gated"), parse_data({"scan": {"enabled": True, "severity_gate": "high"}}),
                      actor="test")
    await assembly.c.docs.put(op.collection, op.doc)  # type: ignore[union-attr]
    gates.invalidate(namespace="gated")
    for method, ref in (("GET", "bad"), ("HEAD", "bad"), ("GET", bad), ("GET", "multi")):
        resp = await client.request(method, f"/v2/gated/app/manifests/{ref}", headers=ACCEPT)
        assert resp.status == 403, (method, ref)
        if method == "GET":
            body = await resp.json()
            assert body["errors"][0]["code"] == "DENIED"
            assert "refused by the scan gate (scan.severity_gate=high): CVE-2024-3094" in body["errors"][0]["message"]
    # The index's platform manifest, pulled by digest, is refused with the index; by tag it is the same image.
    resp = await client.get(f"/v2/gated/app/manifests/{good}", headers=ACCEPT)
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert "platform manifest of the index" in (await resp.json())["errors"][0]["message"]
    # Another namespace's pulls are untouched.
    other, _ = await push_image(client, "open/app", "x", annotations={"test.refuse": "yes"})
    assert (await client.get("/v2/open/app/manifests/x", headers=ACCEPT)).status == 200
    assert Digest.parse(other)


async def test_those_who_may_push_read_what_the_gates_hold_back(auth_assembly: Assembly) -> None:
    """A CI job signs or scans an image the gates refuse to its consumers: cosign and notation read it first."""
    from tests.integration.test_auth_oci import Authed, setup_users
    from tests.integration.test_auth_support import admin_key, bearer, token_for

    client = auth_assembly.client
    api, keys = await setup_users(auth_assembly)
    client.app[GATES].add(AnnotationGate())
    admin = Authed(client, bearer(admin_key(auth_assembly)))
    await admin.push_image("ml/gated", "v1")
    await api.call("PUT", "/v1/registry/namespaces/ml/policy", json_body={"scan": {"enabled": True}}, expect=200)
    # Annotate via a re-push: the stand-in gate refuses manifests carrying `test.refuse`.
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (config, b"layer"):
        await admin.push_blob("ml/gated", blob)
    from tests.integration.oci import digest_of, image_manifest

    refused = image_manifest(config, [b"layer"], annotations={"test.refuse": "yes"})
    resp = await client.put("/v2/ml/gated/manifests/held", data=refused,
                            headers={**admin.headers, "Content-Type": OCI_MANIFEST})
    assert resp.status == 201
    reader = bearer(await token_for(client, keys["reader"], "repository:ml/gated:pull"))
    resp = await client.get("/v2/ml/gated/manifests/held", headers={**reader, **ACCEPT})
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    writer = bearer(await token_for(client, keys["writer"], "repository:ml/gated:pull,push"))
    resp = await client.get("/v2/ml/gated/manifests/held", headers={**writer, **ACCEPT})
    assert resp.status == 200 and digest_of(await resp.read()) == digest_of(refused)
    # A writer's pull-only token holds no push: it is a consumer like any other.
    pull_only = bearer(await token_for(client, keys["writer"], "repository:ml/gated:pull"))
    assert (await client.get("/v2/ml/gated/manifests/held", headers={**pull_only, **ACCEPT})).status == 403


class SwitchGate:
    """Refuses while `refusing` holds; a stand-in for a scan gate whose verdict changes with a new report."""

    name = "scan"

    def __init__(self) -> None:
        self.refusing = True

    def applies(self, policy: PolicyDocument) -> bool:
        return policy.scan.enabled

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        return Refusal("scan", "scan.severity_gate=high", "CVE-2024-3094 (critical)") if self.refusing else None


async def test_a_scan_event_refreshes_the_gates_of_this_replica(assembly: Assembly) -> None:
    """Through the event log, as another replica's scanner would announce a new report: within a second, not
    after the cache's TTL."""
    import asyncio
    import time

    from services.core.events.envelope import encode, new_envelope
    from services.core.proto.hanzo.registry.v1 import events_pb2 as pb

    client = assembly.client
    gates = client.app[GATES]
    gate = SwitchGate()
    gates.add(gate)
    digest, _ = await push_image(client, "signed/app", "v1")
    store = PolicyStore(assembly.c.docs)
    await store.setup()
    op = store.put_op(PolicyTarget("signed"), parse_data({"scan": {"enabled": True, "unscanned": "allow"}}),
                      actor="test")
    await assembly.c.docs.put(op.collection, op.doc)  # type: ignore[union-attr]
    gates.invalidate(namespace="signed")
    assert (await client.get("/v2/signed/app/manifests/v1", headers=ACCEPT)).status == 403
    gate.refusing = False  # a new report clears the image ...
    env = new_envelope(pb.ScanCompleted(repository="signed/app", digest=digest), repository="signed/app",
                       actor="scanner")
    await assembly.c.events.publish(assembly.c.settings.topics.scans, "signed/app", encode(env))  # ... and says so
    started = time.monotonic()
    while (await client.get("/v2/signed/app/manifests/v1", headers=ACCEPT)).status != 200:
        assert time.monotonic() - started < 4.0, "the gate kept its stale decision until the TTL"
        await asyncio.sleep(0.05)
    print(f"unblocked {time.monotonic() - started:.2f}s after the event ({assembly.name})")
