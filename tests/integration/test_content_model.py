"""The content model in core (services/core/content), as the services use it, on both assemblies."""

from __future__ import annotations

import json

import pytest

from services.core.content.artifacts import ArtifactBlob, push_referrer
from services.core.content.graph import walk
from services.core.content.registry import Registry
from services.core.errors import BlobUnknownError, ManifestUnknownError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.distribution.keys import REGISTRY
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_INDEX, OCI_MANIFEST, push_image

SBOM = "application/vnd.cyclonedx+json"


def _registry(a: Assembly) -> Registry:
    return a.client.app[REGISTRY]


async def _push_index(a: Assembly, repo: str) -> tuple[str, list[str]]:
    children = []
    for arch in ("amd64", "arm64"):
        digest, manifest = await push_image(a.client, repo)
        children.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                         "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    resp = await a.client.put(f"/v2/{repo}/manifests/multi", data=index, headers={"Content-Type": OCI_INDEX})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], [c["digest"] for c in children]  # type: ignore[misc]


async def test_walk_an_index_to_its_platform_images_and_blobs(assembly: Assembly) -> None:
    registry = _registry(assembly)
    index, children = await _push_index(assembly, "content/multi")
    graph = await walk(registry.meta, "content/multi", Digest.parse(index))
    assert graph.parsed.is_index and not graph.missing
    images = list(graph.images())
    assert [str(i.digest) for i in images] == children
    assert [i.platform.architecture for i in images if i.platform] == ["amd64", "arm64"]
    blobs = graph.all_blobs()
    assert len(blobs) == 6 and all(b.size > 0 for b in blobs)  # a config and two layers per image
    assert graph.total_size == sum(b.size for b in blobs) + sum(n.record.size for n in [graph, *images])
    with pytest.raises(ManifestUnknownError):
        await walk(registry.meta, "content/other", Digest.parse(index))


async def test_push_a_referrer_and_list_it_by_artifact_type(assembly: Assembly) -> None:
    registry = _registry(assembly)
    repo = RepositoryName("content/app")
    digest, _ = await push_image(assembly.client, str(repo), "v1")
    sbom = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}).encode()
    pushed = await push_referrer(registry, repo, Digest.parse(digest), artifact_type=SBOM,
                                 blobs=[ArtifactBlob(SBOM, sbom)], actor="scanner")
    assert str(pushed.subject) == digest
    assert [d.digest for d in await registry.referrer_descriptors(repo, Digest.parse(digest), artifact_type=SBOM)
            ] == [pushed.digest]
    assert await registry.referrer_descriptors(repo, Digest.parse(digest), artifact_type="other/type") == []
    # what a client sees: the referrers API and the artifact's layer, byte-exact
    resp = await assembly.client.get(f"/v2/{repo}/referrers/{digest}", params={"artifactType": SBOM})
    listed = (await resp.json())["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in listed] == [(str(pushed.digest), SBOM)]
    artifact = json.loads(await (await assembly.client.get(f"/v2/{repo}/manifests/{pushed.digest}")).read())
    layer = artifact["layers"][0]["digest"]
    assert await (await assembly.client.get(f"/v2/{repo}/blobs/{layer}")).read() == sbom


async def test_stream_a_linked_blob_with_offset_and_length(assembly: Assembly) -> None:
    registry = _registry(assembly)
    repo = RepositoryName("content/blobs")
    digest, manifest = await push_image(assembly.client, str(repo))
    layer = Digest.parse(json.loads(manifest)["layers"][0]["digest"])
    whole = b"".join([c async for c in registry.read_blob(repo, layer)])
    assert Digest.of(whole) == layer
    part = b"".join([c async for c in registry.read_blob(repo, layer, offset=10, length=100)])
    assert part == whole[10:110]
    with pytest.raises(BlobUnknownError):
        _ = [c async for c in registry.read_blob(RepositoryName("content/elsewhere"), layer)]
    assert digest


async def test_delete_a_repository_with_everything_in_it(assembly: Assembly) -> None:
    from services.core.content.repositories import delete_repository
    from services.core.errors import NameUnknownError, TagImmutableError

    registry = _registry(assembly)
    repo = RepositoryName("content/doomed")
    index, children = await _push_index(assembly, str(repo))
    await push_referrer(registry, repo, Digest.parse(index), artifact_type=SBOM,
                        blobs=[ArtifactBlob(SBOM, b"{}")], actor="scanner")
    await push_image(assembly.client, str(repo), "2.0.0")
    await push_image(assembly.client, "content/kept", "v1")
    resp = await assembly.client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    with pytest.raises(TagImmutableError):
        await delete_repository(registry, repo, actor="admin")
    assert await registry.meta.list_tags(str(repo)) == ["2.0.0", "multi"], "nothing is deleted when refused"
    deleted = await delete_repository(registry, repo, actor="admin", force=True)
    assert (deleted.manifests, deleted.tags, deleted.uploads) == (5, 2, 1)
    assert deleted.blobs >= 9
    catalog = await (await assembly.client.get("/v2/_catalog")).json()
    assert catalog["repositories"] == ["content/kept"]
    assert (await assembly.client.get(f"/v2/{repo}/manifests/multi")).status == 404
    assert (await assembly.client.get(f"/v2/{repo}/manifests/{children[0]}")).status == 404
    with pytest.raises(NameUnknownError):
        await delete_repository(registry, repo, actor="admin")
    # what consumers saw: every manifest deleted
    from services.core.events.envelope import decode
    from tests.integration.topics import read_topic

    records = await read_topic(assembly.c.events, assembly.c.settings.topics.manifests, 11, timeout=30, linger=0.5)
    kinds = [decode(r.value).WhichOneof("payload") for r in records]
    assert kinds.count("manifest_deleted") == 5
