import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GcTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GC_TRIGGER_UNSPECIFIED: _ClassVar[GcTrigger]
    GC_TRIGGER_SCHEDULE: _ClassVar[GcTrigger]
    GC_TRIGGER_API: _ClassVar[GcTrigger]
    GC_TRIGGER_CLI: _ClassVar[GcTrigger]

class GcRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GC_RUN_STATE_UNSPECIFIED: _ClassVar[GcRunState]
    GC_RUN_STATE_RUNNING: _ClassVar[GcRunState]
    GC_RUN_STATE_SUCCEEDED: _ClassVar[GcRunState]
    GC_RUN_STATE_FAILED: _ClassVar[GcRunState]
GC_TRIGGER_UNSPECIFIED: GcTrigger
GC_TRIGGER_SCHEDULE: GcTrigger
GC_TRIGGER_API: GcTrigger
GC_TRIGGER_CLI: GcTrigger
GC_RUN_STATE_UNSPECIFIED: GcRunState
GC_RUN_STATE_RUNNING: GcRunState
GC_RUN_STATE_SUCCEEDED: GcRunState
GC_RUN_STATE_FAILED: GcRunState

class TriggerRunRequest(_message.Message):
    __slots__ = ("dry_run", "grace_seconds", "trigger")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    grace_seconds: float
    trigger: GcTrigger
    def __init__(self, dry_run: _Optional[bool] = ..., grace_seconds: _Optional[float] = ..., trigger: _Optional[_Union[GcTrigger, str]] = ...) -> None: ...

class TriggerRunResponse(_message.Message):
    __slots__ = ("run_id", "started")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    started: bool
    def __init__(self, run_id: _Optional[str] = ..., started: _Optional[bool] = ...) -> None: ...

class GcRun(_message.Message):
    __slots__ = ("run_id", "state", "dry_run", "started_at", "finished_at", "blobs_deleted", "bytes_freed", "manifests_deleted", "error", "trigger", "errors")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: GcRunState
    dry_run: bool
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    blobs_deleted: int
    bytes_freed: int
    manifests_deleted: int
    error: str
    trigger: GcTrigger
    errors: int
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[GcRunState, str]] = ..., dry_run: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., blobs_deleted: _Optional[int] = ..., bytes_freed: _Optional[int] = ..., manifests_deleted: _Optional[int] = ..., error: _Optional[str] = ..., trigger: _Optional[_Union[GcTrigger, str]] = ..., errors: _Optional[int] = ...) -> None: ...

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

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "limit")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    limit: int
    def __init__(self, run_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GcDeletedItem(_message.Message):
    __slots__ = ("kind", "repository", "digest", "size")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    repository: str
    digest: str
    size: int
    def __init__(self, kind: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run", "deleted", "deleted_total")
    RUN_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DELETED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    run: GcRun
    deleted: _containers.RepeatedCompositeFieldContainer[GcDeletedItem]
    deleted_total: int
    def __init__(self, run: _Optional[_Union[GcRun, _Mapping]] = ..., deleted: _Optional[_Iterable[_Union[GcDeletedItem, _Mapping]]] = ..., deleted_total: _Optional[int] = ...) -> None: ...

class GetStorageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStorageResponse(_message.Message):
    __slots__ = ("measured", "run_id", "measured_at", "total_bytes", "namespaces", "repositories")
    class NamespacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RepositoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    measured: bool
    run_id: str
    measured_at: _timestamp_pb2.Timestamp
    total_bytes: int
    namespaces: _containers.ScalarMap[str, int]
    repositories: _containers.ScalarMap[str, int]
    def __init__(self, measured: _Optional[bool] = ..., run_id: _Optional[str] = ..., measured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_bytes: _Optional[int] = ..., namespaces: _Optional[_Mapping[str, int]] = ..., repositories: _Optional[_Mapping[str, int]] = ...) -> None: ...
