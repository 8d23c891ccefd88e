"""Verification of every format, and bad input: each yields "not verified, because ...", never a crash."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.signing.artifacts import NOTATION_COSE, NOTATION_JWS
from services.core.signing.keys import key_id
from services.core.signing.sign import sign_bytes
from services.signer import bundle, cosign, notation, tlog
from services.signer.notation import NotationTrust, load_trust
from services.signer.verdict import CosignTrust, Identity
from tests.unit.signer import material as mk

IMAGE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
MT = "application/vnd.oci.image.manifest.v1+json"
KEYS: list[Any]
KEYS = [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048), ed25519.Ed25519PrivateKey.generate()]


def trust_of(*private: object) -> CosignTrust:
    return CosignTrust({key_id(k.public_key()): k.public_key() for k in private})  # type: ignore[attr-defined]


@pytest.mark.parametrize("private", KEYS, ids=["p256", "p384", "rsa", "ed25519"])
def test_cosign_key_based(private: ec.EllipticCurvePrivateKey) -> None:
    payload, notes = mk.cosign_layer(private, IMAGE)
    verdict = cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=trust_of(private))
    assert verdict.verified and verdict.key_id == key_id(private.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    refused = cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=trust_of(other))
    assert not refused.verified and "no trusted key verifies" in refused.reason


def test_cosign_bad_input() -> None:
    private = KEYS[0]
    trust = trust_of(private)
    payload, notes = mk.cosign_layer(private, IMAGE)
    cases = {
        "points at another image": (payload, notes, OTHER, "signs another image"),
        "no annotation": (payload, {}, IMAGE, "no signature annotation"),
        "not base64": (payload, {"dev.cosignproject.cosign/signature": "%%%"}, IMAGE, "not base64"),
        "not JSON": (b"{", notes, IMAGE, "not JSON"),
        "wrong type": (payload.replace(b"cosign container image signature", b"something else"), notes, IMAGE,
                       "payload's type"),
    }
    for name, (data, notes_, subject, reason) in cases.items():
        verdict = cosign.verify_simple_signing(data, notes_, subject=subject, trust=trust)
        assert not verdict.verified and reason in verdict.reason, name
    # The payload must be the blob the manifest names.
    verdict = cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=trust, expected_digest=OTHER)
    assert not verdict.verified and "does not match the digest" in verdict.reason
    # A payload tampered after signing does not verify.
    tampered = payload.replace(b'"creator"', b'"creatoR"')
    assert not cosign.verify_simple_signing(tampered, notes, subject=IMAGE, trust=trust).verified


def test_cosign_keyless_certificate() -> None:
    ca = mk.make_ca()
    private, cert = mk.make_leaf(ca, email="dev@example.com", issuer_url="https://issuer.example")
    payload, notes = mk.cosign_layer(private, IMAGE)
    notes["dev.sigstore.cosign/certificate"] = cert.public_bytes(mk.serialization.Encoding.PEM).decode()  # type: ignore[attr-defined]
    good = CosignTrust(identities=[Identity("https://issuer.example", "dev@example.com")], roots=[ca.cert])
    verdict = cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=good)
    assert verdict.verified and verdict.identity == "dev@example.com" and verdict.issuer == "https://issuer.example"
    stranger = CosignTrust(identities=[Identity("https://issuer.example", "eve@example.com")], roots=[ca.cert])
    assert "not one the policy trusts" in cosign.verify_simple_signing(payload, notes, subject=IMAGE,
                                                                       trust=stranger).reason
    other_root = CosignTrust(identities=good.identities, roots=[mk.make_ca("Other").cert])
    assert "trusted root" in cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=other_root).reason
    truncated = dict(notes, **{"dev.sigstore.cosign/certificate": notes["dev.sigstore.cosign/certificate"][:200]})
    verdict = cosign.verify_simple_signing(payload, truncated, subject=IMAGE, trust=good)
    assert not verdict.verified and "certificate" in verdict.reason


def test_sigstore_bundle_key_and_message() -> None:
    private = KEYS[0]
    assert bundle.verify_bundle(mk.dsse_bundle(private, IMAGE), subject=IMAGE, trust=trust_of(private)).verified
    assert bundle.verify_bundle(mk.message_bundle(private, IMAGE), subject=IMAGE, trust=trust_of(private)).verified
    wrong = bundle.verify_bundle(mk.dsse_bundle(private, OTHER), subject=IMAGE, trust=trust_of(private))
    assert not wrong.verified and "signs another image" in wrong.reason
    stranger = bundle.verify_bundle(mk.dsse_bundle(private, IMAGE), subject=IMAGE, trust=trust_of(KEYS[1]))
    assert not stranger.verified and "no trusted key" in stranger.reason


def _short_lived(ca: mk.Ca, signed_at: datetime) -> tuple[Any, Any]:
    """A Fulcio-like certificate valid ten minutes around `signed_at` (long expired when checked)."""
    return mk.make_leaf(ca, email="ci@example.com", issuer_url="https://token.actions.example",
                        not_before=signed_at - timedelta(minutes=1), not_after=signed_at + timedelta(minutes=10))


def test_sigstore_bundle_certificate_is_checked_when_the_log_vouches_it_was_signed() -> None:
    ca, log = mk.make_ca(), mk.make_log()
    signed_at = datetime.now(UTC) - timedelta(days=2)
    private, cert = _short_lived(ca, signed_at)
    when = int(signed_at.timestamp())
    trust = CosignTrust(identities=[Identity("https://token.actions.example", "ci@example.com")], roots=[ca.cert],
                        log_keys=log.keys())
    verdict = bundle.verify_bundle(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when, log=log),
                                   subject=IMAGE, trust=trust)
    assert verdict.verified, verdict.reason
    assert verdict.signed_at == when
    # Without a log entry, the short-lived certificate is checked now: expired.
    expired = bundle.verify_bundle(mk.dsse_bundle(private, IMAGE, cert=cert), subject=IMAGE, trust=trust)
    assert not expired.verified and "expired" in expired.reason and "no transparency-log entry" in expired.reason


def test_an_unvouched_log_time_does_not_revive_an_expired_certificate() -> None:
    """The integrated time is evidence only with the log's signature over this very entry: otherwise whoever
    holds the key of an expired certificate could sign anything, backdated."""
    ca, log = mk.make_ca(), mk.make_log()
    signed_at = datetime.now(UTC) - timedelta(days=2)
    private, cert = _short_lived(ca, signed_at)
    when = int(signed_at.timestamp())
    identities = [Identity("https://token.actions.example", "ci@example.com")]
    trusting = CosignTrust(identities=identities, roots=[ca.cert], log_keys=log.keys())

    def reason(data: bytes, trust: CosignTrust = trusting) -> str:
        verdict = bundle.verify_bundle(data, subject=IMAGE, trust=trust)
        assert not verdict.verified and verdict.signed_at is None
        assert "expired" in verdict.reason and "checked now" in verdict.reason
        return verdict.reason

    # No log key configured.
    assert "signer.rekor_public_keys" in reason(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when,
                                                               log=log), CosignTrust(identities=identities,
                                                                                     roots=[ca.cert]))
    # Signed by a log nobody trusts.
    assert "is the key of its log" in reason(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when))
    # The log's timestamp over another time: the integrated time was edited.
    forged = json.loads(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when, log=log))
    forged["verificationMaterial"]["tlogEntries"][0]["integratedTime"] = str(when - 60)
    assert "does not verify with the log's key" in reason(json.dumps(forged).encode())
    # Signed by the log's key outside the key's validity (a retired key of the trusted root).
    retired = {log.log_id: tlog.LogKey(log.key.public_key(), end=when - 3600)}
    assert "outside the validity" in reason(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when, log=log),
                                            CosignTrust(identities=identities, roots=[ca.cert], log_keys=retired))
    # A genuine entry of the log that names another artifact, signature or certificate lends no time.
    other_payload = mk.in_toto(OTHER)
    _, other_cert = _short_lived(ca, signed_at)
    signature = sign_bytes(private, bundle.pae(bundle.IN_TOTO_PAYLOAD, mk.in_toto(IMAGE)))
    for body, why in [(mk.dsse_body(other_payload, signature, cert), "another artifact"),
                      (mk.dsse_body(mk.in_toto(IMAGE), b"not it", cert), "another signature"),
                      (mk.dsse_body(mk.in_toto(IMAGE), signature, other_cert), "another signature or certificate"),
                      ({"kind": "rekord", "spec": {}}, "not one this registry reads")]:
        assert why in reason(mk.dsse_bundle(private, IMAGE, cert=cert, integrated_time=when, log=log, body=body))


def test_cosign_keyless_signature_is_dated_by_its_rekor_bundle() -> None:
    ca, log = mk.make_ca(), mk.make_log()
    signed_at = datetime.now(UTC) - timedelta(days=30)
    private, cert = _short_lived(ca, signed_at)
    when = int(signed_at.timestamp())
    payload, notes = mk.cosign_layer(private, IMAGE)
    signature = base64.b64decode(notes["dev.cosignproject.cosign/signature"])
    notes["dev.sigstore.cosign/certificate"] = cert.public_bytes(mk.serialization.Encoding.PEM).decode()  # type: ignore[attr-defined]
    trust = CosignTrust(identities=[Identity("https://token.actions.example", "ci@example.com")], roots=[ca.cert],
                        log_keys=log.keys())
    logged = dict(notes, **{"dev.sigstore.cosign/bundle": mk.cosign_bundle_annotation(
        log.entry(mk.hashedrekord(payload, signature, cert), when))})
    verdict = cosign.verify_simple_signing(payload, logged, subject=IMAGE, trust=trust)
    assert verdict.verified and verdict.signed_at == when, verdict.reason
    # The same annotation with the time edited, or none: checked now, expired.
    edited = json.loads(logged["dev.sigstore.cosign/bundle"])
    edited["Payload"]["integratedTime"] = when + 5
    for layer_notes in (dict(notes, **{"dev.sigstore.cosign/bundle": json.dumps(edited)}), notes):
        verdict = cosign.verify_simple_signing(payload, layer_notes, subject=IMAGE, trust=trust)
        assert not verdict.verified and "expired" in verdict.reason
    # A key-based signature reports the logged time only when the log vouches for it.
    keyed = trust_of(private)
    keyed = CosignTrust(keyed.keys, log_keys=log.keys())
    payload, notes = mk.cosign_layer(private, IMAGE)
    signature = base64.b64decode(notes["dev.cosignproject.cosign/signature"])
    notes["dev.sigstore.cosign/bundle"] = mk.cosign_bundle_annotation(
        log.entry(mk.hashedrekord(payload, signature, private), when))
    assert cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=keyed).signed_at == when
    assert cosign.verify_simple_signing(payload, notes, subject=IMAGE, trust=trust_of(private)).signed_at is None


DATA = Path(__file__).parent / "data"


def test_a_real_keyless_bundle_from_the_public_sigstore_instance(tmp_path: Path) -> None:
    """A bundle from GitHub Actions, Fulcio and Rekor in production (rfc8785.py 0.1.2's wheel, Rekor log index
    79605083), checked with the public instance's trusted_root.json (both from sigstore-python's test assets)
    as `signer.sigstore_trusted_root` configures it: our SET canonicalization and entry binding are Rekor's."""
    from services.core.settings import Settings, SignerSettings
    from services.signer.trust import TrustSource

    data = (DATA / "rfc8785-0.1.2.whl.sigstore.json").read_bytes()
    wheel = "sha256:" + base64.b64decode(json.loads(data)["messageSignature"]["messageDigest"]["digest"]).hex()
    identity = Identity("https://token.actions.githubusercontent.com",
                        "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2")
    settings = Settings(signer=SignerSettings(sigstore_trusted_root=DATA / "trusted_root.json"))
    source = TrustSource(settings, policies=None, keys=None)  # type: ignore[arg-type]  # roots and logs only
    roots, log_keys = source.roots(), source.log_keys()
    assert len(roots) == 3 and list(log_keys) == ["c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"]
    assert log_keys[next(iter(log_keys))].start == 1610452407.0  # validFor.start 2021-01-12T11:53:27Z
    trust = CosignTrust(identities=[identity], roots=roots, log_keys=log_keys)
    verdict = bundle.verify_bundle(data, subject=wheel, trust=trust)
    assert verdict.verified, verdict.reason
    assert verdict.signed_at == 1710888076 and verdict.identity == identity.subject
    unlogged = bundle.verify_bundle(data, subject=wheel, trust=CosignTrust(identities=[identity], roots=roots))
    assert not unlogged.verified and "expired at 2024-03-19T22:51:15Z" in unlogged.reason
    # An unreadable trusted root is logged and adds nothing.
    (tmp_path / "bad.json").write_text('{"mediaType": 1}')
    broken = TrustSource(Settings(signer=SignerSettings(sigstore_trusted_root=tmp_path / "bad.json")),
                         policies=None, keys=None)  # type: ignore[arg-type]
    assert broken.roots() == [] and broken.log_keys() == {}


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"mediaType":"x"}',
                                  b'{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}'])
def test_bundle_malformed(data: bytes) -> None:
    verdict = bundle.verify_bundle(data, subject=IMAGE, trust=CosignTrust())
    assert not verdict.verified and verdict.reason


def _notary(tmp_path: Path, ca: mk.Ca, **policy: object) -> NotationTrust:
    store = tmp_path / "store" / "x509" / "ca" / "test"
    store.mkdir(parents=True, exist_ok=True)
    (store / "root.pem").write_bytes(ca.pem())
    (tmp_path / "policy.json").write_text(json.dumps(mk.trust_policy(**policy)))  # type: ignore[arg-type]
    return load_trust(tmp_path / "store", tmp_path / "policy.json")


@pytest.mark.parametrize("envelope", ["jws", "cose"])
def test_notation_envelopes(tmp_path: Path, envelope: str) -> None:
    ca = mk.make_ca()
    private, cert = mk.make_leaf(ca)
    payload = mk.notary_payload(IMAGE, MT, 123)
    data, media_type = (mk.jws(private, [cert], payload), NOTATION_JWS) if envelope == "jws" else \
        (mk.cose(private, [cert], payload), NOTATION_COSE)
    trust = _notary(tmp_path, ca)
    ok = notation.verify_notation(data, media_type, repository="team/app", digest=IMAGE, trust=trust,
                                  subject_media_type=MT, subject_size=123)
    assert ok.verified, ok.reason
    assert "CN=signer" in ok.identity
    wrong_store = _notary(tmp_path / "other", mk.make_ca("Other Root"))
    refused = notation.verify_notation(data, media_type, repository="team/app", digest=IMAGE, trust=wrong_store,
                                       subject_media_type=MT, subject_size=123)
    assert not refused.verified and "trusted root" in refused.reason
    audit = _notary(tmp_path / "audit", mk.make_ca("Other Root"), level="audit")
    assert notation.verify_notation(data, media_type, repository="team/app", digest=IMAGE, trust=audit,
                                    subject_media_type=MT, subject_size=123).verified
    other = notation.verify_notation(data, media_type, repository="team/app", digest=OTHER, trust=trust)
    assert not other.verified and "signs another artifact" in other.reason
    size = notation.verify_notation(data, media_type, repository="team/app", digest=IMAGE, trust=trust,
                                    subject_media_type=MT, subject_size=124)
    assert not size.verified and "size" in size.reason


def test_notation_policy_rules(tmp_path: Path) -> None:
    ca = mk.make_ca()
    private, cert = mk.make_leaf(ca)
    payload = mk.notary_payload(IMAGE, MT, 1)
    trust = _notary(tmp_path, ca, identities=["x509.subject: C=US, O=Hanzo Test, CN=someone else"])
    refused = notation.verify_notation(mk.jws(private, [cert], payload), NOTATION_JWS, repository="a/b", digest=IMAGE,
                                       trust=trust)
    assert not refused.verified and "not a trusted identity" in refused.reason
    trust = _notary(tmp_path / "2", ca, identities=["x509.subject: C=US, O=Hanzo Test, CN=signer"])
    assert notation.verify_notation(mk.jws(private, [cert], payload), NOTATION_JWS, repository="a/b", digest=IMAGE,
                                    trust=trust).verified
    scoped = _notary(tmp_path / "3", ca, scopes=["localhost:5000/other/repo"])
    assert "no Notary trust policy" in notation.verify_notation(
        mk.jws(private, [cert], payload), NOTATION_JWS, repository="a/b", digest=IMAGE, trust=scoped).reason
    # Expired signature: strict refuses, permissive logs.
    past = datetime.now(UTC) - timedelta(hours=1)
    expired = mk.jws(private, [cert], payload, expiry=past)
    strict = _notary(tmp_path / "4", ca)
    assert "expired" in notation.verify_notation(expired, NOTATION_JWS, repository="a/b", digest=IMAGE,
                                                 trust=strict).reason
    permissive = _notary(tmp_path / "5", ca, level="permissive")
    lenient = notation.verify_notation(expired, NOTATION_JWS, repository="a/b", digest=IMAGE, trust=permissive)
    assert lenient.verified and "expiry not enforced" in lenient.reason
    # An expired certificate; an unknown critical header; a tampered envelope.
    _, old = mk.make_leaf(ca, key=private, not_before=datetime.now(UTC) - timedelta(days=10),
                          not_after=datetime.now(UTC) - timedelta(days=1))
    envelope = mk.jws(private, [old], payload, signing_time=datetime.now(UTC) - timedelta(days=2))
    stale = notation.verify_notation(envelope, NOTATION_JWS, repository="a/b", digest=IMAGE, trust=strict)
    assert not stale.verified and "expired" in stale.reason
    unknown = mk.jws(private, [cert], payload, extra_crit=["io.example.mystery"])
    assert "unknown critical" in notation.verify_notation(unknown, NOTATION_JWS, repository="a/b", digest=IMAGE,
                                                          trust=strict).reason
    doc = json.loads(mk.jws(private, [cert], payload))
    doc["payload"] = base64.urlsafe_b64encode(mk.notary_payload(OTHER, MT, 1)).decode().rstrip("=")
    assert "does not verify" in notation.verify_notation(json.dumps(doc).encode(), NOTATION_JWS, repository="a/b",
                                                         digest=IMAGE, trust=strict).reason
    truncated = json.loads(mk.jws(private, [cert], payload))
    truncated["header"]["x5c"] = [truncated["header"]["x5c"][0][:100]]
    assert "certificate" in notation.verify_notation(json.dumps(truncated).encode(), NOTATION_JWS, repository="a/b",
                                                     digest=IMAGE, trust=strict).reason


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([NOTATION_JWS, NOTATION_COSE, "application/x"]))
def test_notation_garbage_is_a_verdict(data: bytes, media_type: str) -> None:
    trust = NotationTrust(policies=[notation.TrustPolicy("p", ("*",), "strict")])
    verdict = notation.verify_notation(data, media_type, repository="a/b", digest=IMAGE, trust=trust)
    assert not verdict.verified and verdict.reason


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_bundle_and_cosign_garbage_is_a_verdict(data: bytes) -> None:
    assert not bundle.verify_bundle(data, subject=IMAGE, trust=trust_of(KEYS[0])).verified
    notes = {"dev.cosignproject.cosign/signature": base64.b64encode(data).decode()}
    assert not cosign.verify_simple_signing(data, notes, subject=IMAGE, trust=trust_of(KEYS[0])).verified
