"""Real clients (skopeo, crane, oras CLI, oras-py, podman, buildah) against a real registry process of each
assembly; every test compares manifest and blob digests byte for byte between the source and what comes back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import infra
from tests.integration import images
from tests.integration.images import OCI_INDEX, OCI_MANIFEST, digest_of
from tests.integration.registry_process import ASSEMBLIES, RegistryProcess, registry_process, request

pytestmark = pytest.mark.client

ACCEPT_ALL = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
SBOM_TYPE = "application/vnd.example.sbom.v1"


@pytest.fixture(scope="module", params=ASSEMBLIES)
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with registry_process(request.param, tmp_path_factory.mktemp(request.param)) as reg:
        yield reg


def run(
    reg: RegistryProcess,
    *cmd: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[bytes]:
    """Run a client; on failure show its output and the registry's log."""
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args, capture_output=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"$ {' '.join(args)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout.decode(errors='replace')[-4000:]}"
            f"\n--- stderr\n{proc.stderr.decode(errors='replace')[-4000:]}\n--- registry log\n{reg.log_tail(30)}"
        )
    return proc


def get_manifest(reg: RegistryProcess, repo: str, reference: str) -> tuple[int, bytes, str | None]:
    resp = request(reg.addr, "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_ALL})
    return resp.status, resp.body, resp.header("Docker-Content-Digest")


def assert_stored(
    reg: RegistryProcess, repo: str, digest: str, *, manifest: bytes | None = None, blobs: Mapping[str, bytes] = {}
) -> None:
    """The registry holds `digest` in `repo` with exactly these bytes, and every blob (and child manifest)
    it references comes back with the digest and size its descriptor names (and the expected bytes)."""
    status, body, header = get_manifest(reg, repo, digest)
    assert status == 200, f"GET {repo}@{digest}: {status} {body[:300]!r}"
    assert digest_of(body) == digest
    assert header == digest
    if manifest is not None:
        assert body == manifest
    doc = json.loads(body)
    if doc.get("mediaType") == OCI_INDEX or "manifests" in doc:
        for child in doc["manifests"]:
            assert_stored(reg, repo, child["digest"], blobs=blobs)
        return
    for desc in [doc["config"], *doc["layers"]]:
        resp = request(reg.addr, "GET", f"/v2/{repo}/blobs/{desc['digest']}")
        assert resp.status == 200, f"GET blob {desc['digest']}: {resp.status}"
        assert digest_of(resp.body) == desc["digest"]
        assert len(resp.body) == desc["size"]
        assert resp.header("Docker-Content-Digest") == desc["digest"]
        if desc["digest"] in blobs:
            assert resp.body == blobs[desc["digest"]]


def assert_layout_equal(got: Path, ref: str | None, want: images.Layout) -> None:
    """An OCI layout written by a client holds the source's top manifest and every blob, byte for byte."""
    top, media_type = images.read_layout(got, ref)
    assert media_type == want.top_media_type
    assert top == want.top
    for image in want.images:
        if want.top_media_type == OCI_INDEX:
            assert images.layout_blob(got, image.digest) == image.manifest
        for digest, data in image.blobs.items():
            assert images.layout_blob(got, digest) == data


# --- skopeo ---


def skopeo(reg: RegistryProcess, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(reg, infra("HANZO_TOOL_SKOPEO"), *args, check=check)


def test_skopeo_copy_image_roundtrip(registry: RegistryProcess, tmp_path: Path) -> None:
    src = images.multi_layer_image(tmp_path / "src")
    repo, dest = "skopeo/app", f"docker://{registry.addr}/skopeo/app"
    skopeo(registry, "copy", "--preserve-digests", "--dest-tls-verify=false", src.oci_ref, f"{dest}:v1")
    assert_stored(registry, repo, src.digest, manifest=src.top, blobs=src.blobs)
    status, body, _ = get_manifest(registry, repo, "v1")
    assert (status, body) == (200, src.top)

    # inspect --raw: the exact stored bytes
    raw = skopeo(registry, "inspect", "--raw", "--tls-verify=false", f"{dest}:v1").stdout
    assert raw == src.top

    # back into another layout, by tag and by digest
    skopeo(
        registry, "copy", "--preserve-digests", "--src-tls-verify=false", f"{dest}:v1", f"oci:{tmp_path / 'back'}:v1"
    )
    assert_layout_equal(tmp_path / "back", "v1", src)
    skopeo(
        registry,
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"{dest}@{src.digest}",
        f"oci:{tmp_path / 'bydigest'}:pinned",
    )
    assert_layout_equal(tmp_path / "bydigest", "pinned", src)

    skopeo(registry, "copy", "--preserve-digests", "--dest-tls-verify=false", src.oci_ref, f"{dest}:v2")
    tags = json.loads(skopeo(registry, "list-tags", "--tls-verify=false", dest).stdout)
    assert sorted(tags["Tags"]) == ["v1", "v2"]

    # delete by digest: the manifest and both its tags are gone
    skopeo(registry, "delete", "--tls-verify=false", f"{dest}@{src.digest}")
    for reference in (src.digest, "v1", "v2"):
        assert get_manifest(registry, repo, reference)[0] == 404
    proc = skopeo(registry, "inspect", "--raw", "--tls-verify=false", f"{dest}@{src.digest}", check=False)
    assert proc.returncode != 0


def test_skopeo_copy_multi_arch_index(registry: RegistryProcess, tmp_path: Path) -> None:
    src = images.multi_arch_index(tmp_path / "src")
    repo, dest = "skopeo/multi", f"docker://{registry.addr}/skopeo/multi"
    skopeo(registry, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", src.oci_ref, f"{dest}:v1")
    assert_stored(registry, repo, src.digest, manifest=src.top, blobs=src.blobs)
    for image in src.images:
        assert_stored(registry, repo, image.digest, manifest=image.manifest, blobs=image.blobs)
    assert skopeo(registry, "inspect", "--raw", "--tls-verify=false", f"{dest}:v1").stdout == src.top

    skopeo(
        registry,
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"{dest}:v1",
        f"oci:{tmp_path / 'b'}:v1",
    )
    assert_layout_equal(tmp_path / "b", "v1", src)

    # one platform, by its digest
    arm = src.images[1]
    skopeo(registry, "copy", "--src-tls-verify=false", f"{dest}@{arm.digest}", f"oci:{tmp_path / 'arm'}:arm")
    top, _ = images.read_layout(tmp_path / "arm", "arm")
    assert top == arm.manifest


# --- crane ---


def crane(reg: RegistryProcess, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(reg, infra("HANZO_TOOL_CRANE"), *args, "--insecure", check=check)


def test_crane_push_pull_copy_delete(registry: RegistryProcess, tmp_path: Path) -> None:
    src = images.multi_layer_image(tmp_path / "src")
    ref = f"{registry.addr}/crane/app"

    pushed = crane(registry, "push", src.path, f"{ref}:v1").stdout.decode().strip()
    assert pushed == f"{ref}@{src.digest}"
    assert_stored(registry, "crane/app", src.digest, manifest=src.top, blobs=src.blobs)
    assert crane(registry, "digest", f"{ref}:v1").stdout.decode().strip() == src.digest
    assert crane(registry, "manifest", f"{ref}:v1").stdout == src.top

    # copy to another repository of the same registry: every blob is mounted, none is uploaded again
    copy = crane(registry, "copy", "-v", f"{ref}:v1", f"{registry.addr}/crane/copy:v1")
    log = copy.stderr.decode()
    mounted = set(re.findall(r"mounted blob: (sha256:[0-9a-f]{64})", log))
    assert mounted == set(src.blobs), log[-3000:]
    assert not re.search(r"--> (PATCH|PUT) \S+/blobs/uploads/", log), "crane uploaded a blob instead of mounting it"
    assert_stored(registry, "crane/copy", src.digest, manifest=src.top, blobs=src.blobs)

    crane(registry, "pull", "--format=oci", f"{registry.addr}/crane/copy:v1", tmp_path / "pulled")
    assert_layout_equal(tmp_path / "pulled", None, src)

    crane(registry, "tag", f"{ref}:v1", "v2")
    assert crane(registry, "ls", ref).stdout.decode().split() == ["v1", "v2"]

    crane(registry, "delete", f"{registry.addr}/crane/copy@{src.digest}")
    assert get_manifest(registry, "crane/copy", src.digest)[0] == 404
    assert crane(registry, "manifest", f"{registry.addr}/crane/copy:v1", check=False).returncode != 0
    assert get_manifest(registry, "crane/app", src.digest)[0] == 200  # the source repository is untouched


def test_crane_copy_index(registry: RegistryProcess, tmp_path: Path) -> None:
    src = images.multi_arch_index(tmp_path / "src")
    skopeo(
        registry,
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        src.oci_ref,
        f"docker://{registry.addr}/crane/multi:v1",
    )
    crane(registry, "copy", f"{registry.addr}/crane/multi:v1", f"{registry.addr}/crane/multi-copy:v1")
    assert crane(registry, "digest", f"{registry.addr}/crane/multi-copy:v1").stdout.decode().strip() == src.digest
    assert_stored(registry, "crane/multi-copy", src.digest, manifest=src.top, blobs=src.blobs)
    platform = crane(registry, "digest", "--platform", "linux/arm64", f"{registry.addr}/crane/multi-copy:v1")
    assert platform.stdout.decode().strip() == src.images[1].digest


# --- oras CLI ---


def oras(reg: RegistryProcess, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return run(reg, infra("HANZO_TOOL_ORAS"), *args, "--plain-http", cwd=cwd)


def assert_model_manifest(doc: dict[str, Any], files: Mapping[str, bytes]) -> None:
    layers = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in doc["layers"]}
    assert set(layers) == set(files)
    for name, data in files.items():
        assert layers[name]["mediaType"] == images.MODEL_FILES[name]
        assert layers[name]["digest"] == digest_of(data)
        assert layers[name]["size"] == len(data)


def test_oras_cli_model_artifact(registry: RegistryProcess, tmp_path: Path) -> None:
    files = images.model_artifact(tmp_path / "model")
    header = images.parse_safetensors(files["model.safetensors"])
    assert header["weight"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    repo = "oras/tiny"
    ref = f"{registry.addr}/{repo}:v1"
    pushed = oras(
        registry,
        "push",
        "--format",
        "json",
        "--artifact-type",
        images.MODEL_ARTIFACT_TYPE,
        ref,
        *[f"{name}:{media_type}" for name, media_type in images.MODEL_FILES.items()],
        cwd=tmp_path / "model",
    )
    digest = json.loads(pushed.stdout)["digest"]

    raw = oras(registry, "manifest", "fetch", ref).stdout
    assert digest_of(raw) == digest
    doc = json.loads(raw)
    assert doc["artifactType"] == images.MODEL_ARTIFACT_TYPE
    assert_model_manifest(doc, files)
    assert_stored(registry, repo, digest, manifest=raw, blobs={digest_of(d): d for d in files.values()})

    (tmp_path / "out").mkdir()
    oras(registry, "pull", "-o", tmp_path / "out", ref)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files

    # a referrer, through the referrers API (not the tag fallback)
    (tmp_path / "sbom.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": "tiny"}))
    attached = oras(
        registry,
        "attach",
        "--format",
        "json",
        "--distribution-spec",
        "v1.1-referrers-api",
        "--artifact-type",
        SBOM_TYPE,
        ref,
        "sbom.json",
        cwd=tmp_path,
    )
    sbom_digest = json.loads(attached.stdout)["digest"]
    discovered = json.loads(
        oras(registry, "discover", "--format", "json", "--distribution-spec", "v1.1-referrers-api", ref).stdout
    )
    assert discovered["digest"] == digest
    assert [(r["digest"], r["artifactType"]) for r in discovered["referrers"]] == [(sbom_digest, SBOM_TYPE)]
    resp = request(registry.addr, "GET", f"/v2/{repo}/referrers/{digest}?artifactType={SBOM_TYPE}")
    assert resp.status == 200
    assert [m["digest"] for m in json.loads(resp.body)["manifests"]] == [sbom_digest]
    tags = json.loads(request(registry.addr, "GET", f"/v2/{repo}/tags/list").body)["tags"]
    assert tags == ["v1"], "no referrers fallback tag expected"
    sbom_manifest = oras(registry, "manifest", "fetch", f"{registry.addr}/{repo}@{sbom_digest}").stdout
    assert digest_of(sbom_manifest) == sbom_digest
    assert json.loads(sbom_manifest)["subject"]["digest"] == digest


# --- oras-py ---


def test_oras_python_model_artifact(registry: RegistryProcess, tmp_path: Path) -> None:
    import oras.client

    files = images.model_artifact(tmp_path / "model")
    client = oras.client.OrasClient(insecure=True)  # insecure: plain http
    target = f"{registry.addr}/oraspy/tiny:v1"
    # oras-py 0.2.x cannot set artifactType; the image-spec 1.0 convention puts the type on the config.
    response = client.push(
        target,
        files=[f"{tmp_path / 'model' / name}:{media_type}" for name, media_type in images.MODEL_FILES.items()],
        manifest_config=f"{tmp_path / 'no-config'}:{images.MODEL_ARTIFACT_TYPE}",
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    digest = response.headers["Docker-Content-Digest"]
    status, raw, header = get_manifest(registry, "oraspy/tiny", "v1")
    assert (status, header, digest_of(raw)) == (200, digest, digest)
    doc = json.loads(raw)
    assert doc["config"]["mediaType"] == images.MODEL_ARTIFACT_TYPE
    assert_model_manifest(doc, files)
    assert_stored(registry, "oraspy/tiny", digest, manifest=raw, blobs={digest_of(d): d for d in files.values()})
    assert client.get_manifest(target) == doc

    pulled = client.pull(target, outdir=str(tmp_path / "out"))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files


# --- podman and buildah ---


@pytest.fixture
def containers_storage(tmp_path: Path) -> Iterator[list[str]]:
    """Global flags giving podman/buildah a private vfs store (nothing shared with the host's store).
    The runroot gets a short path of its own: podman refuses a runroot longer than 50 characters."""
    runroot = Path(tempfile.mkdtemp(prefix="hzr-run-"))
    try:
        yield ["--root", str(tmp_path / "storage"), "--runroot", str(runroot), "--storage-driver", "vfs"]
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_buildah_push_pull(registry: RegistryProcess, tmp_path: Path, containers_storage: list[str]) -> None:
    buildah_bin, podman_bin = infra("HANZO_TOOL_BUILDAH"), infra("HANZO_TOOL_PODMAN")
    env = {"STORAGE_DRIVER": "vfs", "TMPDIR": str(tmp_path)}

    def buildah(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run(registry, buildah_bin, *containers_storage, *args, env=env, check=check)

    def podman(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return run(registry, podman_bin, *containers_storage, *args, env=env)

    started = buildah("from", "scratch", check=False)
    if started.returncode != 0:
        reason = started.stderr.decode(errors="replace").strip()[-500:]
        # The one known cause outside our control: a sandbox without user namespaces. Anything else fails.
        if re.search(r"user namespace|unshare|newuidmap|newgidmap|/proc/self/uid_map", reason, re.IGNORECASE):
            pytest.skip(f"buildah cannot use user namespaces here: {reason}")
        pytest.fail(f"buildah from scratch failed: {reason}")
    container = started.stdout.decode().strip()
    (tmp_path / "hello.txt").write_bytes(os.urandom(16).hex().encode())
    buildah("copy", container, tmp_path / "hello.txt", "/hello.txt")
    buildah("config", "--cmd", "/hello", container)
    image_id = buildah("commit", "--quiet", container, "localhost/hanzo-test:1").stdout.decode().strip()

    repo = "podman/app"
    podman(
        "push",
        "--tls-verify=false",
        "--digestfile",
        tmp_path / "podman.digest",
        "localhost/hanzo-test:1",
        f"docker://{registry.addr}/{repo}:v1",
    )
    digest = (tmp_path / "podman.digest").read_text().strip()
    status, raw, _ = get_manifest(registry, repo, "v1")
    assert status == 200 and digest_of(raw) == digest
    assert json.loads(raw)["config"]["digest"] == f"sha256:{image_id}"
    assert_stored(registry, repo, digest, manifest=raw)

    buildah(
        "push",
        "--tls-verify=false",
        "--digestfile",
        tmp_path / "buildah.digest",
        "localhost/hanzo-test:1",
        f"docker://{registry.addr}/buildah/app:v1",
    )
    buildah_digest = (tmp_path / "buildah.digest").read_text().strip()
    status, raw2, _ = get_manifest(registry, "buildah/app", "v1")
    assert status == 200 and digest_of(raw2) == buildah_digest
    assert_stored(registry, "buildah/app", buildah_digest, manifest=raw2)

    # pull back, by digest and by tag, into an empty store
    podman("rmi", "--all", "--force")
    pinned = f"{registry.addr}/{repo}@{digest}"
    podman("pull", "--tls-verify=false", pinned)
    inspected = podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}", pinned).stdout.decode().split()
    assert inspected == [image_id, digest]
    podman("pull", "--tls-verify=false", f"{registry.addr}/{repo}:v1")
    by_tag = podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}", f"{registry.addr}/{repo}:v1")
    assert by_tag.stdout.decode().split() == [image_id, digest]
