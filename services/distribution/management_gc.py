"""Garbage collection over the management API (registry admins), answered by the gc service over gRPC.

- `POST /v1/registry/admin/gc` starts a run: 202 `{"id", "status": "running"}`, or 409 naming the run in
  progress (one at a time across replicas).
- `GET /v1/registry/admin/gc/history?limit=N[&after=TOKEN]`: runs, newest first.
- `GET /v1/registry/admin/gc/runs/{id}`: one run and what it deleted (or, in a dry run, would delete).
- `GET /v1/registry/admin/storage`: bytes per namespace and repository, as the last run counted them.

The gc service owns its collections, so the gateway asks it (proto/hanzo/registry/v1/gc.proto). Where it
is reached is the one seam here, `GC_CHANNEL`:
- in the embedded assembly (`hanzo-registry serve`) `link_in_process` puts an InProcessChannel into the
  app: the gc servicer of the same process is called directly (messages still go through their wire
  encoding, so both assemblies run the same code paths);
- otherwise the gateway opens a gRPC channel to `gc.grpc_addr` (the gc process's `server.grpc_addr`) per
  call: these are rare admin requests. Neither: 405 UNSUPPORTED naming the setting (a gc service that
  does not answer: 503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, Literal

import grpc
from aiohttp import web
from google.protobuf.message import Message
from pydantic import Field

from services.core.auth.errors import NotFoundError
from services.core.errors import RegistryError, UnavailableError, UnsupportedError
from services.core.proto.hanzo.registry.v1 import gc_pb2, gc_pb2_grpc
from services.core.runtime import ServiceParts
from services.distribution.keys import SETTINGS
from services.distribution.management_api import Call, Requirement, Route
from services.distribution.management_models import Query, Request, Response, timestamp

CALL_TIMEOUT_SECONDS = 30.0


class GcRunInProgressError(RegistryError):
    code, status = "GC_RUN_IN_PROGRESS", 409


# the seam


class InProcessChannel:
    """The unary-unary half of a grpc.aio.Channel, over the servicers that `registrations` (a service's
    ServiceParts.grpc) add to a server: a generated stub works on it unchanged, and nothing goes over a
    socket. Requests and responses are encoded and decoded as on the wire; a servicer's abort raises
    grpc.aio.AioRpcError as a remote one does."""

    def __init__(self, registrations: Sequence[Callable[[Any], None]]) -> None:
        self._handlers: dict[str, Any] = {}
        for register in registrations:
            register(self)

    # what add_<Service>Servicer_to_server calls on a server
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the registered handlers below carry the same methods

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes],
                    response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Any]:
        async def invoke(request: Message, *, timeout: float | None = None, **__: Any) -> Any:
            handler = self._handlers.get(method)
            if handler is None:
                raise _rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served in this process")
            decoded = handler.request_deserializer(request_serializer(request))
            async with _deadline(timeout):
                response = await handler.unary_unary(decoded, _Context())
            return response_deserializer(handler.response_serializer(response))

        return invoke

    async def close(self) -> None:
        pass


class _Context:
    """The part of grpc.aio.ServicerContext the servicers use."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _rpc_error(code, details)

    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@contextlib.asynccontextmanager
async def _deadline(timeout: float | None) -> AsyncIterator[None]:
    if timeout is None:
        yield
        return
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None


GC_CHANNEL = web.AppKey("gc_channel", InProcessChannel)


def link_in_process(parts: Sequence[ServiceParts]) -> None:
    """When the distribution and gc services run in one process (`serve`), let the gateway call the gc
    servicer directly. Call before the app starts."""
    app = next((p.http for p in parts if p.name == "distribution"), None)
    gc = next((p for p in parts if p.name == "gc"), None)
    if app is not None and gc is not None:
        app[GC_CHANNEL] = InProcessChannel(gc.grpc)


@contextlib.asynccontextmanager
async def _stub(call: Call) -> AsyncIterator[gc_pb2_grpc.GcStub]:
    app = call.request.app
    local = app.get(GC_CHANNEL)
    if local is not None:
        yield gc_pb2_grpc.GcStub(local)  # type: ignore[no-untyped-call]
        return
    addr = app[SETTINGS].gc.grpc_addr
    if not addr:
        # Not an outage (retrying will not help): this deployment has not told the gateway where GC runs.
        raise UnsupportedError("garbage collection is not served by this gateway: the gc service is not in this "
                               "process and gc.grpc_addr is not set (set it to the gc service's server.grpc_addr)")
    async with grpc.aio.insecure_channel(addr) as channel:
        yield gc_pb2_grpc.GcStub(channel)  # type: ignore[no-untyped-call]


async def _ask(call: Call, method: str, request: Message) -> Any:
    async with _stub(call) as stub:
        try:
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(exc.details() or "not found") from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UnavailableError(f"the gc service does not answer: {exc.details()}"[:300],
                                       headers={"Retry-After": "10"}) from None
            raise


# models


Trigger = Literal["schedule", "api", "cli"]
Status = Literal["running", "succeeded", "failed"]


class NewGcRun(Request):
    dry_run: bool = Field(False, description="Find what would be deleted, delete nothing")
    grace_seconds: float | None = Field(
        None, ge=0, le=10 * 365 * 86400,
        description="Replaces every grace period for this run (the blob grace, the untagged age of every "
        "policy; idle uploads: at least a minute); null: the settings' and policies'")
    trigger: Literal["api", "cli"] = Field("api", description="Who asks: `cli` is hanzo-registry gc run")


class GcRunStarted(Response):
    id: str
    status: Literal["running"] = "running"


class GcRunRecord(Response):
    id: str
    trigger: Trigger
    dry_run: bool
    status: Status
    started: datetime
    finished: datetime | None = Field(description="Null while running")
    manifests_deleted: int = Field(description="Manifests deleted (in a dry run: that would be)")
    blobs_deleted: int = Field(description="Blobs deleted, bytes and every link (in a dry run: that would be)")
    bytes_freed: int = Field(description="Blob bytes deleted from storage (in a dry run: that would be)")
    errors: int = Field(description="Errors met; what failed is left for the next run")


class GcRunHistory(Response):
    runs: list[GcRunRecord] = Field(description="Newest first")
    next: str | None = Field(None, description="Pass as `after` for the next page; null on the last")


class GcHistoryQuery(Query):
    limit: int = Field(20, ge=1, le=1000)
    after: str | None = Field(None, max_length=200, description="`next` of the previous page")


class GcDeleted(Response):
    kind: Literal["manifest", "blob", "upload"]
    repository: str = Field(description="A manifest's repository; the repositories (comma-separated) that "
                            "linked a blob; empty for bytes no repository linked and for uploads")
    digest: str = Field(description="Digest, or an upload's id")
    size: int


class GcRunDetails(GcRunRecord):
    error: str = Field("", description="The first error, if any")
    deleted: list[GcDeleted] = Field(description="What the run deleted (or would), at most `limit` items")
    deleted_total: int = Field(description="How many items the run deleted (or would) in all")


class GcRunQuery(Query):
    limit: int = Field(1000, ge=1, le=10_000, description="Deleted items to list at most")


class StorageUsage(Response):
    measured: bool = Field(description="False before the first GC run that was not a dry run")
    measured_at: datetime | None = Field(description="When the run that counted finished")
    run: str | None = Field(description="The run that counted")
    total_bytes: int = Field(description="Blob bytes stored, every blob once")
    namespaces: dict[str, int] = Field(description="Bytes per namespace; a blob shared inside one counts once")
    repositories: dict[str, int] = Field(description="Bytes of the blobs each repository links")


_STATUS: dict[int, Status] = {gc_pb2.GC_RUN_STATE_RUNNING: "running", gc_pb2.GC_RUN_STATE_SUCCEEDED: "succeeded",
                              gc_pb2.GC_RUN_STATE_FAILED: "failed"}
_TRIGGER: dict[int, Trigger] = {gc_pb2.GC_TRIGGER_SCHEDULE: "schedule", gc_pb2.GC_TRIGGER_API: "api",
                                gc_pb2.GC_TRIGGER_CLI: "cli"}


def _time(value: Any) -> datetime:
    return timestamp(value.seconds + value.nanos / 1e9)


def _record(run: gc_pb2.GcRun) -> dict[str, Any]:
    return {
        "id": run.run_id, "trigger": _TRIGGER.get(run.trigger, "api"), "dry_run": run.dry_run,
        "status": _STATUS.get(run.state, "failed"), "started": _time(run.started_at),
        "finished": _time(run.finished_at) if run.HasField("finished_at") else None,
        "manifests_deleted": run.manifests_deleted, "blobs_deleted": run.blobs_deleted,
        "bytes_freed": run.bytes_freed, "errors": run.errors,
    }


# handlers


async def trigger_run(call: Call, body: NewGcRun) -> GcRunStarted:
    request = gc_pb2.TriggerRunRequest(dry_run=body.dry_run, trigger=gc_pb2.GC_TRIGGER_CLI
                                       if body.trigger == "cli" else gc_pb2.GC_TRIGGER_API)
    if body.grace_seconds is not None:
        request.grace_seconds = body.grace_seconds
    answer: gc_pb2.TriggerRunResponse = await _ask(call, "TriggerRun", request)
    if not answer.started:
        raise GcRunInProgressError(f"GC run {answer.run_id} is in progress",
                                   detail={"id": answer.run_id, "status": "running"})
    return GcRunStarted(id=answer.run_id, status="running")


async def run_history(call: Call) -> GcRunHistory:
    query: GcHistoryQuery = call.query
    answer: gc_pb2.ListRunsResponse = await _ask(
        call, "ListRuns", gc_pb2.ListRunsRequest(limit=query.limit, page_token=query.after or ""))
    return GcRunHistory(runs=[GcRunRecord(**_record(r)) for r in answer.runs], next=answer.next_page_token or None)


async def run_details(call: Call) -> GcRunDetails:
    query: GcRunQuery = call.query
    answer: gc_pb2.GetRunResponse = await _ask(call, "GetRun",
                                               gc_pb2.GetRunRequest(run_id=call.param("id"), limit=query.limit))
    deleted = [GcDeleted(kind=d.kind, repository=d.repository, digest=d.digest, size=d.size)
               for d in answer.deleted]
    return GcRunDetails(**_record(answer.run), error=answer.run.error, deleted=deleted,
                        deleted_total=answer.deleted_total)


async def storage_usage(call: Call) -> StorageUsage:
    answer: gc_pb2.GetStorageResponse = await _ask(call, "GetStorage", gc_pb2.GetStorageRequest())
    return StorageUsage(
        measured=answer.measured, run=answer.run_id or None,
        measured_at=_time(answer.measured_at) if answer.HasField("measured_at") else None,
        total_bytes=answer.total_bytes, namespaces=dict(sorted(answer.namespaces.items())),
        repositories=dict(sorted(answer.repositories.items())))


def gc_routes() -> list[Route]:
    """Fixed /admin paths: before the namespace routes."""
    admin = Requirement.REGISTRY_ADMIN
    return [
        Route("POST", "/admin/gc", trigger_run, admin,
              "Start a garbage-collection run (409 names the run in progress)", status=202,
              response=GcRunStarted, body=NewGcRun, errors=(405, 409, 503)),
        Route("GET", "/admin/gc/history", run_history, admin, "Garbage-collection runs, newest first",
              response=GcRunHistory, query=GcHistoryQuery, errors=(405, 503)),
        Route("GET", "/admin/gc/runs/{id}", run_details, admin,
              "A garbage-collection run and what it deleted (or, in a dry run, would delete)",
              response=GcRunDetails, query=GcRunQuery, errors=(404, 405, 503)),
        Route("GET", "/admin/storage", storage_usage, admin,
              "Bytes stored per namespace and repository, as the last garbage-collection run counted them",
              response=StorageUsage, errors=(405, 503)),
    ]
