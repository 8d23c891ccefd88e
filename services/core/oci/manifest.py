"""Parsing and validation of pushed manifests and indexes, and the referrers index document."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any, Final, NoReturn

from services.core.errors import DigestInvalidError, ManifestInvalidError, ManifestTooLargeError
from services.core.oci import mediatypes as mt
from services.core.oci.digest import Digest
from services.core.oci.platform import Platform

MAX_DESCRIPTOR_SIZE: Final = 2**63 - 1
"""Descriptor sizes are int64 in the spec; anything larger cannot be a real blob."""

SCHEMA1_MESSAGE: Final = (
    "Docker schema 1 manifests are not supported; push with a current client (schema 2 / OCI)"
)


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor inside a manifest: what it points at and how big it is."""

    media_type: str
    digest: Digest
    size: int
    _: KW_ONLY
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=_frozen, hash=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.media_type:
            raise ManifestInvalidError("descriptor mediaType must not be empty")
        if not 0 <= self.size <= MAX_DESCRIPTOR_SIZE:
            raise ManifestInvalidError(f"descriptor size {self.size} is out of range")
        # Copy so a caller's dict cannot change a frozen record behind its back.
        object.__setattr__(self, "annotations", _frozen(self.annotations))
        object.__setattr__(self, "urls", tuple(self.urls))

    @property
    def is_foreign(self) -> bool:
        """A nondistributable layer fetched from its `urls`: the registry never holds its bytes."""
        return bool(self.urls) and self.media_type in mt.NONDISTRIBUTABLE_LAYER_TYPES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out


@dataclass(frozen=True, slots=True)
class ReferrerDescriptor:
    """One entry of a referrers response: a manifest whose `subject` is the requested digest."""

    media_type: str
    digest: Digest
    size: int
    _: KW_ONLY
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=_frozen, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen(self.annotations))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A validated manifest or index; `digest` is the sha256 of the exact pushed bytes."""

    media_type: str
    digest: Digest
    size: int
    _: KW_ONLY
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=_frozen, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen(self.annotations))

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_TYPES

    @property
    def blob_references(self) -> tuple[Descriptor, ...]:
        """Config then layers that must exist as blobs in the registry, first occurrence of each digest.

        Foreign layers are left out: their bytes live at their `urls`, never pushed here.
        """
        seen: set[Digest] = set()
        out: list[Descriptor] = []
        for descriptor in (*((self.config,) if self.config else ()), *self.layers):
            if descriptor.is_foreign or descriptor.digest in seen:
                continue
            seen.add(descriptor.digest)
            out.append(descriptor)
        return tuple(out)

    @property
    def child_manifests(self) -> tuple[Descriptor, ...]:
        """Manifests an index lists (empty for image manifests)."""
        return self.manifests

    @property
    def referrer_artifact_type(self) -> str | None:
        """The artifact type the referrers API reports: `artifactType`, else the config's media type."""
        if self.artifact_type is not None:
            return self.artifact_type
        if self.config is not None and not self.is_index:
            return self.config.media_type
        return None

    def as_referrer(self) -> ReferrerDescriptor:
        """This manifest as an entry of its subject's referrers list."""
        return ReferrerDescriptor(
            self.media_type,
            self.digest,
            self.size,
            artifact_type=self.referrer_artifact_type,
            annotations=self.annotations,
        )


def parse_manifest(data: bytes, content_type: str | None, *, max_bytes: int) -> ParsedManifest:
    """Validate a pushed manifest body against its Content-Type.

    Raises ManifestTooLargeError above `max_bytes` and ManifestInvalidError (with the offending
    field in the message and `detail`) for anything malformed. Unknown config, layer and artifact
    media types are accepted, as the spec requires; unknown manifest media types are not.
    """
    if len(data) > max_bytes:
        raise ManifestTooLargeError(
            f"manifest is {len(data)} bytes; the limit is {max_bytes} bytes",
            detail={"size": len(data), "limit": max_bytes},
        )
    obj = _load_object(data)
    header = _header_media_type(content_type)
    _check_schema_version(obj, header)
    media_type = _resolve_media_type(obj, header)

    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if media_type in mt.INDEX_TYPES:
        # A body that could be read as either kind is a confusion attack; distribution rejects it too.
        if "config" in obj or "layers" in obj:
            _fail("manifest", f"is an index ({media_type}) but has config or layers")
        manifests = _descriptor_list(obj, "manifests")
    else:
        if "manifests" in obj:
            _fail("manifest", f"is an image manifest ({media_type}) but has manifests")
        if "config" not in obj:
            _fail("config", "is required in an image manifest")
        config = _descriptor(obj["config"], "config")
        layers = _descriptor_list(obj, "layers")

    subject = obj.get("subject")
    return ParsedManifest(
        media_type,
        Digest.of(data),
        len(data),
        config=config,
        layers=layers,
        manifests=manifests,
        subject=None if subject is None else _descriptor(subject, "subject"),
        artifact_type=_optional_str(obj, "artifactType", "artifactType"),
        annotations=_annotations(obj.get("annotations"), "annotations"),
    )


def build_referrers_index(descriptors: Sequence[ReferrerDescriptor]) -> bytes:
    """The referrers API response body: an OCI image index listing `descriptors` in the given order."""
    document = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [d.to_json() for d in descriptors],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# --- parsing helpers ---------------------------------------------------------------------------


def _fail(where: str, problem: str) -> NoReturn:
    raise ManifestInvalidError(f"{where} {problem}", detail={"field": where})


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a manifest that means different things to us and
    # to the client that pulls it must not be stored.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _load_object(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestInvalidError(
            f"manifest is not valid JSON: not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError, our hooks and int-conversion limits.
        raise ManifestInvalidError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestInvalidError(f"manifest is not valid JSON: expected an object, got {_json_type(obj)}")
    return obj


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _header_media_type(content_type: str | None) -> str | None:
    """The manifest type the Content-Type header claims, or None when it claims nothing."""
    if content_type is None:
        return None
    value = mt.base_media_type(content_type)
    return None if not value or value in mt.GENERIC_CONTENT_TYPES else value


def _check_schema_version(obj: Mapping[str, Any], header: str | None) -> None:
    version = obj.get("schemaVersion")
    body_type = obj.get("mediaType")
    schema1_type = header in mt.SCHEMA1_TYPES or (
        isinstance(body_type, str) and body_type in mt.SCHEMA1_TYPES
    )
    if (type(version) is int and version == 1) or schema1_type:
        raise ManifestInvalidError(SCHEMA1_MESSAGE)
    if "schemaVersion" not in obj:
        _fail("schemaVersion", "is required and must be 2")
    if type(version) is not int or version != 2:
        _fail("schemaVersion", f"must be 2, got {json.dumps(version)}")


def _resolve_media_type(obj: Mapping[str, Any], header: str | None) -> str:
    body = obj.get("mediaType")
    if body is not None and not isinstance(body, str):
        _fail("mediaType", "must be a string")
    if body:
        if header is not None and mt.base_media_type(body) != header:
            raise ManifestInvalidError(
                f"manifest mediaType {body!r} does not match the Content-Type header {header!r}",
                detail={"mediaType": body, "contentType": header},
            )
        media_type = body
    elif header is not None:
        media_type = header
    else:
        media_type = _infer_oci_type(obj)
    if media_type not in mt.MANIFEST_TYPES:
        raise ManifestInvalidError(
            f"unsupported manifest media type {media_type!r}; expected one of {sorted(mt.MANIFEST_TYPES)}",
            detail={"mediaType": media_type},
        )
    return media_type


def _infer_oci_type(obj: Mapping[str, Any]) -> str:
    """OCI allows omitting mediaType; the fields present then decide, as image-spec prescribes."""
    is_index = "manifests" in obj
    is_image = "config" in obj or "layers" in obj
    if is_index and is_image:
        _fail("manifest", "has both manifests and config/layers and no mediaType; set mediaType")
    if is_index:
        return mt.OCI_INDEX
    if is_image:
        return mt.OCI_MANIFEST
    _fail("mediaType", "is missing and neither config/layers nor manifests are present; set mediaType")


def _descriptor_list(obj: Mapping[str, Any], key: str) -> tuple[Descriptor, ...]:
    if key not in obj:
        _fail(key, "is required (it may be an empty list)")
    value = obj[key]
    if value is None:
        # Go clients marshal an empty slice as null; it means "no entries", not a malformed manifest.
        return ()
    if not isinstance(value, list):
        _fail(key, "must be a list of descriptors")
    return tuple(_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        _fail(where, "must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        _fail(f"{where}.mediaType", "is required and must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        _fail(f"{where}.digest", "is required and must be a string")
    try:
        digest = Digest.parse(raw_digest)
    except DigestInvalidError as e:
        raise ManifestInvalidError(f"{where}.digest: {e.message}", detail={"field": f"{where}.digest"}) from e
    size = value.get("size")
    if type(size) is not int or not 0 <= size <= MAX_DESCRIPTOR_SIZE:
        _fail(f"{where}.size", f"is required and must be an integer >= 0, got {json.dumps(size)}")
    urls = value.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        _fail(f"{where}.urls", "must be a list of strings")
    if value.get("data") is not None:
        _check_embedded_data(value["data"], digest, size, where)
    platform = value.get("platform")
    return Descriptor(
        media_type,
        digest,
        size,
        artifact_type=_optional_str(value, "artifactType", f"{where}.artifactType"),
        annotations=_annotations(value.get("annotations"), f"{where}.annotations"),
        platform=None if platform is None else Platform.from_json(platform, where=f"{where}.platform"),
        urls=tuple(urls or ()),
    )


def _check_embedded_data(data: object, digest: Digest, size: int, where: str) -> None:
    """`data` inlines the content; it must be exactly the bytes the digest and size describe."""
    if not isinstance(data, str):
        _fail(f"{where}.data", "must be a base64 string")
    try:
        content = base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        _fail(f"{where}.data", "is not valid base64")
    if len(content) != size:
        _fail(f"{where}.data", f"decodes to {len(content)} bytes but size is {size}")
    if Digest.of(content, digest.algorithm) != digest:
        _fail(f"{where}.data", f"does not match digest {digest}")


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        _fail(where, "must be a string")
    return value


def _annotations(value: object, where: str) -> Mapping[str, str]:
    if value is None:
        return _frozen()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        _fail(where, "must be an object mapping strings to strings")
    return _frozen(value)
