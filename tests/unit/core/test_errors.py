"""The OCI error document: `detail` only when there is one (clients print an empty one as `; map[]`)."""

from __future__ import annotations

from services.core.errors import BlobUnknownError, DigestInvalidError, error_body


def test_detail_is_omitted_when_there_is_none() -> None:
    assert error_body([BlobUnknownError("blob unknown to registry")]) == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]
    }
    assert "detail" not in error_body([BlobUnknownError("x", detail={})])["errors"][0]


def test_detail_is_kept_when_given() -> None:
    body = error_body([DigestInvalidError("mismatch", detail={"expected": "a", "actual": "b"})])
    assert body["errors"][0]["detail"] == {"expected": "a", "actual": "b"}
