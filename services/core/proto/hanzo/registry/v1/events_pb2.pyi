import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScanStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCAN_STATUS_UNSPECIFIED: _ClassVar[ScanStatus]
    SCAN_STATUS_SUCCEEDED: _ClassVar[ScanStatus]
    SCAN_STATUS_FAILED: _ClassVar[ScanStatus]
    SCAN_STATUS_UNSUPPORTED: _ClassVar[ScanStatus]

class SignatureFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_FORMAT_UNSPECIFIED: _ClassVar[SignatureFormat]
    SIGNATURE_FORMAT_COSIGN: _ClassVar[SignatureFormat]
    SIGNATURE_FORMAT_NOTATION: _ClassVar[SignatureFormat]
    SIGNATURE_FORMAT_COSIGN_BUNDLE: _ClassVar[SignatureFormat]

class ReplicationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_STATUS_UNSPECIFIED: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_SUCCEEDED: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_FAILED: _ClassVar[ReplicationStatus]
    REPLICATION_STATUS_SKIPPED: _ClassVar[ReplicationStatus]

class AuditOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_OUTCOME_UNSPECIFIED: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_SUCCESS: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_DENIED: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_FAILURE: _ClassVar[AuditOutcome]
SCAN_STATUS_UNSPECIFIED: ScanStatus
SCAN_STATUS_SUCCEEDED: ScanStatus
SCAN_STATUS_FAILED: ScanStatus
SCAN_STATUS_UNSUPPORTED: ScanStatus
SIGNATURE_FORMAT_UNSPECIFIED: SignatureFormat
SIGNATURE_FORMAT_COSIGN: SignatureFormat
SIGNATURE_FORMAT_NOTATION: SignatureFormat
SIGNATURE_FORMAT_COSIGN_BUNDLE: SignatureFormat
REPLICATION_STATUS_UNSPECIFIED: ReplicationStatus
REPLICATION_STATUS_SUCCEEDED: ReplicationStatus
REPLICATION_STATUS_FAILED: ReplicationStatus
REPLICATION_STATUS_SKIPPED: ReplicationStatus
AUDIT_OUTCOME_UNSPECIFIED: AuditOutcome
AUDIT_OUTCOME_SUCCESS: AuditOutcome
AUDIT_OUTCOME_DENIED: AuditOutcome
AUDIT_OUTCOME_FAILURE: AuditOutcome

class Envelope(_message.Message):
    __slots__ = ("id", "type", "time", "schema_version", "traceparent", "tracestate", "repository", "actor", "manifest_pushed", "manifest_deleted", "tag_updated", "tag_deleted", "blob_deleted", "scan_completed", "signature_verified", "replication_completed", "gc_run_completed", "audit_entry", "policy_changed")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_PUSHED_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DELETED_FIELD_NUMBER: _ClassVar[int]
    TAG_UPDATED_FIELD_NUMBER: _ClassVar[int]
    TAG_DELETED_FIELD_NUMBER: _ClassVar[int]
    BLOB_DELETED_FIELD_NUMBER: _ClassVar[int]
    SCAN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    GC_RUN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ENTRY_FIELD_NUMBER: _ClassVar[int]
    POLICY_CHANGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    time: _timestamp_pb2.Timestamp
    schema_version: int
    traceparent: str
    tracestate: str
    repository: str
    actor: str
    manifest_pushed: ManifestPushed
    manifest_deleted: ManifestDeleted
    tag_updated: TagUpdated
    tag_deleted: TagDeleted
    blob_deleted: BlobDeleted
    scan_completed: ScanCompleted
    signature_verified: SignatureVerified
    replication_completed: ReplicationCompleted
    gc_run_completed: GcRunCompleted
    audit_entry: AuditEntry
    policy_changed: PolicyChanged
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ..., repository: _Optional[str] = ..., actor: _Optional[str] = ..., manifest_pushed: _Optional[_Union[ManifestPushed, _Mapping]] = ..., manifest_deleted: _Optional[_Union[ManifestDeleted, _Mapping]] = ..., tag_updated: _Optional[_Union[TagUpdated, _Mapping]] = ..., tag_deleted: _Optional[_Union[TagDeleted, _Mapping]] = ..., blob_deleted: _Optional[_Union[BlobDeleted, _Mapping]] = ..., scan_completed: _Optional[_Union[ScanCompleted, _Mapping]] = ..., signature_verified: _Optional[_Union[SignatureVerified, _Mapping]] = ..., replication_completed: _Optional[_Union[ReplicationCompleted, _Mapping]] = ..., gc_run_completed: _Optional[_Union[GcRunCompleted, _Mapping]] = ..., audit_entry: _Optional[_Union[AuditEntry, _Mapping]] = ..., policy_changed: _Optional[_Union[PolicyChanged, _Mapping]] = ...) -> None: ...

class ManifestPushed(_message.Message):
    __slots__ = ("repository", "digest", "media_type", "size", "tags", "subject_digest", "artifact_type", "actor", "config_media_type")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    media_type: str
    size: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    subject_digest: str
    artifact_type: str
    actor: str
    config_media_type: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., subject_digest: _Optional[str] = ..., artifact_type: _Optional[str] = ..., actor: _Optional[str] = ..., config_media_type: _Optional[str] = ...) -> None: ...

class ManifestDeleted(_message.Message):
    __slots__ = ("repository", "digest", "subject_digest", "actor")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    subject_digest: str
    actor: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., subject_digest: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class TagUpdated(_message.Message):
    __slots__ = ("repository", "tag", "digest", "previous_digest", "actor", "forced")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    repository: str
    tag: str
    digest: str
    previous_digest: str
    actor: str
    forced: bool
    def __init__(self, repository: _Optional[str] = ..., tag: _Optional[str] = ..., digest: _Optional[str] = ..., previous_digest: _Optional[str] = ..., actor: _Optional[str] = ..., forced: _Optional[bool] = ...) -> None: ...

class TagDeleted(_message.Message):
    __slots__ = ("repository", "tag", "digest", "actor")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    repository: str
    tag: str
    digest: str
    actor: str
    def __init__(self, repository: _Optional[str] = ..., tag: _Optional[str] = ..., digest: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class BlobDeleted(_message.Message):
    __slots__ = ("repository", "digest", "actor")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    actor: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ScanCompleted(_message.Message):
    __slots__ = ("repository", "digest", "scanner", "severity_counts", "report_id", "status")
    class SeverityCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SCANNER_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    scanner: str
    severity_counts: _containers.ScalarMap[str, int]
    report_id: str
    status: ScanStatus
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., scanner: _Optional[str] = ..., severity_counts: _Optional[_Mapping[str, int]] = ..., report_id: _Optional[str] = ..., status: _Optional[_Union[ScanStatus, str]] = ...) -> None: ...

class SignatureVerified(_message.Message):
    __slots__ = ("repository", "digest", "signature_digest", "format", "key_id", "verified", "reason", "identity", "issuer", "index")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    signature_digest: str
    format: SignatureFormat
    key_id: str
    verified: bool
    reason: str
    identity: str
    issuer: str
    index: int
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., signature_digest: _Optional[str] = ..., format: _Optional[_Union[SignatureFormat, str]] = ..., key_id: _Optional[str] = ..., verified: _Optional[bool] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ..., issuer: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ReplicationCompleted(_message.Message):
    __slots__ = ("rule", "source_registry", "target_registry", "repository", "digest", "status", "error", "tag")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REGISTRY_FIELD_NUMBER: _ClassVar[int]
    TARGET_REGISTRY_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    rule: str
    source_registry: str
    target_registry: str
    repository: str
    digest: str
    status: ReplicationStatus
    error: str
    tag: str
    def __init__(self, rule: _Optional[str] = ..., source_registry: _Optional[str] = ..., target_registry: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., status: _Optional[_Union[ReplicationStatus, str]] = ..., error: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class GcRunCompleted(_message.Message):
    __slots__ = ("run_id", "blobs_deleted", "bytes_freed", "manifests_deleted", "dry_run", "started_at", "finished_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    blobs_deleted: int
    bytes_freed: int
    manifests_deleted: int
    dry_run: bool
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., blobs_deleted: _Optional[int] = ..., bytes_freed: _Optional[int] = ..., manifests_deleted: _Optional[int] = ..., dry_run: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("actor", "action", "resource", "outcome", "source_address", "detail")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    actor: str
    action: str
    resource: str
    outcome: AuditOutcome
    source_address: str
    detail: _containers.ScalarMap[str, str]
    def __init__(self, actor: _Optional[str] = ..., action: _Optional[str] = ..., resource: _Optional[str] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., source_address: _Optional[str] = ..., detail: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PolicyChanged(_message.Message):
    __slots__ = ("namespace", "repository", "actor", "deleted")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    repository: str
    actor: str
    deleted: bool
    def __init__(self, namespace: _Optional[str] = ..., repository: _Optional[str] = ..., actor: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...
