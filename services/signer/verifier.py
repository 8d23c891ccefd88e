"""The signer's work on one manifest: recognise a signature (discovery.py), read its layers, verify each
(cosign.py, bundle.py, notation.py) against the repository's trust (trust.py), and store the results with a
SignatureVerified event each, through the outbox. Bad input yields "not verified, because ..."; only the
ports' failures (a store that does not answer) raise, so the consumer retries them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from services.core.content.registry import Registry
from services.core.errors import BlobUnknownError, RegistryError
from services.core.events.envelope import encode, new_envelope, topic_for
from services.core.events.outbox import Delete, OutboundEvent, Outbox, Put
from services.core.oci.digest import Digest
from services.core.oci.names import RepositoryName
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import TopicSettings
from services.core.signing.artifacts import SignatureFormat, signature_tag
from services.core.signing.notices import SignatureNotices
from services.core.signing.results import FAILED, PENDING, SIGNATURES, VERIFIED, SignatureResult, SignatureResults
from services.core.storage.meta import ManifestRecord, MetadataStore
from services.core.telemetry import inject_headers
from services.signer import bundle, cosign, notation
from services.signer.discovery import SignatureArtifact, SignatureLayer, classify
from services.signer.metrics import SignerMetrics, reason_category
from services.signer.trust import Trust, TrustSource
from services.signer.verdict import Verdict, failed

log = logging.getLogger(__name__)

PROTO_FORMAT: dict[SignatureFormat, pb.SignatureFormat] = {
    SignatureFormat.COSIGN: pb.SIGNATURE_FORMAT_COSIGN,
    SignatureFormat.COSIGN_BUNDLE: pb.SIGNATURE_FORMAT_COSIGN_BUNDLE,
    SignatureFormat.NOTATION: pb.SIGNATURE_FORMAT_NOTATION,
}


class Verifier:
    def __init__(self, *, registry: Registry, meta: MetadataStore, results: SignatureResults, outbox: Outbox,
                 trust: TrustSource, topics: TopicSettings, notices: SignatureNotices, metrics: SignerMetrics,
                 max_bytes: int) -> None:
        self.registry = registry
        self.meta = meta
        self.results = results
        self.outbox = outbox
        self.trust = trust
        self.topics = topics
        self.notices = notices
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def process(self, record: ManifestRecord, *, tags: Sequence[str] = ()) -> list[SignatureResult] | None:
        """Verify `record` if it is a signature and store the results; None when it is not one."""
        artifact = classify(record.data, tags=tags, subject=str(record.subject) if record.subject else None,
                            artifact_type=record.artifact_type)
        if artifact is None:
            return None
        trust = await self.trust.for_repository(record.repository)
        image = await self.meta.manifest(record.repository, Digest.parse(artifact.subject)) \
            if _is_digest(artifact.subject) else None
        now = time.time()
        results: list[SignatureResult] = []
        if not artifact.layers:
            results.append(self._result(record, artifact, 0, failed("the artifact has no signature layer"), now))
        for layer in artifact.layers:
            verdict = await self._check(record, artifact, layer, trust, image)
            results.append(self._result(record, artifact, layer.index, verdict, now))
        await self._store(record.repository, str(record.digest), results)
        return results

    async def _check(self, record: ManifestRecord, artifact: SignatureArtifact, layer: SignatureLayer, trust: Trust,
                     image: ManifestRecord | None) -> Verdict:
        if layer.size > self.max_bytes:
            return failed(f"the signature layer is {layer.size} bytes, more than the {self.max_bytes} read")
        try:
            data = await self._read(record.repository, layer.digest)
        except BlobUnknownError:
            return failed(f"the signature layer {layer.digest[:19]}… is missing from the repository")
        except (RegistryError, ValueError) as exc:
            return failed(f"the signature layer cannot be read ({exc})")
        try:
            if artifact.format == SignatureFormat.COSIGN:
                return cosign.verify_simple_signing(data, layer.annotations, subject=artifact.subject,
                                                    trust=trust.cosign, expected_digest=layer.digest)
            if artifact.format == SignatureFormat.COSIGN_BUNDLE:
                return bundle.verify_bundle(data, subject=artifact.subject, trust=trust.cosign)
            if image is None:
                return Verdict(False, "the signed image is not in the repository yet (verification pending)",
                               pending=True)
            return notation.verify_notation(data, layer.media_type, repository=record.repository,
                                            digest=artifact.subject, trust=trust.notation,
                                            subject_media_type=image.media_type, subject_size=image.size)
        except Exception as exc:  # bad input must never stop the consumer: it is a verdict
            log.warning("verifying %s@%s failed unexpectedly: %s", record.repository, record.digest, exc,
                        exc_info=True)
            return failed(f"the signature could not be checked ({type(exc).__name__}: {str(exc)[:200]})")

    async def _read(self, repository: str, digest: str) -> bytes:
        parsed = Digest.parse(digest)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.registry.read_blob(RepositoryName(repository), parsed):
            size += len(chunk)
            if size > self.max_bytes:
                raise ValueError(f"more than {self.max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if Digest.of(data, parsed.algorithm) != parsed:
            raise ValueError("its bytes do not match its digest")
        return data

    def _result(self, record: ManifestRecord, artifact: SignatureArtifact, index: int, verdict: Verdict,
                now: float) -> SignatureResult:
        state = VERIFIED if verdict.verified else PENDING if verdict.pending else FAILED
        self.metrics.verifications.labels(format=artifact.format.value, outcome=state).inc()
        if state == FAILED:
            self.metrics.failures.labels(format=artifact.format.value, reason=reason_category(verdict.reason)).inc()
        return SignatureResult(
            repository=record.repository, subject=artifact.subject, signature=str(record.digest), index=index,
            format=artifact.format.value, state=state, reason=verdict.reason[:500], key_id=verdict.key_id,
            identity=verdict.identity[:500], issuer=verdict.issuer[:500], signed_at=verdict.signed_at, checked=now,
            namespace=record.repository.partition("/")[0],
        )

    async def _store(self, repository: str, signature: str, results: Sequence[SignatureResult]) -> None:
        keep = {r.id for r in results}
        stale = [r for r in await self.results.of_signature(repository, signature) if r.id not in keep]
        ops = [Put(SIGNATURES, r.to_doc()) for r in results] + [Delete(SIGNATURES, r.id) for r in stale]
        events = [self._event(r, op=i) for i, r in enumerate(results)]
        await self.outbox.commit(ops, events)
        for subject in dict.fromkeys([r.subject for r in results] + [r.subject for r in stale]):
            self.notices.changed(subject)

    def _event(self, result: SignatureResult, *, op: int) -> OutboundEvent:
        env = new_envelope(
            pb.SignatureVerified(repository=result.repository, digest=result.subject,
                                 signature_digest=result.signature,
                                 format=PROTO_FORMAT[SignatureFormat(result.format)],
                                 key_id=result.key_id, verified=result.verified, reason=result.reason,
                                 identity=result.identity, issuer=result.issuer, index=result.index),
            repository=result.repository, actor="signer", trace_headers=inject_headers(),
        )
        headers = (
            *tuple((k, v.encode()) for k, v in (("traceparent", env.traceparent), ("tracestate", env.tracestate)) if v),
            ("event-type", env.type.encode()),
            ("event-id", env.id.encode()),
        )
        return OutboundEvent(topic=topic_for(env, self.topics), key=result.repository, value=encode(env),
                             headers=headers, op=op)

    # re-verification

    async def reverify_signature(self, repository: str, signature: str, subject: str) -> None:
        record = await self.meta.manifest(repository, Digest.parse(signature))
        if record is None:
            await self.forget(repository, signature)
            return
        await self.process(record, tags=[] if record.subject else [signature_tag(subject)])

    async def reverify_image(self, repository: str, subject: str, *, only_pending: bool) -> int:
        """Verify again the stored signatures of `subject` (its pending ones only, when it was just pushed)."""
        found = await self.results.for_image(repository, subject)
        signatures = dict.fromkeys(r.signature for r in found if not only_pending or r.state == PENDING)
        for signature in signatures:
            await self.reverify_signature(repository, signature, subject)
        return len(signatures)

    async def reverify_namespace(self, namespace: str, repository: str | None = None) -> int:
        """Verify again every stored signature of the namespace (or of one repository): a policy changed."""
        done: set[tuple[str, str]] = set()
        after: str | None = None
        while True:
            page = await self.results.in_namespace(namespace, after=after)
            for result in page:
                key = (result.repository, result.signature)
                if key in done or (repository is not None and result.repository != repository):
                    continue
                done.add(key)
                await self.reverify_signature(result.repository, result.signature, result.subject)
            if len(page) < 500:
                return len(done)
            after = page[-1].id

    async def forget(self, repository: str, signature: str) -> None:
        gone = await self.results.of_signature(repository, signature)
        if gone:
            await self.outbox.commit([Delete(SIGNATURES, r.id) for r in gone], [])
        for subject in dict.fromkeys(r.subject for r in gone):
            self.notices.changed(subject)


def _is_digest(text: str) -> bool:
    try:
        Digest.parse(text)
    except (RegistryError, ValueError):
        return False
    return True

