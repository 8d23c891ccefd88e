"""Envelopes as webhook events, delivery signatures, and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac

from services.core.events.envelope import new_envelope
from services.core.proto.hanzo.registry.v1 import events_pb2 as pb
from services.core.settings import WebhookSettings
from services.core.ssrf import Trust
from services.core.webhooks.model import Webhook
from services.core.webhooks.store import delivery_id, fired_key
from services.webhooks.delivery import next_attempt, signature, url_policy
from services.webhooks.events import PAYLOAD_EVENTS, webhook_event

D = "sha256:" + "a" * 64


def test_every_webhook_payload_maps_and_others_do_not() -> None:
    pushed = webhook_event(new_envelope(pb.ManifestPushed(repository="t/a", digest=D, tags=["v1"]), repository="t/a"))
    assert pushed is not None and pushed.type == "manifest.pushed" and pushed.tags == ("v1",)
    assert pushed.data["tags"] == ["v1"] and pushed.digest == D and pushed.time.endswith("Z")
    by_digest = webhook_event(new_envelope(pb.ManifestPushed(repository="t/a", digest=D), repository="t/a"))
    assert by_digest is not None and by_digest.tags == () and by_digest.tags_known
    tag = webhook_event(new_envelope(pb.TagUpdated(repository="t/a", tag="v2", digest=D), repository="t/a"))
    assert tag is not None and tag.type == "tag.updated" and tag.tags == ("v2",)
    scan = webhook_event(new_envelope(pb.ScanCompleted(repository="t/a", digest=D), repository="t/a"))
    assert scan is not None and scan.type == "scan.completed" and not scan.tags_known
    gc = webhook_event(new_envelope(pb.GcRunCompleted(run_id="r", bytes_freed=5), repository=""))
    assert gc is not None and gc.type == "gc.completed" and gc.repository == "" and gc.data["bytes_freed"] == "5"
    assert webhook_event(new_envelope(pb.BlobDeleted(repository="t/a", digest=D), repository="t/a")) is None
    assert webhook_event(new_envelope(pb.PolicyChanged(namespace="t"), repository="t")) is None
    fields = {f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert set(PAYLOAD_EVENTS) <= fields
    assert fields - set(PAYLOAD_EVENTS) == {"blob_deleted", "audit_entry", "policy_changed"}, (
        "a new event payload: map it in services/webhooks/events.py (or say here why it is not a webhook event)")


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"event":"tag.updated"}'
    assert signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_retry_schedule_doubles_and_stops_after_the_window() -> None:
    s = WebhookSettings(backoff_initial_seconds=10, backoff_max_seconds=3600, retry_for_seconds=86400)
    assert next_attempt(s, attempts=1, created=0, now=0) == 10
    assert next_attempt(s, attempts=3, created=0, now=100) == 140
    assert next_attempt(s, attempts=30, created=0, now=1000) == 1000 + 3600
    assert next_attempt(s, attempts=30, created=0, now=86000) is None


def test_trust_follows_the_scope() -> None:
    s = WebhookSettings(allow_private_targets=True)
    ns = Webhook(id="h", name="n", url="u", events=(), repositories="t/**", tag_pattern=None, namespace="t")
    wide = Webhook(id="h", name="n", url="u", events=(), repositories="**", tag_pattern=None)
    assert url_policy(ns, s).trust is Trust.UNTRUSTED and url_policy(ns, s).allow_private
    assert not url_policy(ns, WebhookSettings()).allow_private
    assert url_policy(wide, s).trust is Trust.TRUSTED


def test_ids_are_stable() -> None:
    assert delivery_id("h", "e", "t") == delivery_id("h", "e", "t") != delivery_id("h", "e", "u")
    assert fired_key("h", "r", "v1", D) != fired_key("h", "r", "v2", D)
