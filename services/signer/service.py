"""Signer service (skeleton): consumes manifest pushes (signatures arrive as referrers); serves Signer gRPC."""

from __future__ import annotations

from services.core.bootstrap import Container
from services.core.proto.hanzo.registry.v1 import signer_pb2_grpc
from services.core.runtime import ServiceParts, logging_handler


async def build(c: Container) -> ServiceParts:
    return ServiceParts(
        name="signer",
        consumes=[(c.settings.topics.manifests, logging_handler("signer"))],
        grpc=[lambda server: signer_pb2_grpc.add_SignerServicer_to_server(signer_pb2_grpc.SignerServicer(), server)],
    )
