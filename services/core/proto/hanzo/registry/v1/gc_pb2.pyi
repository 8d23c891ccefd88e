import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GcRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GC_RUN_STATE_UNSPECIFIED: _ClassVar[GcRunState]
    GC_RUN_STATE_RUNNING: _ClassVar[GcRunState]
    GC_RUN_STATE_SUCCEEDED: _ClassVar[GcRunState]
    GC_RUN_STATE_FAILED: _ClassVar[GcRunState]
GC_RUN_STATE_UNSPECIFIED: GcRunState
GC_RUN_STATE_RUNNING: GcRunState
GC_RUN_STATE_SUCCEEDED: GcRunState
GC_RUN_STATE_FAILED: GcRunState

class TriggerRunRequest(_message.Message):
    __slots__ = ("dry_run", "delete_untagged")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    DELETE_UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    delete_untagged: bool
    def __init__(self, dry_run: _Optional[bool] = ..., delete_untagged: _Optional[bool] = ...) -> None: ...

class TriggerRunResponse(_message.Message):
    __slots__ = ("run_id", "started")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    started: bool
    def __init__(self, run_id: _Optional[str] = ..., started: _Optional[bool] = ...) -> None: ...

class GcRun(_message.Message):
    __slots__ = ("run_id", "state", "dry_run", "started_at", "finished_at", "blobs_deleted", "bytes_freed", "manifests_deleted", "error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: GcRunState
    dry_run: bool
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    blobs_deleted: int
    bytes_freed: int
    manifests_deleted: int
    error: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[GcRunState, str]] = ..., dry_run: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., blobs_deleted: _Optional[int] = ..., bytes_freed: _Optional[int] = ..., manifests_deleted: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[GcRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[GcRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
