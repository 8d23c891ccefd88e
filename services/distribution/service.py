"""Distribution service: the OCI API, and the outbox relay that publishes its events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.core.activity import ActivityBeacon
from services.core.bootstrap import Container
from services.core.events.outbox import OutboxRelay
from services.core.runtime import ServiceParts
from services.distribution.access import AccessControl, OpenAccess
from services.distribution.app import create_app
from services.distribution.auth_access import build_token_access
from services.distribution.janitor import UploadJanitor
from services.distribution.keys import GATES
from services.distribution.replica_caches import ReplicaCacheInvalidation
from services.distribution.tls import CertificateReloader, server_context

log = logging.getLogger(__name__)


async def build_access(c: Container) -> AccessControl:
    if c.settings.auth.mode == "none":
        log.warning(
            "AUTHENTICATION IS OFF (auth.mode: none): anyone who reaches %s can push, pull and delete",
            c.settings.addr,
        )
        return OpenAccess()
    return await build_token_access(c)


async def build(c: Container) -> ServiceParts:
    relay = OutboxRelay(
        c.docs,
        c.events,
        on_published=lambda topic: c.metrics.events_published.labels(topic=topic).inc(),
        on_pending=c.metrics.outbox_pending.set,
    )
    c.outbox.on_commit(relay.wake)
    janitor = UploadJanitor(c.blobs, c.meta, expiry_seconds=c.settings.registry.upload_expiry_seconds)
    topics = c.settings.topics
    loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [relay.run, janitor.run]
    if c.settings.metadata.kind != "sqlite":
        # A gc service of its own shares only the store: it paces its runs while some replica serves requests.
        loops.append(ActivityBeacon(c.activity, c.docs).run)
    tls = c.settings.server.tls
    context = None
    if tls.enabled:
        context = server_context(tls)
        loops.append(CertificateReloader(tls, context).run)
    app = create_app(c, access=await build_access(c))
    # Scan reports, signature results and policy changes refresh this replica's pull-gate decisions; tags
    # created or deleted by other replicas, its tag listings.
    caches = [topics.scans, topics.signatures, topics.manifests, topics.tags]
    # Tag names are kept only once the follower reads every topic (it turns keep_tag_names on): it starts at
    # the topics' heads, so a tag event published before would never drop names kept from before it.
    loops.append(ReplicaCacheInvalidation(c.events, caches, app[GATES], c.meta, c.outbox,
                                          tag_list_seconds=c.settings.registry.tag_list_cache_seconds).run)
    return ServiceParts(
        name="distribution",
        http=app,
        loops=loops,
        produces=[topics.manifests, topics.tags, topics.blobs, topics.audit],
        ssl_context=context,
    )
