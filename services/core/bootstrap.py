"""Composition root: builds the port adapters named by the settings. Nothing else picks adapters."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.core.activity import RequestActivity
from services.core.events.log import EventLog
from services.core.events.outbox import Outbox
from services.core.settings import (
    FilesystemBlobSettings,
    KafkaEventSettings,
    LocalEventSettings,
    MongoMetadataSettings,
    S3BlobSettings,
    Settings,
    SqliteMetadataSettings,
)
from services.core.storage.blobs import BlobStore
from services.core.storage.documents import DocumentStore
from services.core.storage.meta import MetadataStore
from services.core.telemetry import Metrics


def build_blob_store(settings: Settings) -> BlobStore:
    blobs = settings.storage.blobs
    if isinstance(blobs, S3BlobSettings):
        from services.core.storage.s3 import S3BlobStore

        return S3BlobStore(blobs)
    assert isinstance(blobs, FilesystemBlobSettings)
    from services.core.storage.fs import FilesystemBlobStore

    return FilesystemBlobStore(blobs.root or settings.data_dir / "blobs")


def build_document_store(settings: Settings) -> DocumentStore:
    meta = settings.metadata
    if isinstance(meta, MongoMetadataSettings):
        from services.core.storage.mongo import MongoDocumentStore

        return MongoDocumentStore.from_settings(meta)
    assert isinstance(meta, SqliteMetadataSettings)
    from services.core.storage.sqlite import SqliteDocumentStore

    return SqliteDocumentStore(meta.path or settings.data_dir / "metadata.db")


def build_event_log(settings: Settings) -> EventLog:
    events = settings.events
    if isinstance(events, KafkaEventSettings):
        from services.core.events.kafka import KafkaEventLog

        return KafkaEventLog(events.bootstrap_servers, client_id=events.client_id)
    assert isinstance(events, LocalEventSettings)
    from services.core.events.local import LocalEventLog

    return LocalEventLog(
        events.path or settings.data_dir / "events.db", retention_seconds=events.retention_hours * 3600
    )


@dataclass
class Container:
    """Every long-lived object a service needs, built once from settings."""

    settings: Settings
    metrics: Metrics
    blobs: BlobStore
    docs: DocumentStore
    meta: MetadataStore
    events: EventLog
    outbox: Outbox
    activity: RequestActivity = field(default_factory=RequestActivity)
    """Requests this process serves (the distribution app counts them; GC in the same process yields to them)."""


@contextlib.asynccontextmanager
async def container(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[Container]:
    """Open every adapter (and close them on exit, even after a failure)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        blobs = build_blob_store(settings)
        stack.push_async_callback(blobs.close)
        docs = build_document_store(settings)
        stack.push_async_callback(docs.close)
        events = build_event_log(settings)
        stack.push_async_callback(events.close)
        meta = MetadataStore(docs)
        await meta.setup()
        outbox = Outbox(docs)
        await outbox.setup()
        outbox.on_applied(meta.applied)  # this process's tag commits refresh its tag listings at once
        yield Container(
            settings=settings,
            metrics=metrics or Metrics(),
            blobs=blobs,
            docs=docs,
            meta=meta,
            events=events,
            outbox=outbox,
        )
