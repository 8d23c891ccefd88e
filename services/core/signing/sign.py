"""Server-side signing with a managed key, in cosign's tag scheme: the simple-signing payload of the image
digest as a layer of the manifest tagged `sha256-<hex>.sig`, its signature in the layer's
`dev.cosignproject.cosign/signature` annotation, so `cosign verify --key <public key>` accepts it.

One `.sig` manifest holds every signature of an image (cosign's layout): a new signature is appended to the
layers already there. Signing an image again with the same key version returns the signature made before.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from services.core.content.registry import Registry
from services.core.errors import ConflictError, DeniedError, ManifestUnknownError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.signing.artifacts import COSIGN_SIGNATURE_ANNOTATION, COSIGN_SIMPLESIGNING, signature_tag
from services.core.signing.keys import ManagedKeys, parse_key_uri

KEY_ID_ANNOTATION = "dev.hanzo.registry/key-id"
KEY_URI_ANNOTATION = "dev.hanzo.registry/key"
COSIGN_TYPE = "cosign container image signature"
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Signed:
    image: Digest
    signature_digest: Digest
    """Digest of the `.sig` manifest holding the signature."""
    key_id: str
    uri: str
    created: bool
    """False when the image already carried a signature by this key version."""


def simple_signing_payload(digest: Digest, docker_reference: str, *, key_uri: str = "") -> bytes:
    """Cosign's payload for `digest` (sigstore/sigstore pkg/signature/payload)."""
    body: dict[str, Any] = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": str(digest)},
            "type": COSIGN_TYPE,
        },
        "optional": {"creator": "hanzo-registry", **({"key": key_uri} if key_uri else {})},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sign_bytes(private: PrivateKeyTypes, data: bytes) -> bytes:
    """A signature as cosign makes it: ECDSA (DER) with SHA-256 (SHA-384 on P-384), RSA PKCS#1 v1.5 with
    SHA-256, or Ed25519."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = hashes.SHA384() if private.curve.key_size == 384 else hashes.SHA256()
        return private.sign(data, ec.ECDSA(algorithm))
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(data)
    raise TypeError(f"cannot sign with a {type(private).__name__}")


def _descriptor(media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"mediaType": media_type, "size": len(data), "digest": str(Digest.of(data))}
    if annotations:
        body["annotations"] = annotations
    return body


def signature_manifest(layers: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    """(config, manifest) bytes of a cosign `.sig` manifest with these layer descriptors (cosign's layout)."""
    config = json.dumps({
        "architecture": "", "created": _ZERO_TIME, "history": [{"created": _ZERO_TIME}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}, "config": {},
    }, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": _descriptor(mt.OCI_CONFIG, config),
        "layers": layers,
    }, separators=(",", ":")).encode()
    return config, manifest


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _existing_layers(registry: Registry, repo: RepositoryName, tag: str) -> list[dict[str, Any]]:
    try:
        record = await registry.resolve(repo, Tag(tag))
    except ManifestUnknownError:
        return []
    try:
        doc = json.loads(record.data)
    except ValueError:
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    return [dict(layer) for layer in layers or () if isinstance(layer, dict)]


async def sign_image(registry: Registry, keys: ManagedKeys, repository: RepositoryName, reference: Tag | Digest,
                     key: str, *, actor: str, docker_reference: str) -> Signed:
    """Sign the image `reference` of `repository` with the managed key `key` (a hanzo-kms URI of the
    repository's namespace). KeyUnknownError, KeyUriInvalidError, MasterKeyMissingError, DeniedError (another
    namespace's key), ManifestUnknownError."""
    namespace, name = parse_key_uri(key)
    if namespace != repository.namespace:
        raise DeniedError(f"key {key} belongs to namespace {namespace}; {repository} may only be signed with keys "
                          f"of namespace {repository.namespace}")
    image = (await registry.resolve(repository, reference)).digest
    version, private = await keys.private_key(namespace, name)
    tag = signature_tag(str(image))
    for _attempt in range(5):
        layers = await _existing_layers(registry, repository, tag)
        for layer in layers:
            if (layer.get("annotations") or {}).get(KEY_ID_ANNOTATION) == version.key_id:
                current = await registry.resolve(repository, Tag(tag))
                return Signed(image, current.digest, version.key_id, key, created=False)
        payload = simple_signing_payload(image, docker_reference, key_uri=key)
        signature = base64.b64encode(sign_bytes(private, payload)).decode()
        layers.append(_descriptor(COSIGN_SIMPLESIGNING, payload, {
            COSIGN_SIGNATURE_ANNOTATION: signature, KEY_ID_ANNOTATION: version.key_id, KEY_URI_ANNOTATION: key,
        }))
        config, manifest = signature_manifest(layers)
        for blob in (payload, config):
            await registry.put_blob(repository, Digest.of(blob), _once(blob), actor=actor)
        try:
            pushed = await registry.put_manifest(repository, Tag(tag), manifest, mt.OCI_MANIFEST, actor=actor)
        except ConflictError:
            continue
        return Signed(image, pushed.digest, version.key_id, key, created=True)
    raise ConflictError(f"the signatures of {repository}@{image} kept changing; retry")
