"""The signer's metrics: verifications by format and outcome, failures by reason (a bounded category)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.core.telemetry import Metrics

REASONS = (
    ("pending", ("pending", "not in the repository yet")),
    ("untrusted", ("no trusted key", "not one the policy trusts", "not a trusted identity", "no trusted root",
                   "does not lead to a trusted root", "no Notary trust policy")),
    ("wrong-image", ("signs another", "not the artifact's")),
    ("expired", ("expired", "not valid before")),
    ("bad-signature", ("does not verify",)),
    ("digest-mismatch", ("does not match the digest",)),
    ("certificate", ("certificate",)),
    ("missing", ("missing", "has no signature", "no signature layer")),
    ("malformed", ("not JSON", "malformed", "not base64", "not CBOR", "not a", "has no", "unknown critical")),
)


def reason_category(reason: str) -> str:
    for category, needles in REASONS:
        if any(n in reason for n in needles):
            return category
    return "other"


class SignerMetrics:
    def __init__(self, metrics: Metrics) -> None:
        reg: CollectorRegistry = metrics.registry
        self.verifications = _counter(reg, "hanzo_registry_signature_verifications_total",
                                      "Signatures checked by the signer, by format and outcome "
                                      "(verified, failed, pending).", ["format", "outcome"])
        self.failures = _counter(reg, "hanzo_registry_signature_failures_total",
                                 "Signatures that did not verify, by format and reason category.",
                                 ["format", "reason"])
        self.signed = _counter(reg, "hanzo_registry_signatures_made_total",
                               "Signatures made with managed keys.", ["format"])


def _counter(registry: CollectorRegistry, name: str, doc: str, labels: list[str]) -> Counter:
    existing = getattr(registry, "_names_to_collectors", {}).get(name.removesuffix("_total"))
    if isinstance(existing, Counter):
        return existing
    return Counter(name, doc, labels, registry=registry)
