"""The CLI's local parts, without a registry: saved upload sessions (atomic, keyed by registry, repository and
digest), image locations on disk, the index entry a tag names, the platform picked from an index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import layouts, upload_state
from services.cli.oci import CliError, pick_platform


def test_upload_sessions_are_saved_atomically_and_found_by_blob(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    digest = "sha256:" + "a" * 64
    state = upload_state.UploadState(registry="r:5000", repository="ml/m", digest=digest, size=10,
                                     location="http://r:5000/v2/ml/m/blobs/uploads/u1", offset=4)
    upload_state.save(state)
    assert upload_state.load("r:5000", "ml/m", digest, 10) == state
    assert upload_state.load("r:5000", "ml/m", digest, 11) is None  # another size: another file
    assert upload_state.load("r:5000", "ml/other", digest, 10) is None
    files = list((tmp_path / "hanzo-registry" / "uploads").iterdir())
    assert [f.suffix for f in files] == [".json"]  # no temporary file left behind
    files[0].write_text("{broken")
    assert upload_state.load("r:5000", "ml/m", digest, 10) is None
    upload_state.remove("r:5000", "ml/m", digest)
    upload_state.remove("r:5000", "ml/m", digest)  # twice: nothing to remove is fine
    assert not list((tmp_path / "hanzo-registry" / "uploads").iterdir())


def test_locations() -> None:
    assert layouts.parse_location("oci:/tmp/l:v1") == layouts.Location("oci", Path("/tmp/l"), "v1")
    assert layouts.parse_location("oci:dir") == layouts.Location("oci", Path("dir"), None)
    assert layouts.parse_location("docker-archive:a.tar") == layouts.Location("docker-archive", Path("a.tar"), None)
    for bad in ("dir", "docker:x", "oci:", "tar:x"):
        with pytest.raises(layouts.LayoutError):
            layouts.parse_location(bad)


def test_index_entries_by_tag() -> None:
    def entry(tag: str) -> dict[str, object]:
        return {"digest": f"sha256:{tag}", "annotations": {layouts.REF_NAME: tag}}

    index = {"manifests": [entry("v1"), entry("v2")]}
    assert layouts.select_entry(index, "v2", "l")["digest"] == "sha256:v2"
    with pytest.raises(layouts.LayoutError, match="holds 2 images"):
        layouts.select_entry(index, None, "l")
    with pytest.raises(layouts.LayoutError, match="no image tagged"):
        layouts.select_entry(index, "v3", "l")
    assert layouts.select_entry({"manifests": [entry("only")]}, None, "l")["digest"] == "sha256:only"


def test_platform_from_an_index() -> None:
    def m(digit: str, arch: str, variant: str | None = None) -> dict[str, object]:
        platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return {"digest": "sha256:" + digit * 64, "platform": platform}

    index = json.loads(json.dumps({"manifests": [m("a", "amd64"), m("b", "arm64", "v8")]}))
    assert str(pick_platform(index, "linux/amd64")).endswith("a" * 64)
    assert str(pick_platform(index, "linux/arm64")).endswith("b" * 64)  # any variant of the architecture
    with pytest.raises(CliError, match="linux/amd64, linux/arm64/v8"):
        pick_platform(index, "linux/s390x")
