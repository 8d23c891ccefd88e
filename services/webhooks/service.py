"""Webhooks service: consumes the registry's event topics in groups of its own (`hanzo-registry.webhooks.<topic>`,
one per topic, so that its consumers never rebalance each other), so an event that arrives while it is down is
delivered when it is back, and sends the queued deliveries."""

from __future__ import annotations

from services.core.bootstrap import Container
from services.core.deploy_checks import MetadataDeployChecks
from services.core.runtime import ServiceParts
from services.core.webhooks.store import DeliveryStore, WebhookStore
from services.webhooks.delivery import Sender
from services.webhooks.dispatch import Dispatcher
from services.webhooks.events import TOPIC_SETTINGS
from services.webhooks.metrics import WebhookMetrics


async def build(c: Container) -> ServiceParts:
    s = c.settings
    hooks = WebhookStore(c.docs, master_key=s.signer.master_key)
    deliveries = DeliveryStore(c.docs)
    checks = MetadataDeployChecks(c.docs, default_policy=s.policy.default)
    await hooks.setup()
    await deliveries.setup()
    await checks.setup()
    metrics = WebhookMetrics(c.metrics)
    sender = Sender(hooks=hooks, deliveries=deliveries, settings=s.webhooks, metrics=metrics)
    dispatcher = Dispatcher(hooks=hooks, deliveries=deliveries, meta=c.meta, checks=checks, metrics=metrics,
                            wake=sender.wake)
    topics = sorted({str(getattr(s.topics, name)) for name in TOPIC_SETTINGS})
    return ServiceParts(
        name="webhooks",
        consumes=[(topic, dispatcher.handle) for topic in topics],
        loops=[sender.run],
        group_per_topic=True,
    )
