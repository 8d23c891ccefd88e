from services.core.proto.hanzo.registry.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyRequest(_message.Message):
    __slots__ = ("repository", "digest")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class SignatureCheck(_message.Message):
    __slots__ = ("signature_digest", "format", "key_id", "verified", "reason", "identity", "digest")
    SIGNATURE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    signature_digest: str
    format: _events_pb2.SignatureFormat
    key_id: str
    verified: bool
    reason: str
    identity: str
    digest: str
    def __init__(self, signature_digest: _Optional[str] = ..., format: _Optional[_Union[_events_pb2.SignatureFormat, str]] = ..., key_id: _Optional[str] = ..., verified: _Optional[bool] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("verified", "signatures")
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    verified: bool
    signatures: _containers.RepeatedCompositeFieldContainer[SignatureCheck]
    def __init__(self, verified: _Optional[bool] = ..., signatures: _Optional[_Iterable[_Union[SignatureCheck, _Mapping]]] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("repository", "digest", "key_id", "format", "actor", "docker_reference")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DOCKER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    key_id: str
    format: _events_pb2.SignatureFormat
    actor: str
    docker_reference: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., key_id: _Optional[str] = ..., format: _Optional[_Union[_events_pb2.SignatureFormat, str]] = ..., actor: _Optional[str] = ..., docker_reference: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("signature_digest", "key_id", "format")
    SIGNATURE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    signature_digest: str
    key_id: str
    format: _events_pb2.SignatureFormat
    def __init__(self, signature_digest: _Optional[str] = ..., key_id: _Optional[str] = ..., format: _Optional[_Union[_events_pb2.SignatureFormat, str]] = ...) -> None: ...
