"""Push an artifact as a referrer of a manifest (OCI 1.1 `subject`): the scanner's SBOMs, the signer's
server-side signatures. The artifact is an image manifest with `artifactType`, the empty config and the
given blobs as layers, so `oras discover` and the referrers API list it under its subject."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.core.content.registry import PushedManifest, Registry
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.storage.meta import ManifestRecord

EMPTY_CONFIG = b"{}"
CREATED_ANNOTATION = "org.opencontainers.image.created"


@dataclass(frozen=True, slots=True)
class ArtifactBlob:
    """One layer of an artifact. Artifacts the services make (SBOMs, signatures) are small documents."""

    media_type: str
    data: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.data)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _descriptor(media_type: str, digest: Digest, size: int, annotations: Mapping[str, str] | None = None
                ) -> dict[str, object]:
    body: dict[str, object] = {"mediaType": media_type, "digest": str(digest), "size": size}
    if annotations:
        body["annotations"] = dict(annotations)
    return body


def artifact_manifest(subject: ManifestRecord, *, artifact_type: str, blobs: Sequence[ArtifactBlob],
                      annotations: Mapping[str, str] | None = None, now: float | None = None) -> bytes:
    """The manifest bytes of an artifact referring to `subject` (pure)."""
    created = datetime.fromtimestamp(time.time() if now is None else now, UTC).isoformat().replace("+00:00", "Z")
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _descriptor(mt.OCI_EMPTY, Digest.of(EMPTY_CONFIG), len(EMPTY_CONFIG)),
        "layers": [_descriptor(b.media_type, b.digest, len(b.data), b.annotations) for b in blobs]
        or [_descriptor(mt.OCI_EMPTY, Digest.of(EMPTY_CONFIG), len(EMPTY_CONFIG))],
        "subject": _descriptor(subject.media_type, subject.digest, subject.size),
        "annotations": {CREATED_ANNOTATION: created, **(annotations or {})},
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()


async def push_referrer(
    registry: Registry,
    repository: RepositoryName,
    subject: Digest,
    *,
    artifact_type: str,
    blobs: Sequence[ArtifactBlob],
    actor: str,
    annotations: Mapping[str, str] | None = None,
    tags: Sequence[Tag] = (),
) -> PushedManifest:
    """Store `blobs` and an artifact manifest referring to `subject` in `repository`, with its events."""
    record = await registry.resolve(repository, subject)
    for blob in [ArtifactBlob(mt.OCI_EMPTY, EMPTY_CONFIG), *blobs]:
        await registry.put_blob(repository, blob.digest, _once(blob.data), actor=actor)
    data = artifact_manifest(record, artifact_type=artifact_type, blobs=blobs, annotations=annotations)
    return await registry.put_manifest(repository, Digest.of(data), data, mt.OCI_MANIFEST, actor=actor,
                                       extra_tags=tags)
