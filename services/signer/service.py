"""Signer service: consumes the manifests topic (signature pushes, the images they sign, deletions, policy
changes), verifies and records signatures, and serves the Signer gRPC contract (Verify, Sign)."""

from __future__ import annotations

import logging

import grpc

from services.core.bootstrap import Container
from services.core.content.registry import Registry
from services.core.errors import RegistryError
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.policy.store import PolicyStore
from services.core.proto.hanzo.registry.v1 import events_pb2, signer_pb2, signer_pb2_grpc
from services.core.runtime import ServiceParts
from services.core.secrets import MasterKeyMissingError, SecretBox, secret_box
from services.core.signing.artifacts import SignatureFormat
from services.core.signing.keys import KeyUnknownError, KeyUriInvalidError, ManagedKeys
from services.core.signing.notices import notices_for
from services.core.signing.results import SignatureResult, SignatureResults
from services.core.signing.sign import sign_image
from services.signer.metrics import SignerMetrics
from services.signer.trust import TrustSource
from services.signer.verifier import PROTO_FORMAT, Verifier

log = logging.getLogger(__name__)


def managed_keys(c: Container) -> ManagedKeys:
    box: SecretBox | None
    try:
        box = secret_box(c.settings.signer.master_key)
    except MasterKeyMissingError:
        box = None
    return ManagedKeys(c.docs, box)


def build_verifier(c: Container, registry: Registry | None = None) -> Verifier:
    keys = managed_keys(c)
    return Verifier(
        registry=registry or Registry(blobs=c.blobs, meta=c.meta, outbox=c.outbox, settings=c.settings.registry,
                                      topics=c.settings.topics),
        meta=c.meta, results=SignatureResults(c.docs), outbox=c.outbox,
        trust=TrustSource(c.settings, PolicyStore(c.docs), keys), topics=c.settings.topics,
        notices=notices_for(c.docs), metrics=SignerMetrics(c.metrics), max_bytes=c.settings.signer.max_signature_bytes,
    )


class SignerHandler:
    """What the signer does with each event of the manifests topic."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self._ready = False

    async def __call__(self, envelope: events_pb2.Envelope) -> None:
        if not self._ready:
            await self.verifier.results.setup()
            await self.verifier.trust.keys.setup()
            await self.verifier.trust.policies.setup()
            self._ready = True
        kind = envelope.WhichOneof("payload")
        if kind == "manifest_pushed":
            await self.pushed(envelope.manifest_pushed)
        elif kind == "manifest_deleted":
            deleted = envelope.manifest_deleted
            await self.verifier.forget(deleted.repository, deleted.digest)
        elif kind == "policy_changed":
            changed = envelope.policy_changed
            count = await self.verifier.reverify_namespace(changed.namespace, changed.repository or None)
            if count:
                log.info("policy of %s changed: %d signature(s) verified again",
                         changed.repository or changed.namespace, count)

    async def pushed(self, event: events_pb2.ManifestPushed) -> None:
        try:
            digest = Digest.parse(event.digest)
        except (RegistryError, ValueError):
            return
        record = await self.verifier.meta.manifest(event.repository, digest)
        if record is None:
            return  # deleted since
        results = await self.verifier.process(record, tags=list(event.tags))
        if results is None:
            # An image: signatures pushed before it may wait for it (a Notary signature needs its size).
            await self.verifier.reverify_image(event.repository, event.digest, only_pending=True)


def _check(result: SignatureResult) -> signer_pb2.SignatureCheck:
    return signer_pb2.SignatureCheck(
        signature_digest=result.signature, format=PROTO_FORMAT[SignatureFormat(result.format)],
        key_id=result.key_id, verified=result.verified, reason=result.reason, identity=result.identity,
        digest=result.subject,
    )


class SignerServicer(signer_pb2_grpc.SignerServicer):
    def __init__(self, c: Container, verifier: Verifier) -> None:
        self.c = c
        self.verifier = verifier

    async def Verify(self, request: signer_pb2.VerifyRequest, context: grpc.aio.ServicerContext
                     ) -> signer_pb2.VerifyResponse:
        await self.verifier.reverify_image(request.repository, request.digest, only_pending=False)
        results = await self.verifier.results.for_image(request.repository, request.digest)
        return signer_pb2.VerifyResponse(verified=any(r.verified for r in results),
                                         signatures=[_check(r) for r in results])

    async def Sign(self, request: signer_pb2.SignRequest, context: grpc.aio.ServicerContext
                   ) -> signer_pb2.SignResponse:
        try:
            repository = RepositoryName(request.repository)
            signed = await sign_image(self.verifier.registry, self.verifier.trust.keys, repository,
                                      Digest.parse(request.digest), request.key_id, actor=request.actor or "signer",
                                      docker_reference=request.docker_reference or str(repository))
        except (KeyUnknownError, RegistryError) as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND if isinstance(exc, KeyUnknownError)
                                else grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        except (KeyUriInvalidError, MasterKeyMissingError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, KeyUriInvalidError)
                                else grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        self.verifier.metrics.signed.labels(format="cosign").inc()
        return signer_pb2.SignResponse(signature_digest=str(signed.signature_digest), key_id=signed.key_id,
                                       format=events_pb2.SIGNATURE_FORMAT_COSIGN)


async def build(c: Container) -> ServiceParts:
    verifier = build_verifier(c)
    servicer = SignerServicer(c, verifier)
    return ServiceParts(
        name="signer",
        consumes=[(c.settings.topics.manifests, SignerHandler(verifier))],
        produces=[c.settings.topics.signatures],
        grpc=[lambda server: signer_pb2_grpc.add_SignerServicer_to_server(servicer, server)],
    )
