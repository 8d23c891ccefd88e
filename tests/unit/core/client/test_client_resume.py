"""Pure parts of resumable transfers: an upload's `Range` header read as bytes held, and `Retry-After` kept on
error answers (delta-seconds or an HTTP date)."""

from __future__ import annotations

import pytest

from services.core.client.blobs import _range_end
from services.core.client.errors import OciProtocolError, OciTooManyRequestsError, parse_retry_after, response_error


@pytest.mark.parametrize(("header", "held"), [("0-0", 0), ("0-99", 100), ("bytes=0-1048575", 1048576)])
def test_upload_range_is_the_bytes_held(header: str, held: int) -> None:
    assert _range_end(header) == held


@pytest.mark.parametrize("header", [None, "", "5-10", "0-", "garbage", "0-x"])
def test_an_unusable_upload_range_is_a_protocol_error(header: str | None) -> None:
    with pytest.raises(OciProtocolError):
        _range_end(header)


def test_retry_after_in_both_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_error_answers_keep_their_headers() -> None:
    error = response_error(method="GET", url="/v2/a/manifests/v1", status=429, body=b"",
                           headers={"Retry-After": "3"})
    assert isinstance(error, OciTooManyRequestsError)
    assert error.retry_after == 3.0 and error.headers["Retry-After"] == "3"
