"""PullGates: ordered gates over the effective policy, decisions cached per digest, parents of platform
manifests, invalidation. Pure: fake gates, policies and clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.core.errors import DeniedError
from services.core.oci.digest import Digest
from services.core.policy.document import PolicyDocument, parse_data
from services.core.policy.gates import PullGates, Refusal
from services.core.storage.meta import ManifestRecord

IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def record(name: str, media_type: str = IMAGE, references: Sequence[str] = ()) -> ManifestRecord:
    data = name.encode()
    return ManifestRecord("ns/app", Digest.of(data), media_type, len(data), data, references=tuple(references))


class FakeScanGate:
    name = "scan"

    def __init__(self, refused: set[Digest]) -> None:
        self.refused = refused
        self.checked: list[Digest] = []

    def applies(self, policy: PolicyDocument) -> bool:
        return policy.scan.enabled

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        self.checked.append(manifest.digest)
        if manifest.digest in self.refused:
            return Refusal("scan", f"scan.severity_gate={policy.scan.severity_gate}", "CVE-2024-3094 (critical)")
        return None


class World:
    def __init__(self, policy: dict[str, object]) -> None:
        self.policy = parse_data(policy)
        self.policy_reads = 0
        self.parents: dict[Digest, list[ManifestRecord]] = {}
        self.now = 0.0

    async def policies(self, namespace: str, repository: str) -> PolicyDocument:
        self.policy_reads += 1
        return self.policy

    async def parents_of(self, repository: str, manifest: ManifestRecord) -> list[ManifestRecord]:
        return self.parents.get(manifest.digest, [])

    def gates(self, *gates: FakeScanGate) -> PullGates:
        return PullGates(list(gates), self.policies, self.parents_of, ttl_seconds=5.0, clock=lambda: self.now)


async def test_no_gates_costs_nothing() -> None:
    world = World({})
    await world.gates().check("ns", "ns/app", record("a"))
    assert world.policy_reads == 0


async def test_a_refusal_names_the_gate_the_rule_and_the_reason() -> None:
    bad = record("bad")
    world = World({"scan": {"enabled": True, "severity_gate": "high"}})
    gates = world.gates(FakeScanGate({bad.digest}))
    await gates.check("ns", "ns/app", record("good"))
    with pytest.raises(DeniedError) as exc:
        await gates.check("ns", "ns/app", bad)
    assert exc.value.status == 403 and exc.value.code == "DENIED"
    assert exc.value.message == (f"pull of ns/app@{bad.digest} refused by the scan gate (scan.severity_gate=high): "
                                 "CVE-2024-3094 (critical)")


async def test_a_gate_the_policy_leaves_off_is_not_run() -> None:
    bad = record("bad")
    gate = FakeScanGate({bad.digest})
    await World({"scan": {"enabled": False}}).gates(gate).check("ns", "ns/app", bad)
    assert gate.checked == []


async def test_decisions_are_cached_until_invalidated_or_expired() -> None:
    bad = record("bad")
    world = World({"scan": {"enabled": True}})
    gate = FakeScanGate(set())
    gates = world.gates(gate)
    for _ in range(3):
        await gates.check("ns", "ns/app", bad)
    assert gate.checked == [bad.digest] and world.policy_reads == 1
    gate.refused.add(bad.digest)  # a new scan report ...
    gates.invalidate(digest=str(bad.digest))  # ... and its event
    with pytest.raises(DeniedError):
        await gates.check("ns", "ns/app", bad)
    gate.refused.clear()
    world.now += 5.1  # another replica's change, seen within the TTL
    await gates.check("ns", "ns/app", bad)
    world.policy = parse_data({"scan": {"enabled": False}})
    gates.invalidate(namespace="ns")
    gate.refused.add(bad.digest)
    await gates.check("ns", "ns/app", bad)  # the policy turned the gate off


async def test_a_platform_manifest_of_a_refused_index_is_refused() -> None:
    child, other = record("child"), record("other")
    index = record("index", INDEX, references=[str(child.digest)])
    world = World({"scan": {"enabled": True}})
    world.parents[child.digest] = [index]
    gates = world.gates(FakeScanGate({index.digest}))
    with pytest.raises(DeniedError) as exc:
        await gates.check("ns", "ns/app", child)
    assert f"platform manifest of the index {index.digest}" in exc.value.message
    await gates.check("ns", "ns/app", other)
