"""The console end to end in headless Chromium (Debian's, through its chromedriver), with auth on, on
both assemblies: log in with the keyboard, browse and search repositories, page through 10,000 tags, open a
tag and an index, copy a pull command, read a vulnerability report with its gate verdict, signatures and
the model tab, make an API key; a reader sees no admin pages; an admin sees them. axe-core checks every page
(no serious or critical violation); screenshots go to $HANZO_TEST_ARTIFACTS (default .artifacts/console/)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from services.distribution.keys import REGISTRY
from tests.integration import browser
from tests.integration.conftest import Assembly
from tests.integration.console_support import (
    push_image,
    push_index,
    push_model,
    seed_report,
    seed_signatures,
    seed_tags,
)
from tests.integration.test_auth_support import Api, admin_key, basic, bearer, grant, new_user

TAGS = 10_000


class Session:
    """One browser session against the console at `base`, checking each page it opens with axe-core."""

    def __init__(self, driver: Any, base: str, axe: str, prefix: str) -> None:
        self.driver, self.base, self.axe, self.prefix = driver, base, axe, prefix
        self.checked: list[str] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def check(self, name: str) -> None:
        """axe-core finds no serious or critical violation here; a screenshot either way."""
        browser.screenshot(self.driver, f"{self.prefix}-{name}")
        violations = browser.axe_violations(self.driver, self.axe)
        assert not violations, f"{name} ({self.driver.current_url}): {violations}"
        self.checked.append(name)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def active(self) -> Any:
        return self.driver.switch_to.active_element

    def rows(self) -> list[str]:
        return [r.text for r in self.driver.find_elements(By.CSS_SELECTOR, "table tbody tr th[scope=row]")]

    def login(self, user: str, key: str) -> None:
        """With the keyboard only: skip link first, then the labelled fields, Enter to submit."""
        d = self.driver
        self.open("/console/")
        assert "/console/login" in d.current_url
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        skip = self.active()
        assert skip.get_attribute("class") == "skip-link" and skip.text == "Skip to main content"
        assert d.execute_script("return getComputedStyle(document.activeElement).top") != "-48px"  # shown on focus
        field = d.find_element(By.ID, "username")
        assert d.find_element(By.CSS_SELECTOR, "label[for=username]").text == "User name"
        assert d.find_element(By.CSS_SELECTOR, "label[for=api_key]").text == "API key"
        field.click()
        field.send_keys(user, Keys.TAB)
        assert self.active().get_attribute("id") == "api_key"
        outline = d.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("", "none"), "the focused field shows no focus ring"
        self.active().send_keys(key, Keys.ENTER)
        WebDriverWait(d, 10).until(ec.url_contains("/console/repositories"))


def reader_walk(s: Session, reader_key: str) -> None:
    d = s.driver
    s.open("/console/")
    s.check("login")
    s.login("reader", reader_key)
    page = s.text()
    assert "team/app" in page and "team/big" in page and "secret/app" not in page
    assert not d.find_elements(By.LINK_TEXT, "Administration")
    s.check("repositories")

    # search, with the keyboard
    search = d.find_element(By.ID, "q")
    search.send_keys("big", Keys.ENTER)
    WebDriverWait(d, 10).until(ec.url_contains("q=big"))
    links = [a.text for a in d.find_elements(By.CSS_SELECTOR, ".repository-list a")]
    assert links == ["team/big"], links

    # 10,000 tags: one page of 50, then the next
    d.find_element(By.LINK_TEXT, "team/big").click()
    rows = s.rows()
    assert len(rows) == 50 and rows[0] == "latest" and rows[1] == "t00000" and rows[-1] == "t00048", rows[:3]
    s.check("tags-10000")
    d.find_element(By.LINK_TEXT, "Next page").click()
    rows = s.rows()
    assert len(rows) == 50 and rows[0] == "t00049" and rows[-1] == "t00098", rows[:3]
    assert d.find_elements(By.LINK_TEXT, "First page")

    # a tag: its manifest, layers, and the pull commands
    s.open("/console/repositories/team/app")
    page = s.text()
    assert "v1" in page and "multi" in page
    row = d.find_element(By.XPATH, "//tr[th/a[text()='v1']]")
    assert "yes" in row.text and "sha256:" in row.text  # immutable by the namespace policy, digest shown
    d.find_element(By.LINK_TEXT, "v1").click()
    page = s.text()
    assert "Layers" in page and "application/vnd.oci.image.layer.v1.tar+gzip" in page
    host = s.base.split("://", 1)[1]
    commands = [c.text for c in d.find_elements(By.CSS_SELECTOR, ".commands code")]
    for expected in (
        f"docker pull {host}/team/app:v1",
        f"podman pull --tls-verify=false {host}/team/app:v1",
        f"oras pull --plain-http {host}/team/app:v1",
        f"hanzo-registry pull {host}/team/app:v1",
    ):
        assert expected in commands, commands
    s.check("manifest")
    browser.grant_clipboard(d, s.base)
    button = d.find_element(By.CSS_SELECTOR, f"button[data-copy='docker pull {host}/team/app:v1']")
    assert button.is_displayed()  # the script revealed it (without the script the command is plain text)
    button.click()
    WebDriverWait(d, 10).until(ec.text_to_be_present_in_element((By.ID, "copy-status"), "Copied"))
    assert button.get_attribute("data-copied") == "true"
    assert browser.read_clipboard(d) == f"docker pull {host}/team/app:v1"

    # an index: its platforms
    s.open("/console/repositories/team/app/-/manifest/multi")
    assert s.rows() == ["linux/amd64", "linux/arm64"]
    s.check("index")

    # the vulnerability report: severities, fixed versions, the ignored finding, the gate's verdict
    s.open("/console/repositories/team/app/-/manifest/v1")
    d.find_element(By.LINK_TEXT, "Vulnerabilities").click()
    page = s.text()
    assert "CVE-2024-0001" in page and "3.0.13-1" in page and "not fixed" in page
    assert "Pulls are refused" in page and "critical" in page
    ignored = d.find_element(By.XPATH, "//tr[th[contains(., 'CVE-2024-0002')]]")
    assert "yes (policy)" in ignored.text
    s.check("vulnerabilities")
    d.find_element(By.LINK_TEXT, "Signatures").click()
    page = s.text()
    assert "VERIFIED" in page and "FAILED" in page and "the signature does not match the image" in page
    s.check("signatures")
    d.find_element(By.LINK_TEXT, "Model").click()
    assert "not a model" in s.text()
    s.check("model")

    # no admin pages for a reader
    s.open("/console/admin")
    assert "Not allowed" in s.text() and not d.find_elements(By.LINK_TEXT, "Administration")
    s.check("reader-admin-403")
    s.open("/console/namespaces/team")
    assert "Not allowed" in s.text()
    s.open("/console/repositories/secret/app")
    assert "Not allowed" in s.text()

    # the reader's API keys: make one with the keyboard; it is shown once
    d.find_element(By.LINK_TEXT, "API keys").click()
    WebDriverWait(d, 10).until(ec.url_contains("/console/keys"))
    d.find_element(By.ID, "key-name").send_keys("laptop", Keys.ENTER)
    WebDriverWait(d, 10).until(ec.presence_of_element_located((By.ID, "new-key")))
    assert d.find_element(By.ID, "new-key").text.startswith("hzr_")
    s.check("keys")

    # log out with the keyboard: the form's button
    logout = d.find_element(By.CSS_SELECTOR, "form.logout button")
    logout.send_keys(Keys.ENTER)
    WebDriverWait(d, 10).until(ec.url_contains("/console/login"))
    assert "You are logged out" in s.text()
    s.open("/console/repositories")
    assert "/console/login" in d.current_url


def admin_walk(s: Session, key: str) -> None:
    d = s.driver
    s.login("admin", key)
    assert "secret/app" in s.text()
    d.find_element(By.LINK_TEXT, "Administration").click()
    page = s.text()
    assert "Garbage collection" in page and "Storage usage" in page and "Replication" in page
    s.check("admin")
    s.open("/console/repositories/team/app")
    d.find_element(By.PARTIAL_LINK_TEXT, "Permissions and policy").click()
    page = s.text()
    assert "user reader" in page and "severity_gate: critical" in page
    s.check("namespace")
    s.open("/console/repositories/models/llama")
    d.find_element(By.LINK_TEXT, "v1").click()
    d.find_element(By.LINK_TEXT, "Model").click()
    page = s.text()
    assert "LlamaForCausalLM" in page and "safetensors" in page and "model.safetensors" in page
    s.check("model-view")


async def test_console_in_chromium(auth_assembly: Assembly, tmp_path: Path) -> None:
    browser.require_browser()
    a = auth_assembly
    axe = await asyncio.to_thread(browser.axe_source)
    api = Api(a.client, bearer(admin_key(a)))
    reader_key = await new_user(api, "reader")
    await grant(api, "team", "reader", user="reader")
    headers = basic("admin", admin_key(a))
    digest, _ = await push_image(a.client, headers, "team/app", "v1")
    await push_model(a, tmp_path / "model")
    await push_index(a.client, headers, "team/app", "multi")
    await push_image(a.client, headers, "secret/app", "v1")
    big, _ = await push_image(a.client, headers, "team/big", "latest")
    await seed_tags(a.client.server.app[REGISTRY], "team/big", big, TAGS)  # type: ignore[attr-defined]
    await api.call(
        "PUT",
        "/v1/registry/namespaces/team/policy",
        expect=200,
        json_body={
            "scan": {"enabled": True, "severity_gate": "critical", "ignore": ["CVE-2024-0002"]},
            "tags": {"immutable": ["v*"]},
        },
    )
    await seed_report(a, "team/app", digest)
    await seed_signatures(a, "team/app", digest)
    base = str(a.client.make_url("")).rstrip("/")

    def walk() -> list[str]:
        with tempfile.TemporaryDirectory() as profile:
            driver = browser.start_chromium(Path(profile))
            try:
                session = Session(driver, base, axe, a.name)
                reader_walk(session, reader_key)
                admin_walk(session, admin_key(a))
                return session.checked
            except BaseException:
                browser.screenshot(driver, f"{a.name}-failure")
                raise
            finally:
                driver.quit()

    checked = await asyncio.to_thread(walk)
    assert len(checked) == 13, checked
