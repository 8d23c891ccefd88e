"""The signer on both assemblies: signatures in every form are discovered and verified, the signature gate
refuses unsigned images and untrusted signers with 403 DENIED and lets a newly signed image through within a
second, policy key changes re-verify, bad signatures are "not verified, because ...", and managed keys sign
server-side over the management API."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.core.signing.artifacts import (
    NOTATION_JWS,
    NOTATION_SIGNATURE,
    SIGSTORE_BUNDLE,
    signature_tag,
)
from services.core.signing.results import SignatureResults
from tests.integration.conftest import ASSEMBLIES, Assembly
from tests.integration.oci import OCI_MANIFEST, digest_of, error_code, push_blob, push_image
from tests.integration.signer_env import SignerEnv, push_cosign_layer, signer_env
from tests.unit.signer import material as mk

ACCEPT = {"Accept": OCI_MANIFEST}
EMPTY = b"{}"
K1 = ec.generate_private_key(ec.SECP256R1())
K2 = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(params=ASSEMBLIES)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SignerEnv]:
    async with signer_env(request.param, tmp_path) as e:
        yield e


async def push_cosign_signature(client: Any, repo: str, image: str, private: Any, *, garbage: bool = False) -> str:
    payload, notes = mk.cosign_layer(private, image, reference=repo)
    if garbage:
        notes = {"dev.cosignproject.cosign/signature": base64.b64encode(b"not a signature").decode()}
    return await push_cosign_layer(client, repo, image, payload, notes)


async def push_referrer(client: Any, repo: str, image: str, image_size: int, artifact_type: str, layer_type: str,
                        data: bytes, **annotations: str) -> str:
    await push_blob(client, repo, EMPTY)
    await push_blob(client, repo, data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(EMPTY), "size": 2},
        "layers": [{"mediaType": layer_type, "digest": digest_of(data), "size": len(data)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": image_size},
        "annotations": annotations,
    }).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{digest_of(manifest)}", data=manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return digest_of(manifest)


async def pull_status(client: Any, repo: str, ref: str) -> tuple[int, str]:
    resp = await client.get(f"/v2/{repo}/manifests/{ref}", headers=ACCEPT)
    text = await resp.text()
    return resp.status, text


async def wait_pull(client: Any, repo: str, ref: str, status: int, *, within: float) -> float:
    start = time.monotonic()
    while True:
        got, text = await pull_status(client, repo, ref)
        if got == status:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"{repo}:{ref} still {got} after {within}s: {text[:300]}"
        await asyncio.sleep(0.02)


async def wait_results(env: SignerEnv, repo: str, image: str, count: int = 1, *, within: float = 10.0) -> list[Any]:
    results = SignatureResults(env.c.docs)
    await results.setup()
    deadline = time.monotonic() + within
    while True:
        found = await results.for_image(repo, image)
        if len([r for r in found if r.state != "pending"]) >= count:
            return found
        assert time.monotonic() < deadline, f"no results for {repo}@{image}: {found}"
        await asyncio.sleep(0.05)


async def test_gate_over_every_signature_form(env: SignerEnv) -> None:
    client = env.client
    await env.set_policy("sig", {"signing": {"verify_signature": True, "keys": [mk.pem(K1)]}})
    # Unsigned: refused, saying so; the signature allows the pull within a second of its push.
    image, manifest = await push_image(client, "sig/app", "v1")
    status, text = await pull_status(client, "sig/app", "v1")
    assert status == 403 and "DENIED" in text and "has no signature" in text and "signing.unsigned=block" in text
    sig = await push_cosign_signature(client, "sig/app", image, K1)
    took = await wait_pull(client, "sig/app", "v1", 200, within=1.0 if env.name == "embedded" else 3.0)
    assert took < (1.0 if env.name == "embedded" else 3.0)
    assert (await pull_status(client, "sig/app", image))[0] == 200
    # The signature manifest itself is exempt (clients fetch it to verify).
    assert (await pull_status(client, "sig/app", signature_tag(image)))[0] == 200
    [result] = await wait_results(env, "sig/app", image)
    assert result.verified and result.signature == sig and result.format == "cosign" and result.key_id

    # Signed by a key the policy does not trust: refused, naming why.
    other, _ = await push_image(client, "sig/app", "v2")
    await push_cosign_signature(client, "sig/app", other, K2)
    await wait_results(env, "sig/app", other)
    status, text = await pull_status(client, "sig/app", "v2")
    assert status == 403 and "no trusted key verifies the signature" in text

    # Sigstore bundle referrer (cosign 3's default), pushed BEFORE its image; then a Notary JWS signature.
    payload = json.dumps({"architecture": "amd64", "os": "linux", "n": 3}).encode()
    config_digest = await push_blob(client, "sig/app", payload)
    layer = await push_blob(client, "sig/app", b"layer-3")
    later = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                                   "size": len(payload)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                                    "size": 7}]}).encode()
    later_digest = digest_of(later)
    await push_referrer(client, "sig/app", later_digest, len(later), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE,
                        mk.dsse_bundle(K1, later_digest), **{"dev.sigstore.bundle.content": "dsse-envelope"})
    await wait_results(env, "sig/app", later_digest)
    resp = await client.put("/v2/sig/app/manifests/v3", data=later, headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201
    await wait_pull(client, "sig/app", "v3", 200, within=3.0)

    notary, notary_manifest = await push_image(client, "sig/app", "v4")
    private, cert = mk.make_leaf(env.ca)
    envelope = mk.jws(private, [cert], mk.notary_payload(notary, OCI_MANIFEST, len(notary_manifest)))
    await push_referrer(client, "sig/app", notary, len(notary_manifest), NOTATION_SIGNATURE, NOTATION_JWS, envelope)
    await wait_pull(client, "sig/app", "v4", 200, within=3.0)
    # A Notary signature by a CA outside the trust store is refused.
    stranger, stranger_manifest = await push_image(client, "sig/app", "v5")
    bad_key, bad_cert = mk.make_leaf(mk.make_ca("Elsewhere"))
    envelope = mk.jws(bad_key, [bad_cert], mk.notary_payload(stranger, OCI_MANIFEST, len(stranger_manifest)))
    await push_referrer(client, "sig/app", stranger, len(stranger_manifest), NOTATION_SIGNATURE, NOTATION_JWS,
                        envelope)
    await wait_results(env, "sig/app", stranger)
    status, text = await pull_status(client, "sig/app", "v5")
    assert status == 403 and "trusted root" in text

    # Several signatures on one image are all kept.
    await push_referrer(client, "sig/app", image, len(manifest), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE,
                        mk.dsse_bundle(K2, image))
    found = await wait_results(env, "sig/app", image, 2)
    assert sorted(r.format for r in found) == ["cosign", "cosign-bundle"]

    # The policy's keys change: stored signatures are verified again (v2 by K2 now passes, v1 by K1 not).
    await env.set_policy("sig", {"signing": {"verify_signature": True, "keys": [mk.pem(K2)]}})
    await wait_pull(client, "sig/app", "v2", 200, within=5.0)
    # v1 still passes through its second signature (the K2 bundle); v3 (K1 only) is refused now.
    status, text = await pull_status(client, "sig/app", "v3")
    assert status == 403, text


async def push_keyless_signature(env: SignerEnv, repo: str, image: str, *, signed_at: datetime,
                                 edit_logged_time: bool = False) -> None:
    """A cosign keyless signature as `cosign sign` writes it: a ten-minute certificate around `signed_at` (long
    expired now) and the Rekor bundle annotation of its log entry."""
    private, cert = mk.make_leaf(env.fulcio, email="ci@example.com", issuer_url="https://token.actions.example",
                                 not_before=signed_at - timedelta(minutes=1),
                                 not_after=signed_at + timedelta(minutes=10))
    payload, notes = mk.cosign_layer(private, image, reference=repo)
    signature = base64.b64decode(notes["dev.cosignproject.cosign/signature"])
    entry = env.log.entry(mk.hashedrekord(payload, signature, cert), int(signed_at.timestamp()))
    if edit_logged_time:
        entry = dataclasses.replace(entry, integrated_time=entry.integrated_time + 1)
    notes["dev.sigstore.cosign/certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode()
    notes["dev.sigstore.cosign/bundle"] = mk.cosign_bundle_annotation(entry)
    await push_cosign_layer(env.client, repo, image, payload, notes)


async def test_keyless_signatures_are_dated_by_the_transparency_log(env: SignerEnv) -> None:
    """A keyless signature passes the gate long after its certificate expired when the configured log vouches it
    was made in the certificate's ten minutes; one whose logged time was edited is refused, saying why."""
    await env.set_policy("keyless", {"signing": {"verify_signature": True, "identities": [
        {"issuer": "https://token.actions.example", "subject": "ci@example.com"}]}})
    signed_at = datetime.now(UTC) - timedelta(days=3)
    logged, _ = await push_image(env.client, "keyless/app", "v1")
    await push_keyless_signature(env, "keyless/app", logged, signed_at=signed_at)
    await wait_pull(env.client, "keyless/app", "v1", 200, within=5.0)
    [result] = await wait_results(env, "keyless/app", logged)
    assert result.verified and result.identity == "ci@example.com"
    assert result.signed_at == int(signed_at.timestamp())

    edited, _ = await push_image(env.client, "keyless/app", "v2")
    await push_keyless_signature(env, "keyless/app", edited, signed_at=signed_at, edit_logged_time=True)
    [result] = await wait_results(env, "keyless/app", edited)
    assert not result.verified and result.signed_at is None
    status, text = await pull_status(env.client, "keyless/app", "v2")
    assert status == 403 and "expired" in text and "does not verify with the log's key" in text, text


async def test_bad_signatures_are_not_verified_and_the_consumer_goes_on(env: SignerEnv) -> None:
    client = env.client
    await env.set_policy("bad", {"signing": {"verify_signature": True, "keys": [mk.pem(K1)]}})
    image, manifest = await push_image(client, "bad/app", "v1")
    await push_cosign_signature(client, "bad/app", image, K1, garbage=True)
    # A bundle that signs another image, a malformed bundle, a Notary envelope that is not JSON.
    await push_referrer(client, "bad/app", image, len(manifest), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE,
                        mk.dsse_bundle(K1, "sha256:" + "0" * 64))
    await push_referrer(client, "bad/app", image, len(manifest), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, b"{not json")
    await push_referrer(client, "bad/app", image, len(manifest), NOTATION_SIGNATURE, NOTATION_JWS, b"\x00\x01")
    found = await wait_results(env, "bad/app", image, 4)
    assert not any(r.verified for r in found)
    reasons = " | ".join(r.reason for r in found)
    for expected in ("no trusted key verifies", "signs another image", "not JSON"):
        assert expected in reasons, reasons
    status, text = await pull_status(client, "bad/app", "v1")
    assert status == 403 and "no signature verifies" in text
    # The consumer is not stuck: a good signature afterwards is verified and unblocks the image.
    await push_cosign_signature(client, "bad/app", image, K1)
    await wait_pull(client, "bad/app", "v1", 200, within=3.0)


async def test_pending_and_unsigned_are_distinct(assembly: Assembly) -> None:
    """Without a signer running: a signature that is there but unchecked is "pending"; none is "no signature",
    which `unsigned: allow` lets through."""
    from services.core.policy.document import parse_data
    from services.core.policy.store import PolicyStore, PolicyTarget
    from services.distribution.keys import GATES

    client = assembly.client
    store = PolicyStore(assembly.c.docs)
    await store.setup()
    for namespace, unsigned in (("pend", "block"), ("open", "allow")):
        op = store.put_op(PolicyTarget(namespace), parse_data(
            {"signing": {"verify_signature": True, "keys": [mk.pem(K1)], "unsigned": unsigned}}), actor="t")
        await assembly.c.docs.put(op.collection, op.doc)  # type: ignore[union-attr]
    gates = client.app[GATES]
    gates.invalidate()
    image, _ = await push_image(client, "pend/app", "v1")
    resp = await client.get("/v2/pend/app/manifests/v1", headers=ACCEPT)
    assert resp.status == 403 and "has no signature" in (await resp.json())["errors"][0]["message"]
    await push_cosign_signature(client, "pend/app", image, K1)
    gates.invalidate(digest=image)
    resp = await client.get("/v2/pend/app/manifests/v1", headers=ACCEPT)
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert "verification pending" in (await resp.json())["errors"][0]["message"]
    await push_image(client, "open/app", "v1")
    assert (await client.get("/v2/open/app/manifests/v1", headers=ACCEPT)).status == 200
