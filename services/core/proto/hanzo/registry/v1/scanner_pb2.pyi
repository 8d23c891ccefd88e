import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from services.core.proto.hanzo.registry.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetReportRequest(_message.Message):
    __slots__ = ("repository", "digest")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class Vulnerability(_message.Message):
    __slots__ = ("id", "package_name", "installed_version", "fixed_version", "severity", "title", "ignored", "aliases", "ecosystem", "purl", "cvss_score", "layer")
    ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIXED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ECOSYSTEM_FIELD_NUMBER: _ClassVar[int]
    PURL_FIELD_NUMBER: _ClassVar[int]
    CVSS_SCORE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    id: str
    package_name: str
    installed_version: str
    fixed_version: str
    severity: str
    title: str
    ignored: bool
    aliases: _containers.RepeatedScalarFieldContainer[str]
    ecosystem: str
    purl: str
    cvss_score: float
    layer: str
    def __init__(self, id: _Optional[str] = ..., package_name: _Optional[str] = ..., installed_version: _Optional[str] = ..., fixed_version: _Optional[str] = ..., severity: _Optional[str] = ..., title: _Optional[str] = ..., ignored: _Optional[bool] = ..., aliases: _Optional[_Iterable[str]] = ..., ecosystem: _Optional[str] = ..., purl: _Optional[str] = ..., cvss_score: _Optional[float] = ..., layer: _Optional[str] = ...) -> None: ...

class ScanReport(_message.Message):
    __slots__ = ("report_id", "repository", "digest", "scanner", "status", "severity_counts", "vulnerabilities", "scanned_at", "error", "state", "db_updated_at")
    class SeverityCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SCANNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    VULNERABILITIES_FIELD_NUMBER: _ClassVar[int]
    SCANNED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DB_UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    repository: str
    digest: str
    scanner: str
    status: _events_pb2.ScanStatus
    severity_counts: _containers.ScalarMap[str, int]
    vulnerabilities: _containers.RepeatedCompositeFieldContainer[Vulnerability]
    scanned_at: _timestamp_pb2.Timestamp
    error: str
    state: str
    db_updated_at: _timestamp_pb2.Timestamp
    def __init__(self, report_id: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., scanner: _Optional[str] = ..., status: _Optional[_Union[_events_pb2.ScanStatus, str]] = ..., severity_counts: _Optional[_Mapping[str, int]] = ..., vulnerabilities: _Optional[_Iterable[_Union[Vulnerability, _Mapping]]] = ..., scanned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., state: _Optional[str] = ..., db_updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: ScanReport
    def __init__(self, report: _Optional[_Union[ScanReport, _Mapping]] = ...) -> None: ...

class RescanRequest(_message.Message):
    __slots__ = ("repository", "digest")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class RescanResponse(_message.Message):
    __slots__ = ("queued",)
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    queued: bool
    def __init__(self, queued: _Optional[bool] = ...) -> None: ...
