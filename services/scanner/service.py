"""Scanner service (skeleton): consumes manifest pushes; serves the Scanner gRPC contract."""

from __future__ import annotations

from services.core.bootstrap import Container
from services.core.proto.hanzo.registry.v1 import scanner_pb2_grpc
from services.core.runtime import ServiceParts, logging_handler


async def build(c: Container) -> ServiceParts:
    return ServiceParts(
        name="scanner",
        consumes=[(c.settings.topics.manifests, logging_handler("scanner"))],
        grpc=[
            lambda server: scanner_pb2_grpc.add_ScannerServicer_to_server(scanner_pb2_grpc.ScannerServicer(), server)
        ],
    )
