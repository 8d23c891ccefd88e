"""Typed registry errors, each carrying its OCI error code; one table maps them to HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RegistryError(Exception):
    """Base of every error a client may see. `code` is the OCI/Docker error code."""

    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, *, detail: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the error needs (a challenge, Retry-After, Content-Range)."""
        return self._headers


class BlobUnknownError(RegistryError):
    code, status = "BLOB_UNKNOWN", 404


class BlobUploadUnknownError(RegistryError):
    code, status = "BLOB_UPLOAD_UNKNOWN", 404


class BlobUploadInvalidError(RegistryError):
    code, status = "BLOB_UPLOAD_INVALID", 400


class DigestInvalidError(RegistryError):
    code, status = "DIGEST_INVALID", 400


class ManifestBlobUnknownError(RegistryError):
    code, status = "MANIFEST_BLOB_UNKNOWN", 400


class ManifestInvalidError(RegistryError):
    code, status = "MANIFEST_INVALID", 400


class ManifestUnknownError(RegistryError):
    code, status = "MANIFEST_UNKNOWN", 404


class ManifestTooLargeError(RegistryError):
    code, status = "SIZE_INVALID", 413


class NameInvalidError(RegistryError):
    code, status = "NAME_INVALID", 400


class NameUnknownError(RegistryError):
    code, status = "NAME_UNKNOWN", 404


class SizeInvalidError(RegistryError):
    code, status = "SIZE_INVALID", 400


class TagInvalidError(RegistryError):
    code, status = "TAG_INVALID", 400


class TooManyTagsError(RegistryError):
    code, status = "TAG_INVALID", 414


class TagImmutableError(RegistryError):
    code, status = "DENIED", 409


class RangeInvalidError(RegistryError):
    code, status = "RANGE_INVALID", 416


class PaginationNumberInvalidError(RegistryError):
    code, status = "PAGINATION_NUMBER_INVALID", 400


class UnauthorizedError(RegistryError):
    code, status = "UNAUTHORIZED", 401


class DeniedError(RegistryError):
    code, status = "DENIED", 403


class UnsupportedError(RegistryError):
    code, status = "UNSUPPORTED", 405


class TooManyRequestsError(RegistryError):
    code, status = "TOOMANYREQUESTS", 429


class UnavailableError(RegistryError):
    """A backend the request needs (metadata, blob storage, event log) cannot be reached: retry later."""

    code, status = "UNAVAILABLE", 503


class ConflictError(RegistryError):
    """A compare-and-set lost a race; callers usually retry."""

    code, status = "UNKNOWN", 409


def error_body(errors: list[RegistryError]) -> dict[str, Any]:
    """The spec's JSON error document for one or more errors. `detail` is optional in the spec and left out
    when an error has none: clients print an empty one as noise (crane and oras show `; map[]`)."""
    return {"errors": [_entry(e) for e in errors]}


def _entry(error: RegistryError) -> dict[str, Any]:
    entry: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.detail is not None and error.detail != {}:
        entry["detail"] = error.detail
    return entry
