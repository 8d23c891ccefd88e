"""Replicator service (skeleton): follows manifest and tag events; serves the Replicator gRPC contract."""

from __future__ import annotations

from services.core.bootstrap import Container
from services.core.proto.hanzo.registry.v1 import replicator_pb2_grpc
from services.core.runtime import ServiceParts, logging_handler


async def build(c: Container) -> ServiceParts:
    topics = c.settings.topics
    handler = logging_handler("replicator")
    return ServiceParts(
        name="replicator",
        consumes=[(topics.manifests, handler), (topics.tags, handler)],
        grpc=[
            lambda server: replicator_pb2_grpc.add_ReplicatorServicer_to_server(
                replicator_pb2_grpc.ReplicatorServicer(), server
            )
        ],
    )
