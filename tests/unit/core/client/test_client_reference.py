"""Image references, remote repositories and per-registry transport choices of the OCI client."""

from __future__ import annotations

import pytest
from yarl import URL

from services.core.client.errors import OciNotFoundError, OciResponseError, parse_error_body, response_error
from services.core.client.reference import ImageReference, RemoteRepository, api_host
from services.core.client.transport import RegistryOptions, base_url, is_loopback, shown
from services.core.errors import DigestInvalidError, NameInvalidError, TagInvalidError
from services.core.oci.digest import Digest

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "name", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("team/app:v1", "docker.io", "team/app", "v1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        (f"ghcr.io/o/r@{D}", "ghcr.io", "o/r", None, D),
        (f"ghcr.io/o/r:t@{D}", "ghcr.io", "o/r", "t", D),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
    ],
)
def test_image_reference(text: str, registry: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = ImageReference.parse(text)
    assert ref.repository.registry == registry and str(ref.repository.name) == name
    assert (str(ref.tag) if ref.tag else None) == tag
    assert (str(ref.digest) if ref.digest else None) == digest
    assert str(ref.reference) == (digest or tag)


def test_bad_references_say_what_is_wrong() -> None:
    with pytest.raises(NameInvalidError):
        ImageReference.parse("ghcr.io/Team/App")
    with pytest.raises(TagInvalidError):
        ImageReference.parse("ghcr.io/a:-bad")
    with pytest.raises(DigestInvalidError):
        ImageReference.parse("ghcr.io/a@sha256:short")
    with pytest.raises(NameInvalidError):
        RemoteRepository("", "a")  # type: ignore[arg-type]


def test_remote_repository() -> None:
    repo = RemoteRepository.parse("127.0.0.1:5000/team/app")
    assert str(repo) == "127.0.0.1:5000/team/app"
    assert RemoteRepository("r.example", "x/y") == RemoteRepository.parse("r.example/x/y")  # type: ignore[arg-type]
    assert api_host("docker.io") == "registry-1.docker.io" and api_host("ghcr.io") == "ghcr.io"


def test_plain_http_follows_docker() -> None:
    default = RegistryOptions()
    assert str(base_url("127.0.0.1:5000", default)) == "http://127.0.0.1:5000"
    assert str(base_url("localhost:5000", default)) == "http://localhost:5000"
    assert str(base_url("[::1]:5000", default)) == "http://[::1]:5000"
    assert str(base_url("ghcr.io", default)) == "https://ghcr.io"
    assert str(base_url("docker.io", default)) == "https://registry-1.docker.io"
    assert str(base_url("10.0.0.1:5000", RegistryOptions(plain_http=True))) == "http://10.0.0.1:5000"
    assert str(base_url("127.0.0.1:5000", RegistryOptions(plain_http=False))) == "https://127.0.0.1:5000"
    assert is_loopback("127.3.2.1") and not is_loopback("example.com")


def test_shown_urls_drop_signatures() -> None:
    url = URL("https://s3.example/b/k?X-Amz-Signature=secret&X-Amz-Credential=c&digest=sha256:1")
    assert "secret" not in shown(url) and "digest=" in shown(url)


def test_error_body_parsing() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such manifest","detail":{"tag":"x"}}]}'
    err = response_error(method="GET", url="http://r/v2/a/manifests/x", status=404, body=body)
    assert isinstance(err, OciNotFoundError)
    assert (err.status, err.code, err.message) == (404, "MANIFEST_UNKNOWN", "MANIFEST_UNKNOWN: no such manifest")
    assert err.errors[0].detail == {"tag": "x"}
    assert "GET http://r/v2/a/manifests/x: 404 MANIFEST_UNKNOWN" in str(err)
    err = response_error(method="PUT", url="u", status=502, body=b"<html>bad gateway</html>")
    assert type(err) is OciResponseError and err.code == "UNKNOWN" and "bad gateway" in str(err)
    assert parse_error_body(b"[]") == () and parse_error_body(b"\xff") == ()
    assert parse_error_body(b'{"errors":[{"message":"m"}, 3]}')[0].code == "UNKNOWN"
    assert Digest.parse(D)
