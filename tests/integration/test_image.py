"""The container image (issue 17, item 2), built the way `make image` builds it: deploy/local/image.sh runs
`buildah bud` on the repository's Dockerfile (vfs storage, chroot isolation, no Docker engine) on a Debian bookworm
base made with debootstrap; both the base and the build's layers are cached under ~/.cache/hanzo-registry/, so a
repeated run only rebuilds what changed (the source layer, the venv copy).

The image's entry point runs every service and runs as a non-root user; pushed with `buildah push` to the embedded
registry, the scanner scans it and its report lists the Debian base's packages and the Python venv's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.core.auth.apikeys import generate_key
from services.core.settings import AuthSettings
from tests.integration.conftest import embedded_settings, running
from tests.integration.test_auth_support import Api, admin_key, bearer
from tests.integration.test_scanner import report, running_scanner

pytestmark = pytest.mark.timeout(2400)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/local/image.sh"
TAG = "localhost/hanzo-registry:test"
SERVICES = ("distribution", "scanner", "signer", "gc", "replicator", "serve")
R = "/v1/registry"


def buildah(*args: str, timeout: float = 300) -> str:
    """buildah on the script's storage (same root, runroot, vfs driver)."""
    out = subprocess.run(["bash", str(SCRIPT), "--buildah", *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert out.returncode == 0, f"buildah {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}"
    return out.stdout


async def buildah_async(*args: str, timeout: float = 600) -> str:
    """`buildah` without blocking the event loop (the registry under test answers on it)."""
    proc = await asyncio.create_subprocess_exec("bash", str(SCRIPT), "--buildah", *args,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"buildah {' '.join(args)} failed ({proc.returncode}): {err.decode()[-3000:]}"
    return out.decode()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image ID, built (or found up to date) by the script; the build's time is printed (`pytest -s`)."""
    if os.geteuid() != 0:
        pytest.skip("the image build needs root: debootstrap, and buildah's vfs storage without user namespaces")
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run `make tools`")
    started = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), TAG], capture_output=True, text=True, timeout=2400, check=False)
    assert out.returncode == 0, f"{SCRIPT.name} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    print(f"\nimage build: {time.monotonic() - started:.1f} s")
    image_id = out.stdout.strip().splitlines()[-1]
    assert image_id.startswith("sha256:") or len(image_id) == 64, out.stdout
    yield image_id


def test_entry_point_runs_every_service_as_a_non_root_user(image: str) -> None:
    config = json.loads(buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]
    assert config["Entrypoint"] == ["/opt/hanzo-registry/bin/hanzo-registry"]
    assert config["User"] == "10001:10001"
    ctr = buildah("from", "--quiet", "--name", f"hanzo-image-test-{uuid.uuid4().hex[:8]}", TAG).strip()
    try:
        helped = buildah("run", "--isolation", "chroot", ctr, "--", "hanzo-registry", "--help")
        # Click's help: one command a line under "Commands:", its name first.
        commands = helped.split("Commands:", 1)[1] if "Commands:" in helped else ""
        listed = [line.split()[0] for line in commands.splitlines() if line.strip()]
        assert set(SERVICES) <= set(listed), helped
        assert buildah("run", "--isolation", "chroot", ctr, "--", "id", "-u").strip() == "10001"
        assert buildah("run", "--isolation", "chroot", ctr, "--", "hanzo-registry", "serve", "--help")
    finally:
        buildah("rm", ctr)


def components(sbom: dict[str, Any]) -> set[tuple[str, str]]:
    """(purl type, name) of every component of a CycloneDX SBOM."""
    out = set()
    for c in sbom.get("components", []):
        purl = c.get("purl", "")
        if purl.startswith("pkg:"):
            out.add((purl[4:].split("/", 1)[0], c.get("name", "")))
    return out


async def test_pushed_to_the_registry_and_scanned(image: str, tmp_path: Path) -> None:
    auth = AuthSettings(mode="token", bootstrap_admin_key=SecretStr(generate_key().key))
    settings = embedded_settings(tmp_path).model_copy(update={"auth": auth})
    async with running(settings, "embedded") as a, running_scanner(a):
        key = admin_key(a)
        target = f"{a.client.host}:{a.client.port}/hanzo/registry:test"
        started = time.monotonic()
        await buildah_async("push", "--quiet", "--tls-verify=false", "--creds", f"admin:{key}", TAG,
                            f"docker://{target}", timeout=900)
        api = Api(a.client, bearer(key))
        body = await report(api, "hanzo/registry", "test", timeout=300)
        print(f"\npush + scan of the image: {time.monotonic() - started:.1f} s")
        assert body["status"] == "complete"
        sbom = await api.call("GET", f"{R}/hanzo/registry/test/sbom", expect=200)
        found = components(sbom)
        # The Debian base (dpkg) ...
        assert {("deb", "python3.11"), ("deb", "libc6"), ("deb", "ca-certificates")} <= found, sorted(found)[:50]
        # ... and the Python venv (dist-info), the registry itself included.
        assert {("pypi", "aiohttp"), ("pypi", "pydantic"), ("pypi", "hanzo-registry")} <= found, sorted(found)[:50]
