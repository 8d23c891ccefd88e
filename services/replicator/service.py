"""Replicator service: follows manifest and tag events (a consumer group per topic), copies what its rules
match to their targets (services/replicator/engine.py), and serves the Replicator gRPC contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc

from services.core.bootstrap import Container
from services.core.proto.hanzo.registry.v1 import replicator_pb2, replicator_pb2_grpc
from services.core.runtime import ServiceParts
from services.replicator.engine import Replicator, RuleNotFoundError
from services.replicator.metrics import ReplicatorMetrics


def _stamp(target: Any, value: float | None) -> None:
    if value:
        target.FromDatetime(datetime.fromtimestamp(value, UTC))


class ReplicatorServicer(replicator_pb2_grpc.ReplicatorServicer):
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator

    async def GetStatus(self, request: replicator_pb2.GetStatusRequest, context: Any
                        ) -> replicator_pb2.GetStatusResponse:
        try:
            states = await self.replicator.status(request.rule)
        except RuleNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise  # pragma: no cover - abort raises
        out = replicator_pb2.GetStatusResponse()
        now = self.replicator._clock()
        lagging_after = self.replicator.settings.lagging_after_seconds
        for rule, st in states:
            entry = out.rules.add(rule=rule.name, target_registry=rule.target.registry, pending=st.pending,
                                  succeeded_total=st.succeeded_total, failed_total=st.failed_total,
                                  last_error=st.last_error, state=st.state(now, lagging_after=lagging_after),
                                  lag_seconds=st.lag_seconds(now), copied_manifests=st.copied_manifests,
                                  copied_bytes=st.copied_bytes, last_event_id=st.last_event_id)
            _stamp(entry.last_success_at, st.last_success)
            _stamp(entry.last_error_at, st.last_error_at)
        return out

    async def Resync(self, request: replicator_pb2.ResyncRequest, context: Any) -> replicator_pb2.ResyncResponse:
        if not request.rule:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rule is required")
        try:
            queued = await self.replicator.resync(request.rule, repository=request.repository)
        except RuleNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise  # pragma: no cover - abort raises
        return replicator_pb2.ResyncResponse(queued=queued)


def build_replicator(c: Container) -> Replicator:
    return Replicator(docs=c.docs, meta=c.meta, blobs=c.blobs, outbox=c.outbox, settings=c.settings,
                      metrics=ReplicatorMetrics(c.metrics))


async def build(c: Container) -> ServiceParts:
    topics = c.settings.topics
    replicator = build_replicator(c)
    await replicator.setup()
    servicer = ReplicatorServicer(replicator)

    def register(server: grpc.aio.Server) -> None:
        replicator_pb2_grpc.add_ReplicatorServicer_to_server(servicer, server)

    return ServiceParts(
        name="replicator",
        consumes=[(topics.manifests, replicator.handle), (topics.tags, replicator.handle)],
        produces=[topics.replication],
        grpc=[register],
        loops=[replicator.run, replicator.schedule_loop],
        # Two topics: one group each, so the consumers never stall each other in a rebalance (the group of
        # both took ~3 s to settle at every start, which the first events after a start waited for).
        group_per_topic=True,
    )
