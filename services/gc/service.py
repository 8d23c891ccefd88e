"""GC service (skeleton): follows manifest, tag and blob events; serves the Gc gRPC contract."""

from __future__ import annotations

from services.core.bootstrap import Container
from services.core.proto.hanzo.registry.v1 import gc_pb2_grpc
from services.core.runtime import ServiceParts, logging_handler


async def build(c: Container) -> ServiceParts:
    topics = c.settings.topics
    handler = logging_handler("gc")
    return ServiceParts(
        name="gc",
        consumes=[(topics.manifests, handler), (topics.tags, handler), (topics.blobs, handler)],
        grpc=[lambda server: gc_pb2_grpc.add_GcServicer_to_server(gc_pb2_grpc.GcServicer(), server)],
    )
