"""Headless Chromium for the console's end-to-end tests: Debian's chromium driven by Selenium through
Debian's chromedriver (no browser or driver download), axe-core from the npm registry (pinned, its sha512
checked against the registry's integrity value) injected into each page, and screenshots as artefacts."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE_VERSION = "4.10.3"
AXE_URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_INTEGRITY = "sha512-Xm7bpRXnDSX2YE2YFfBk2FnF0ep6tmG7xPh8iHee8MIcrgq762Nkce856dYtJYLkuIoYZvGfTs/PbZhideTcEg=="
"""`dist.integrity` of axe-core 4.10.3 in the npm registry's metadata (registry.npmjs.org/axe-core/4.10.3)."""
CACHE = Path(os.environ.get("HANZO_CACHE_DIR", Path.home() / ".cache" / "hanzo-registry"))
REPO = Path(__file__).resolve().parents[2]
BLOCKING = ("serious", "critical")


def artifacts_dir() -> Path:
    """Where screenshots go: $HANZO_TEST_ARTIFACTS, else .artifacts/console/ in the repository (ignored by git)."""
    path = Path(os.environ.get("HANZO_TEST_ARTIFACTS") or REPO / ".artifacts" / "console")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_browser() -> None:
    """Fail (never skip) without Debian's chromium and chromedriver."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run deploy/local/tools.sh (installs Debian's chromium and "
            "chromium-driver) before the console's browser tests",
            pytrace=False,
        )


def axe_source() -> str:
    """axe.min.js of the pinned axe-core, downloaded once into the cache and checked against its integrity."""
    target = CACHE / f"axe-core-{AXE_VERSION}" / "axe.min.js"
    if not target.exists():
        with urllib.request.urlopen(AXE_URL, timeout=60) as answer:
            tarball = answer.read()
        algorithm, _, expected = AXE_INTEGRITY.partition("-")
        actual = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
        assert actual == expected, f"{AXE_URL}: {algorithm} {actual} is not the registry's {expected}"
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            member = archive.extractfile("package/axe.min.js")
            assert member is not None
            source = member.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(source)
        partial.replace(target)
    return target.read_text()


def start_chromium(profile: Path) -> Any:
    """A headless Chromium (as root: no sandbox), its background network calls off (this machine's
    network is closed), and the clipboard readable by the test."""
    require_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def grant_clipboard(driver: Any, origin: str) -> None:
    driver.execute_cdp_cmd(
        "Browser.grantPermissions", {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}
    )


def read_clipboard(driver: Any) -> str:
    return str(
        driver.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "navigator.clipboard.readText().then(done, function (e) { done('ERROR ' + e); });"
        )
    )


def axe_violations(driver: Any, source: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page (injected through the driver, which
    the page's CSP does not govern)."""
    driver.execute_script(source + "\n;window.axe = axe;")
    result = driver.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then("
        "  function (r) { done(r.violations.map(function (v) { return {id: v.id, impact: v.impact, help: v.help,"
        "    nodes: v.nodes.map(function (n) { return n.target.join(' '); }).slice(0, 5)}; })); },"
        "  function (e) { done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]); });"
    )
    return [v for v in result if v.get("impact") in BLOCKING]


def screenshot(driver: Any, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
