"""GC control without servers: the in-process channel (a generated stub on it, aborts as AioRpcError), the
servicer's request mapping (grace_seconds, trigger, 409 material), and the CLI's table and wait loop."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.cli import gc as gc_cli
from services.cli.tag import TagCommandError, Target
from services.core.proto.hanzo.registry.v1 import gc_pb2, gc_pb2_grpc
from services.distribution.management_gc import InProcessChannel
from services.gc.runs import RunInProgressError, newest_key
from services.gc.service import GcServicer


class FakeRuns:
    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.busy: str | None = None

    async def start(self, *, trigger: str, dry_run: bool = False, grace_seconds: float | None = None) -> str:
        if self.busy:
            raise RunInProgressError(self.busy)
        self.started.append({"trigger": trigger, "dry_run": dry_run, "grace_seconds": grace_seconds})
        return f"run{len(self.started)}"

    async def get(self, run_id: str, *, limit: int | None = None) -> dict[str, Any] | None:
        if run_id != "run1":
            return None
        return {"id": "run1", "trigger": "cli", "dry_run": True, "status": "succeeded", "started": 10.0,
                "finished": 12.5, "manifests_deleted": 1, "blobs_deleted": 2, "bytes_freed": 30, "errors": 0,
                "error_messages": [], "deleted_total": 3,
                "deleted": [{"kind": "manifest", "repository": "team/app", "digest": "sha256:" + "a" * 64,
                             "size": 10}][:limit]}


def _stub(runs: FakeRuns) -> Any:
    servicer = GcServicer(runs)  # type: ignore[arg-type]
    channel = InProcessChannel([lambda server: gc_pb2_grpc.add_GcServicer_to_server(servicer, server)])  # type: ignore[no-untyped-call]
    return gc_pb2_grpc.GcStub(channel)  # type: ignore[no-untyped-call]


async def test_in_process_stub_maps_trigger_and_grace() -> None:
    runs = FakeRuns()
    stub = _stub(runs)
    answer = await stub.TriggerRun(gc_pb2.TriggerRunRequest(dry_run=True, grace_seconds=0.0,
                                                            trigger=gc_pb2.GC_TRIGGER_CLI))
    assert (answer.run_id, answer.started) == ("run1", True)
    await stub.TriggerRun(gc_pb2.TriggerRunRequest())
    assert runs.started == [{"trigger": "cli", "dry_run": True, "grace_seconds": 0.0},
                            {"trigger": "api", "dry_run": False, "grace_seconds": None}]
    runs.busy = "run9"
    refused = await stub.TriggerRun(gc_pb2.TriggerRunRequest())
    assert (refused.run_id, refused.started) == ("run9", False)


async def test_in_process_aborts_are_rpc_errors() -> None:
    stub = _stub(FakeRuns())
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetRun(gc_pb2.GetRunRequest(run_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.TriggerRun(gc_pb2.TriggerRunRequest(grace_seconds=-1.0))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = await stub.GetRun(gc_pb2.GetRunRequest(run_id="run1", limit=5))
    assert details.run.trigger == gc_pb2.GC_TRIGGER_CLI and details.run.state == gc_pb2.GC_RUN_STATE_SUCCEEDED
    assert details.deleted_total == 3 and details.deleted[0].kind == "manifest"
    assert details.run.finished_at.ToMilliseconds() == 12500


async def test_a_method_nobody_serves() -> None:
    channel = InProcessChannel([])
    stub = gc_pb2_grpc.GcStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRuns(gc_pb2.ListRunsRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_newest_key_sorts_newest_first() -> None:
    keys = [newest_key(t, "x") for t in (5.0, 1_700_000_000.25, 1_700_000_000.5, 4_000_000_000.0)]
    assert sorted(keys) == list(reversed(keys))


def test_history_table_and_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    record = {"id": "abc", "status": "running", "trigger": "cli", "dry_run": False, "started": "2025-01-01T03:00:00Z",
              "finished": None, "manifests_deleted": 0, "blobs_deleted": 0, "bytes_freed": 0, "errors": 0}
    table = gc_cli.history_table([record])
    assert table.splitlines()[0].split() == ["ID", "STATUS", "TRIGGER", "DRY", "STARTED", "FINISHED", "MANIFESTS",
                                             "BLOBS", "BYTES", "ERRORS"]
    assert table.splitlines()[1].split()[:4] == ["abc", "running", "cli", "no"]
    assert gc_cli.history_table([]) == "no GC runs yet\n"

    answers = [dict(record), dict(record), dict(record, status="succeeded", finished="2025-01-01T03:01:00Z")]
    monkeypatch.setattr(gc_cli, "connect", lambda target: target)
    monkeypatch.setattr(gc_cli, "details", lambda target, run_id, limit=1000: answers.pop(0))
    slept: list[float] = []
    done = gc_cli.wait(Target("http://x", "hanzo", "k"), "abc", sleep=slept.append)
    assert done["status"] == "succeeded" and len(slept) == 2
    assert "succeeded" in gc_cli.summary(done)

    monkeypatch.setattr(gc_cli, "details", lambda target, run_id, limit=1000: dict(record))
    ticks = iter([0.0, 0.5, 2.0])
    with pytest.raises(TagCommandError):
        gc_cli.wait(Target("http://x", "hanzo", "k"), "abc", timeout=1.0, sleep=lambda s: None,
                    clock=lambda: next(ticks))
