"""Signatures over the management API: managed signing keys per namespace, server-side signing, and the
signatures of an image with their verification results.

- `POST /v1/registry/namespaces/{namespace}/keys` (namespace admin) creates a key; `GET .../keys/{name}`
  (readers) shows its public halves; `POST .../keys/{name}/versions` (namespace admin) rotates it.
- `POST /v1/registry/{repository}/{reference}/sign` (push on the repository) signs with a managed key, in
  cosign's tag scheme (services/core/signing/sign.py).
- `GET /v1/registry/{repository}/{reference}/signatures` (pull) lists what the signer found and concluded.

These run in the gateway through services/core/signing: keys and results are metadata, signing is a push.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from services.core.auth.errors import AlreadyExistsError, InvalidRequestError, NotFoundError
from services.core.auth.scopes import PUSH
from services.core.errors import UnsupportedError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName, Tag
from services.core.secrets import MasterKeyMissingError, SecretBox, secret_box
from services.core.signing.artifacts import SIGNATURE_ARTIFACT_TYPES, signature_tag
from services.core.signing.keys import (
    KeyExistsError,
    KeyUnknownError,
    KeyUriInvalidError,
    ManagedKey,
    ManagedKeys,
)
from services.core.signing.notices import notices_for
from services.core.signing.results import PENDING, SignatureResults
from services.core.signing.sign import sign_image
from services.distribution.keys import REGISTRY, SETTINGS
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Name, Request, Response, maybe_timestamp, timestamp


class NewSigningKey(Request):
    name: Name = Field(description="Key name, unique in the namespace")
    algorithm: Literal["ecdsa-p256", "ecdsa-p384", "rsa-3072", "ed25519"] = Field(
        "ecdsa-p256", description="Key algorithm (cosign verifies all of them; ecdsa-p256 is its default)")


class SigningKeyVersion(Response):
    version: int
    created: datetime
    key_id: str = Field(description="sha256 of the public key (SubjectPublicKeyInfo DER)")
    public_key: str = Field(description="PEM public key of this version")


class SigningKey(Response):
    name: str
    uri: str = Field(description="hanzo-kms://projects/<namespace>/keys/<name>")
    algorithm: str
    public_key: str = Field(description="PEM public key of the newest version (the one that signs)")
    created: datetime
    versions: list[SigningKeyVersion] = Field(description="Every version, oldest first; old signatures keep verifying")


class SigningKeyList(Response):
    keys: list[SigningKey]


class SignBody(Request):
    key: str = Field(min_length=1, max_length=512, description="hanzo-kms://projects/<namespace>/keys/<name>")


class Signed(Response):
    signature_digest: str = Field(description="Digest of the signature manifest (cosign's sha256-<hex>.sig tag)")
    format: Literal["cosign"] = "cosign"
    digest: str = Field(description="Digest of the signed image")
    key_id: str


class SignatureEntry(Response):
    digest: str = Field(description="Digest of the signature artifact (manifest)")
    format: Literal["cosign", "cosign-bundle", "notation"]
    key_id: str | None = Field(None, description="Key that verified it (sha256 of its public key)")
    identity: str | None = Field(None, description="Certificate identity (e-mail, URI or x509 subject)")
    issuer: str | None = Field(None, description="OIDC issuer of a keyless certificate")
    verified: bool
    state: Literal["verified", "failed", "pending"]
    reason: str = Field(description="Why it is not verified, or what verified it")
    signed_at: datetime | None = None


class Signatures(Response):
    digest: str = Field(description="Digest of the image")
    signatures: list[SignatureEntry]


def _box(call: Call) -> SecretBox | None:
    try:
        return secret_box(call.request.app[SETTINGS].signer.master_key)
    except MasterKeyMissingError:
        return None


async def _keys(call: Call) -> ManagedKeys:
    keys = ManagedKeys(call.access.service.store.docs, _box(call))
    await keys.setup()
    return keys


def key_model(key: ManagedKey) -> SigningKey:
    return SigningKey(
        name=key.name, uri=key.uri, algorithm=key.algorithm, public_key=key.current.public_key,
        created=timestamp(key.created),
        versions=[SigningKeyVersion(version=v.version, created=timestamp(v.created), key_id=v.key_id,
                                    public_key=v.public_key) for v in key.versions],
    )


async def create_key(call: Call, body: NewSigningKey) -> SigningKey:
    assert call.namespace is not None
    keys = await _keys(call)
    if keys.box is None:
        raise UnsupportedError("managed keys need a master key (signer.master_key): none is configured")
    try:
        return key_model(await keys.create(call.namespace, body.name, body.algorithm, actor=call.who.name))
    except KeyExistsError as exc:
        raise AlreadyExistsError(str(exc)) from None


async def get_key(call: Call) -> SigningKey:
    assert call.namespace is not None
    try:
        return key_model(await (await _keys(call)).get(call.namespace, call.param("name")))
    except KeyUnknownError as exc:
        raise NotFoundError(str(exc)) from None


async def list_keys(call: Call) -> SigningKeyList:
    assert call.namespace is not None
    return SigningKeyList(keys=[key_model(k) for k in await (await _keys(call)).list(call.namespace)])


async def rotate_key(call: Call) -> SigningKey:
    assert call.namespace is not None
    keys = await _keys(call)
    if keys.box is None:
        raise UnsupportedError("managed keys need a master key (signer.master_key): none is configured")
    try:
        return key_model(await keys.rotate(call.namespace, call.param("name")))
    except KeyUnknownError as exc:
        raise NotFoundError(str(exc)) from None


def _reference(text: str) -> Tag | Digest:
    return Digest.parse(text) if ":" in text else Tag(text)


async def sign(call: Call, body: SignBody) -> Signed:
    assert call.repository is not None
    if not call.who.admin:
        await call.access.authorize(call.request, call.who.principal, call.repository, {PUSH})
    repository = RepositoryName(call.repository)
    keys = await _keys(call)
    try:
        signed = await sign_image(call.request.app[REGISTRY], keys, repository, _reference(call.param("reference")),
                                  body.key, actor=call.who.name,
                                  docker_reference=f"{call.request.host}/{repository}")
    except KeyUriInvalidError as exc:
        raise InvalidRequestError(str(exc)) from None
    except KeyUnknownError as exc:
        raise NotFoundError(str(exc)) from None
    except MasterKeyMissingError as exc:
        raise UnsupportedError(f"{exc}") from None
    notices_for(call.access.service.store.docs).changed(str(signed.image))
    return Signed(signature_digest=str(signed.signature_digest), format="cosign", digest=str(signed.image),
                  key_id=signed.key_id)


async def signatures(call: Call) -> Signatures:
    assert call.repository is not None
    registry = call.request.app[REGISTRY]
    repository = RepositoryName(call.repository)
    record = await registry.resolve(repository, _reference(call.param("reference")))
    store = SignatureResults(registry.meta.docs)
    await store.setup()
    results = await store.for_image(call.repository, str(record.digest))
    entries = [SignatureEntry(
        digest=r.signature, format=r.format, key_id=r.key_id or None, identity=r.identity or None,
        issuer=r.issuer or None, verified=r.verified, state=r.state, reason=r.reason,
        signed_at=maybe_timestamp(r.signed_at)) for r in results]
    # Signatures stored but not yet seen by the signer are listed as pending.
    seen = {r.signature for r in results}
    unseen = [(str(r.digest), "notation" if "notary" in (r.artifact_type or "") else "cosign-bundle"
               if "sigstore" in (r.artifact_type or "") else "cosign")
              for r in await registry.meta.referrers(call.repository, record.digest)
              if r.artifact_type in SIGNATURE_ARTIFACT_TYPES and str(r.digest) not in seen]
    tag = await registry.meta.tag(call.repository, signature_tag(str(record.digest)))
    if tag is not None and str(tag.digest) not in seen:
        unseen.append((str(tag.digest), "cosign"))
    entries += [SignatureEntry(digest=d, format=f, verified=False, state=PENDING,
                               reason="not checked by the signer yet (verification pending)") for d, f in unseen]
    return Signatures(digest=str(record.digest), signatures=entries)


def signer_routes() -> list[Route]:
    """Keys under /namespaces/{namespace}/keys; the image routes end in /sign and /signatures, which no other
    management route does, so `{repository}/{reference}` neither shadows nor is shadowed (put them last)."""
    keys = "/namespaces/{namespace}/keys"
    return [
        Route("POST", keys, create_key, Requirement.NAMESPACE_ADMIN,
              "Create a managed signing key (hanzo-kms://projects/<namespace>/keys/<name>); its private half is "
              "encrypted with the master key", status=201, response=SigningKey, body=NewSigningKey,
              errors=(405, 409)),
        Route("GET", keys, list_keys, Requirement.NAMESPACE_READER, "The namespace's managed signing keys",
              response=SigningKeyList),
        Route("GET", keys + "/{name}", get_key, Requirement.NAMESPACE_READER,
              "A managed signing key: its public key and versions", response=SigningKey, errors=(404,)),
        Route("POST", keys + "/{name}/versions", rotate_key, Requirement.NAMESPACE_ADMIN,
              "Rotate a managed key: a new version signs from now on; older signatures keep verifying",
              response=SigningKey, errors=(404, 405)),
        Route("POST", "/{repository:.+}/{reference}/sign", sign, Requirement.REPOSITORY_READER,
              "Sign an image with a managed key of its namespace (cosign's tag scheme, verifiable with "
              "`cosign verify --key`); needs push on the repository", response=Signed, body=SignBody,
              errors=(404, 405)),
        Route("GET", "/{repository:.+}/{reference}/signatures", signatures, Requirement.REPOSITORY_READER,
              "The signatures of an image: format, key or identity, verified or why not", response=Signatures,
              errors=(404,)),
    ]
