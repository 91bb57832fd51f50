"""The web console end to end: Debian's headless Chromium (driven by Selenium through
chromedriver) against a real faasgate node's admin port.

Loads /console/, creates a function from YAML, sees it listed with its state, invokes
it through the gate and sees the response, stops it and sees the badge change, sees a
change made elsewhere (through the API) without reloading, sees the API's error
messages inline, deletes it. Screenshots go to test-artifacts/. Skips, saying why, only
when no browser, driver or selenium is installed (``make test`` installs them).
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.cli import echo_spec
from tests.support.facilities import (CHROMEDRIVER, CHROMIUM, browser_unavailable,
                                      find_program)
from tests.support.node import ROOT, http

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # deselected without a browser

ARTIFACTS = ROOT / "test-artifacts"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", "--disable-dev-shm-usage", "--window-size=1400,1000")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium session with a fresh profile; quit (and its driver stopped by
    pid) at teardown."""
    # found: without them the browser marker deselects these tests (tests/conftest.py);
    # selenium is a test dependency: an ImportError here is a broken install, a failure
    chromium, driver_path = find_program(*CHROMIUM), find_program(*CHROMEDRIVER)
    assert chromium is not None and driver_path is not None, browser_unavailable()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})   # CSP reports
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = getattr(service, "process", None)
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)


class Page:
    """The console's page as the test sees it: finders and waits by element id."""

    def __init__(self, driver: Any, artifacts: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.by = By
        self.artifacts = artifacts

    def el(self, element_id: str) -> Any:
        return self.driver.find_element(self.by.ID, element_id)

    def css(self, selector: str) -> list[Any]:
        return self.driver.find_elements(self.by.CSS_SELECTOR, selector)

    def text(self, element_id: str) -> str:
        return self.el(element_id).text

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = check()
                if value:
                    return value
            except Exception as exc:   # stale element while the list re-renders
                last_error = exc
            time.sleep(0.1)
        self.shot("timeout")
        raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r});\n"
                             f"page text:\n{self.driver.find_element(self.by.TAG_NAME, 'body').text}")

    def fill(self, element_id: str, value: str) -> None:
        element = self.el(element_id)
        element.clear()
        element.send_keys(value)

    def click(self, element_id: str) -> None:
        self.el(element_id).click()

    def row_state(self, name: str) -> str | None:
        badges = self.css(f'#functions tr[data-name="{name}"] .badge')
        return badges[0].get_attribute("data-state") if badges else None

    def shot(self, label: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"console-{label}.png"
        self.driver.save_screenshot(str(path))
        return path


def csp_reports(driver: Any) -> list[str]:
    """The browser console's Content-Security-Policy messages since the last call."""
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def visible_error(page: Page, element_id: str) -> str:
    element = page.el(element_id)
    return element.text if element.is_displayed() else ""


def test_console_create_list_invoke_stop_delete(browser, cli_node, tmp_path: Path) -> None:
    page = Page(browser, ARTIFACTS)
    status, _, _ = http("GET", f"{cli_node.admin_root}/console/app.js")
    assert status == 200, ("the admin port does not serve the console at /console/ "
                           "(node.py must mount faastwist.admin.console)")

    browser.get(f"{cli_node.admin_root}/console")      # the redirect adds the slash
    page.wait("the page to boot", lambda: page.css("body[data-ready=true]"))
    assert browser.current_url == f"{cli_node.admin_root}/console/"
    # no token yet: the page asks for one (the admin API answers 401), and keeps it in
    # this tab's sessionStorage once given
    page.wait("the token prompt", lambda: "wants a token" in page.text("banner")
              and page.el("token-input").is_displayed())
    page.fill("token-input", cli_node.token)
    page.el("token-input").submit()
    page.wait("the token kept", lambda: browser.execute_script(
        "return sessionStorage.getItem('faastwist.token')") == cli_node.token)
    assert browser.execute_script("return localStorage.getItem('faastwist.token')") is None
    page.wait("server info", lambda: "provider process" in page.text("server-info"))
    assert "clictl" in page.text("controller-name")

    # create from YAML
    spec_text = echo_spec(tmp_path, "webfn", env={"GREETING": "from the browser"}).read_text()
    page.click("btn-new")
    page.fill("editor-yaml", spec_text)
    page.click("editor-submit")
    page.wait("webfn listed", lambda: page.row_state("webfn"))
    page.wait("webfn active", lambda: page.row_state("webfn") == "active")
    page.wait("the detail view", lambda: page.el("detail").is_displayed()
              and page.text("detail-name") == "webfn")
    assert "GREETING" in page.text("detail-spec")
    page.shot("active")

    # the API's error, inline: the same function again, then a typo'd field
    page.click("btn-new")
    page.fill("editor-yaml", spec_text)
    page.click("editor-submit")
    assert "already exists" in page.wait("the create error",
                                         lambda: visible_error(page, "editor-error"))
    page.fill("editor-yaml", "name: typo\ncommand: [cat]\nlimitedCPU: 1\n")
    page.click("editor-submit")
    page.wait("the spec error", lambda: "limitedCPU" in visible_error(page, "editor-error"))
    assert "unknown field" in visible_error(page, "editor-error")
    page.click("btn-editor-close")

    # invoke through the gate
    page.el("invoke-method").send_keys("POST")
    page.fill("invoke-path", "/from/browser")
    page.fill("invoke-headers", "X-Test: selenium\nContent-Type: text/plain")
    page.fill("invoke-body", "ping")
    page.click("invoke-send")
    page.wait("the invoke response", lambda: page.text("invoke-status").startswith("200"))
    answer = json.loads(page.text("invoke-response"))
    assert answer == {"method": "POST", "path": "/from/browser", "body": "ping",
                      "greeting": "from the browser", "xTest": "selenium"}
    assert page.text("invoke-time").endswith(")") and " ms" in page.text("invoke-time")
    assert "content-type: application/json" in page.text("invoke-response-headers")
    page.shot("invoked")

    # recent logs show the request the function logged
    def logs_show_request() -> bool:
        page.click("btn-logs")
        time.sleep(0.3)
        return "echo POST /from/browser 4 bytes: ping" in page.text("detail-logs")
    page.wait("the function's log line", logs_show_request, timeout=20)

    # stop: the badge changes, in the list and in the detail view
    page.click("btn-stop")
    page.wait("webfn inactive", lambda: page.row_state("webfn") == "inactive")
    page.wait("the detail badge", lambda: page.css("#detail-badge[data-state=inactive]"))
    page.shot("stopped")
    page.click("btn-stop")
    page.wait("the stop error", lambda: "invalid event: stop, current state: inactive"
              in visible_error(page, "detail-error"))

    # a change made elsewhere shows up without a reload (the page polls)
    code, _, body = http("PUT", f"{cli_node.admin_url}/webfn/start",
                         headers={"Accept": "application/json"})
    assert code == 200, body
    page.wait("webfn active again", lambda: page.row_state("webfn") == "active")

    # update from the form: the editor starts from the current spec
    page.click("btn-edit")
    assert "from the browser" in page.el("editor-yaml").get_attribute("value")
    page.fill("editor-yaml", spec_text.replace("from the browser", "updated"))
    page.click("editor-submit")
    assert "invalid event: update, current state: active" in page.wait(
        "the update error", lambda: visible_error(page, "editor-error"))
    page.click("btn-editor-close")

    # delete: refused while active, then stop and delete (two clicks: arm, confirm)
    page.click("btn-delete")
    page.click("btn-delete")
    page.wait("the delete error", lambda: "active" in visible_error(page, "detail-error"))
    page.click("btn-stop")
    page.wait("webfn inactive", lambda: page.row_state("webfn") == "inactive")
    page.click("btn-delete")
    page.click("btn-delete")
    page.wait("webfn gone from the list", lambda: page.row_state("webfn") is None
              and page.css("#functions tbody"))
    page.wait("the detail view closed", lambda: not page.el("detail").is_displayed())
    shot = page.shot("deleted")
    assert shot.stat().st_size > 1000
    code, _, _ = http("GET", f"{cli_node.admin_url}/webfn", headers={"Accept": "application/json"})
    assert code == 404
    # all of the above ran under the console's Content-Security-Policy, which the
    # browser enforced without refusing anything the page does
    status, headers, _ = http("GET", f"{cli_node.admin_root}/console/")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert csp_reports(browser) == []


def test_another_site_cannot_frame_the_console(browser, cli_node, tmp_path: Path) -> None:
    """Issue 21: the console could be framed (clickjacking). A page of another origin
    that frames it gets the browser's refusal, and the frame shows nothing of it."""
    page = Page(browser, ARTIFACTS)
    framing = tmp_path / "framing.html"
    framing.write_text(f'<!doctype html><iframe id="f" src="{cli_node.admin_root}/console/" '
                       f'width="800" height="600"></iframe>')
    browser.get(framing.as_uri())
    refused = page.wait("the browser's refusal", lambda: [
        m for m in csp_reports(browser) if "frame-ancestors 'none'" in m], timeout=15)
    assert cli_node.admin_root in refused[0]
    page.shot("framed")
    # the same page, opened on its own, boots (the policy does not break the console)
    browser.get(f"{cli_node.admin_root}/console/")
    page.wait("the page to boot", lambda: page.css("body[data-ready=true]"))
    assert csp_reports(browser) == []


def test_console_pages_and_searches_instead_of_listing_everything(browser, cli_node) -> None:
    """120 functions: the console shows pages of 50 and finds one by name prefix."""
    names = [f"pg{i:03d}" for i in range(120)]

    def create(name: str) -> tuple[int, bytes]:
        code, _, body = http("POST", cli_node.admin_url,
                             f"name: {name}\nmode: fork\ncommand: [/bin/cat]\n",
                             headers={"Content-Type": "application/yaml"})
        return code, body

    def remove(name: str) -> None:
        http("PUT", f"{cli_node.admin_url}/{name}/stop")
        http("DELETE", f"{cli_node.admin_url}/{name}")

    # eight writers at once: the admin API takes concurrent writes (each its own etcd
    # transaction); one after another this set-up was most of the test's time
    with ThreadPoolExecutor(8) as writers:
        created = list(writers.map(create, names))
    assert [code for code, _ in created] == [201] * len(names), created
    page = Page(browser, ARTIFACTS)
    try:
        browser.get(f"{cli_node.admin_root}/console/")
        page.wait("the page to boot", lambda: page.css("body[data-ready=true]"))
        page.wait("the token prompt", lambda: page.el("token-input").is_displayed())
        page.fill("token-input", cli_node.token)
        page.el("token-input").submit()

        def rows() -> list[str]:
            return [r.get_attribute("data-name") for r in page.css("#functions tbody tr")]
        # (the list re-renders every 1.5 s: read it inside page.wait, which retries)
        page.wait("the first page", lambda: rows() == names[:50])
        page.wait("the pager", lambda: "page 1" in page.text("page-info")
                  and "70 more" in page.text("page-info"))
        page.click("btn-next")
        page.wait("the second page", lambda: rows() == names[50:100]
                  and "page 2" in page.text("page-info"))
        page.click("btn-prev")
        page.wait("back on the first page", lambda: rows() == names[:50])
        page.fill("search", "pg11")
        page.wait("the search's rows", lambda: rows() == [f"pg11{i}" for i in range(10)]
                  and page.el("btn-next").get_attribute("disabled") is not None)
        page.shot("paged")
    finally:
        with ThreadPoolExecutor(8) as writers:
            list(writers.map(remove, names))


def test_console_deploys_from_the_store(browser, cli_node) -> None:
    """The store panel lists /system/store and deploys an entry through /system/functions;
    the API's refusal shows inline, and an entry without fprocess is refused in the page."""
    page = Page(browser, ARTIFACTS)
    browser.get(f"{cli_node.admin_root}/console/")
    page.wait("the page to boot", lambda: page.css("body[data-ready=true]"))
    page.wait("the token prompt", lambda: page.el("token-input").is_displayed())
    page.fill("token-input", cli_node.token)
    page.el("token-input").submit()
    page.wait("server info", lambda: "provider process" in page.text("server-info"))
    page.click("btn-store")

    def entries() -> list[str]:
        return [r.get_attribute("data-name") for r in page.css("#store-list tbody tr")]
    listed = page.wait("the catalogue", entries)
    assert {"sha256sum", "uppercase", "wordcount"} <= set(listed)
    page.css('#store-list tr[data-name="uppercase"] button')[0].click()
    page.wait("uppercase listed", lambda: page.row_state("uppercase"))
    page.wait("uppercase active", lambda: page.row_state("uppercase") == "active", 40)
    page.wait("the notice", lambda: "deployed from the store" in page.text("detail-notice"))
    assert page.text("detail-name") == "uppercase"
    assert "tr a-z A-Z" in page.text("detail-spec")
    page.shot("store-deployed")
    code, _, data = http("POST", f"{cli_node.gate_url}/function/uppercase", b"shout",
                         auth=False)
    assert (code, data) == (200, b"SHOUT")
    # again: the API's 409, inline in the store panel
    page.click("btn-store")
    page.wait("the catalogue again", entries)
    page.css('#store-list tr[data-name="uppercase"] button')[0].click()
    message = page.wait("the store error", lambda: visible_error(page, "store-error"))
    assert message.startswith("cannot deploy uppercase here:") and "exists" in message
    refusal = browser.execute_script(
        "try { storeDeployment({name: 'nodeinfo', fprocess: ''}); return ''; }"
        " catch (err) { return err.message; }")
    assert refusal.startswith("store entry nodeinfo has no fprocess")
    http("DELETE", f"{cli_node.admin_root}/system/functions",
         json.dumps({"functionName": "uppercase"}))


def test_console_shows_template_and_digest(browser, cli_node, tmp_path: Path) -> None:
    """A function `faastwist up` deployed shows its template (lang) and build digest as
    fields of its row and of its detail; a plain function shows none."""
    digest = "ab12" * 16
    built = echo_spec(tmp_path, "tplfn", annotations={
        "faastwist.io/lang": "golang-middleware", "faastwist.io/digest": digest,
        "team": "x"}).read_text()
    plain = echo_spec(tmp_path, "plainfn").read_text()
    for text in (built, plain):
        code, _, body = http("POST", cli_node.admin_url, text,
                             headers={"Content-Type": "application/yaml"})
        assert code == 201, body
    page = Page(browser, ARTIFACTS)
    try:
        browser.get(f"{cli_node.admin_root}/console/")
        page.wait("the page to boot", lambda: page.css("body[data-ready=true]"))
        page.wait("the token prompt", lambda: page.el("token-input").is_displayed())
        page.fill("token-input", cli_node.token)
        page.el("token-input").submit()

        def cell(name: str) -> Any:
            cells = page.css(f'#functions tr[data-name="{name}"] td.template')
            return cells[0] if cells else None
        page.wait("tplfn listed", lambda: cell("tplfn") is not None)
        page.wait("its template cell", lambda: cell("tplfn").text
                  == f"golang-middleware {digest[:12]}")
        assert cell("tplfn").get_attribute("data-lang") == "golang-middleware"
        assert cell("tplfn").get_attribute("data-digest") == digest
        assert cell("tplfn").get_attribute("title") == f"digest {digest}"
        page.wait("plainfn listed", lambda: cell("plainfn") is not None)
        assert cell("plainfn").text == "-" and cell("plainfn").get_attribute("data-lang") == ""
        headings = [th.text for th in page.css("#functions thead th")]
        assert headings[headings.index("Replicas") + 1] == "Template"

        browser.get(f"{cli_node.admin_root}/console/#tplfn")
        page.wait("the detail view", lambda: page.el("detail").is_displayed()
                  and page.text("detail-name") == "tplfn")
        page.wait("the template fields", lambda: page.el("detail-template-box").is_displayed())
        fields = dict(zip([dt.text for dt in page.css("#detail-template dt")],
                          [dd.text for dd in page.css("#detail-template dd")]))
        assert fields == {"lang": "golang-middleware", "digest": digest}
        page.shot("template")
        browser.get(f"{cli_node.admin_root}/console/#plainfn")
        page.wait("the plain detail", lambda: page.text("detail-name") == "plainfn"
                  and page.css("#detail-badge[data-state]"))
        page.wait("no template fields", lambda: not page.el("detail-template-box").is_displayed())
        assert csp_reports(browser) == []
    finally:
        for name in ("tplfn", "plainfn"):
            http("PUT", f"{cli_node.admin_url}/{name}/stop")
            http("DELETE", f"{cli_node.admin_url}/{name}")
