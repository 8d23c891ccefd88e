"""Distribution service: the OCI API, and the outbox relay that publishes its events."""

from __future__ import annotations

import logging

from services.core.bootstrap import Container
from services.core.events.outbox import OutboxRelay
from services.core.runtime import ServiceParts
from services.distribution.access import AccessControl, OpenAccess
from services.distribution.app import create_app

log = logging.getLogger(__name__)


def build_access(c: Container) -> AccessControl:
    if c.settings.auth.mode == "none":
        log.warning(
            "AUTHENTICATION IS OFF (auth.mode: none): anyone who reaches %s can push, pull and delete",
            c.settings.addr,
        )
        return OpenAccess()
    raise NotImplementedError("auth.mode: token is not available yet; set HANZO_REGISTRY_AUTH__MODE=none")


async def build(c: Container) -> ServiceParts:
    relay = OutboxRelay(
        c.docs,
        c.events,
        on_published=lambda topic: c.metrics.events_published.labels(topic=topic).inc(),
    )
    c.outbox.on_commit(relay.wake)
    topics = c.settings.topics
    return ServiceParts(
        name="distribution",
        http=create_app(c, access=build_access(c)),
        loops=[relay.run],
        produces=[topics.manifests, topics.tags, topics.blobs, topics.audit],
    )
