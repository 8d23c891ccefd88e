"""The console's pure parts: pull commands, paging, the manifest view, the login's return path, the
static assets shipped in the package, and the templates (autoescaped, no inline code)."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from services.core.oci.digest import Digest
from services.core.storage.meta import ManifestRecord
from services.distribution.console.headers import CSP, SECURITY_HEADERS
from services.distribution.console.login import HOME, next_path
from services.distribution.console.render import environment, load_static
from services.distribution.console.views import (
    bounded,
    human_size,
    manifest_view,
    next_cursor,
    page_size,
    pull_commands,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
D1, D2, D3 = (f"sha256:{c * 64}" for c in "abc")


def test_pull_commands_by_tag_and_by_digest() -> None:
    plain = {c.tool: c.command for c in pull_commands("127.0.0.1:5000", "team/app", "v1", plain_http=True)}
    assert plain == {
        "docker": "docker pull 127.0.0.1:5000/team/app:v1",
        "podman": "podman pull --tls-verify=false 127.0.0.1:5000/team/app:v1",
        "oras": "oras pull --plain-http 127.0.0.1:5000/team/app:v1",
        "hanzo-registry": "hanzo-registry pull 127.0.0.1:5000/team/app:v1",
    }
    tls = [c.command for c in pull_commands("cr.example.com", "team/app", D1, plain_http=False)]
    assert tls[0] == f"docker pull cr.example.com/team/app@{D1}"
    assert all("--plain-http" not in c and "--tls-verify" not in c for c in tls)


def test_pages_are_bounded() -> None:
    assert page_size(None) == 50 and page_size("7") == 7 and page_size("100000") == 200 and page_size("x") == 50
    assert page_size("-3") == 1
    assert next_cursor(["a", "b", "c"], 2) == (["a", "b"], "b")
    assert next_cursor(["a", "b"], 2) == (["a", "b"], None)
    assert bounded("ab\x00c\n" + "x" * 500) == "abc" + "x" * 195
    assert human_size(None) == "" and human_size(512) == "512 B" and human_size(3 * 1024 * 1024) == "3.0 MiB"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil",
        "/v2/",
        "/console/login?next=/x",
        "/console/logout",
        "/console/\\x",
        "/console/\x00",
    ],
)
def test_login_returns_only_to_console_pages(value: str | None) -> None:
    assert next_path(value) == HOME


def test_login_returns_to_the_page_asked_for() -> None:
    assert next_path("/console/repositories/team/app?after=v1") == "/console/repositories/team/app?after=v1"


def _record(doc: dict[str, object], media_type: str) -> ManifestRecord:
    data = json.dumps(doc).encode()
    return ManifestRecord("team/app", Digest.of(data), media_type, len(data), data)


def test_manifest_view_of_an_image_and_an_index() -> None:
    image = _record(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 1000}],
        },
        OCI_MANIFEST,
    )
    view = manifest_view(image)
    assert not view.is_index and [layer.size for layer in view.layers] == [1000]
    assert view.total_size == image.size + 10 + 1000
    index = _record(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": D2,
                    "size": 300,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": D3,
                    "size": 310,
                    "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
                },
            ],
        },
        OCI_INDEX,
    )
    view = manifest_view(index)
    assert view.is_index and [p.platform for p in view.platforms] == ["linux/amd64", "linux/arm/v7"]
    assert view.total_size == index.size + 610
    broken = ManifestRecord("team/app", Digest.of(b"{"), OCI_MANIFEST, 1, b"{")
    assert manifest_view(broken).layers == ()  # shown by digest, never an error


def test_static_assets_ship_in_the_package_and_templates_have_no_inline_code() -> None:
    static = load_static()
    assert set(static) == {"console.css", "console.js"}
    env = environment(static)
    assert env.from_string("{{ x }}").render(x="<script>") == "&lt;script&gt;"  # autoescaped
    folder = resources.files("services.distribution.console").joinpath("templates")
    for template in folder.iterdir():
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name  # no inline script
        assert not re.search(r"\son[a-z]+=", text), template.name  # no inline event handler
        assert "style=" not in text and "<style" not in text, template.name  # no inline style
        assert "http://" not in text and "https://" not in text, template.name  # no third-party asset


def test_security_headers() -> None:
    assert SECURITY_HEADERS["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP and "script-src 'self';" in CSP and "frame-ancestors 'none'" in CSP
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
