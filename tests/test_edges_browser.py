"""Cross-site request forgery and DNS rebinding, tried from a real browser (headless chromium,
harness.browser): a page of another origin (http://attacker.test:<its port>, a name chromium maps to
127.0.0.1) posts a form and a no-cors fetch to the API, directly and through the README's proxy that adds
the token; then the browser loads the API by the attacker's name, as a rebound name would. Every attempt
is refused, no backup is taken or rotated out; the status page's own "Back up now" button, in the same
browser, with and without JavaScript, directly and behind the proxy, still takes a backup."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import api.page
from harness.browser import chromium
from harness.in_process import Service, served_over_http
from harness.nginx import TokenProxy

ATTACKER = "attacker.test"
PROXY_NAME = "backup.proxy.test"
NAMES = f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1, MAP {PROXY_NAME} 127.0.0.1"
TOKEN = "browser-token-0123456789abc"
ATTACKS = 4
"""With rotate: 3, four backups taken by forged POSTs would rotate out every backup taken before."""


class AttackerPage(BaseHTTPRequestHandler):
    """Another site's page: a form that posts to `target` (the API's backup or verify URL), and a script
    that posts there with fetch(..., {mode: "no-cors"}), whose answer it never needs to read."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"""<!doctype html><title>cute cats</title>
<form id="forged" method="post" action="{self.server.target}"><input name="x" value="1"></form>
<script>
async function forge(url) {{
  try {{ await fetch(url, {{method: "POST", mode: "no-cors", body: "x=1"}}); return "sent"; }}
  catch (error) {{ return String(error); }}
}}
</script>""".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def attacker_site(target: str) -> Iterator[str]:
    """Serve the attacker's page, posting to `target`, on a free loopback port; yield its URL by the
    attacker's name."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), AttackerPage)
    server.target = target  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        yield f"http://{ATTACKER}:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def body_text(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def refused_posts(caplog: pytest.LogCaptureFixture) -> int:
    """POSTs the API answered 403, as its HTTP server logged them (the browser cannot see a no-cors answer)."""
    return sum(1 for record in caplog.records  # werkzeug colours the request line: not in the pattern
               if record.name == "werkzeug" and re.search(r"POST /\S+ HTTP/1\.1[^\"]*\" 403 ", record.getMessage()))


def attack(driver: webdriver.Chrome, page: str, backup_url: str, verify_url: str) -> None:
    """From the attacker's page: ATTACKS form POSTs and ATTACKS no-cors fetch POSTs to `backup_url`, one
    of each to `verify_url`. Each form POST shows the API's answer, its refusal."""
    for target in [backup_url] * ATTACKS + [verify_url]:
        driver.get(page)
        driver.execute_script("document.getElementById('forged').action = arguments[0];"
                              "document.getElementById('forged').submit()", target)
        WebDriverWait(driver, 30).until(lambda d: "cross-site request refused" in body_text(d))
        # Chromium sends Sec-Fetch-Site only to https and loopback addresses: elsewhere Origin tells
        assert f"('{page.rstrip('/')}')" in body_text(driver) or "Sec-Fetch-Site: 'cross-site'" in body_text(driver)
    driver.get(page)
    for target in [backup_url] * ATTACKS + [verify_url]:
        assert driver.execute_async_script("forge(arguments[0]).then(arguments[1])", target) == "sent"


def click_back_up_now(driver: webdriver.Chrome) -> str:
    """Click the page's own button (JavaScript on); the name of the backup it took."""
    driver.find_element(By.XPATH, "//button[normalize-space()='Back up now']").click()
    result = WebDriverWait(driver, 60).until(
        lambda d: re.fullmatch(r"backup successfully: (snapshot-\d{8}_\d{6}\.tar\.gz) \(\d+ bytes\)",
                               d.find_element(By.ID, "result").text))
    return result.group(1)


@pytest.mark.slow
def test_another_site_can_neither_post_nor_read(make_service: Callable[..., Service],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    service = make_service(rotate=3)
    names = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(3)]
    with served_over_http(service) as base, attacker_site(f"{base}/api/v1/backup") as page, \
            chromium(NAMES) as driver:
        api_port = base.rsplit(":", 1)[1]
        attack(driver, page, f"{base}/api/v1/backup", f"{base}/api/v1/backup/{names[0]}/verify")
        WebDriverWait(driver, 10).until(lambda _: refused_posts(caplog) == 2 * (ATTACKS + 1))
        assert service.client.get("/api/v1/backup").get_json() == names  # none taken, none rotated out

        # DNS rebinding: attacker.test now resolves to the service (here: always). The browser sends
        # Host: attacker.test:<port>, and what the page could read is a refusal.
        for path in ("/api/v1/backup", f"/api/v1/backup/{names[-1]}", "/"):
            driver.get(f"http://{ATTACKER}:{api_port}{path}")
            text = body_text(driver)
            assert "misdirected request" in text and f"'{ATTACKER}:{api_port}'" in text, text
            assert not any(name in text for name in names)

        # The page's own button, in the same browser, by address and by localhost
        for own in (base, f"http://localhost:{api_port}"):
            driver.get(own + "/")
            names = [*names, click_back_up_now(driver)][-3:]
            assert service.client.get("/api/v1/backup").get_json() == names
        # ...and its Content-Security-Policy let its own style and script run and blocked nothing
        # (chromium logs each blocked resource as a console error)
        blocked = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in
                   entry["message"]]
        assert blocked == [], "\n".join(blocked)
        assert driver.execute_script("return getComputedStyle(document.body).maxWidth") == "992px"  # 62rem


@pytest.mark.slow
def test_the_button_without_javascript(make_service: Callable[..., Service]) -> None:
    """A form POST from the page itself: the browser sends Origin and Sec-Fetch-Site: same-origin (and
    not `Origin: null`, which it would under Referrer-Policy: no-referrer)."""
    service = make_service()
    with served_over_http(service) as base, chromium(javascript=False) as driver:
        driver.get(base + "/")
        assert driver.find_element(By.ID, "verdict").text == "No backup yet."
        assert driver.find_element(By.ID, "as-of").text.startswith("As of ")
        driver.find_element(By.XPATH, "//button[normalize-space()='Back up now']").click()
        WebDriverWait(driver, 60).until(lambda d: '"backup successfully"' in body_text(d))
    assert len(service.client.get("/api/v1/backup").get_json()) == 1


@pytest.mark.slow
def test_behind_the_proxy_that_adds_the_token(make_service: Callable[..., Service], tmp_path: Path) -> None:
    """The README's browser setup (nginx adds the token, its config as the README writes it) with allowed-hosts:
    [the proxy's name]: the operator's button works through it, another site's page cannot use it, a rebound name
    gets 421."""
    service = make_service(rotate=3, api_token=TOKEN, allowed_hosts=[PROXY_NAME])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    names = [service.client.post("/api/v1/backup", headers=auth).get_json()["filename"] for _ in range(3)]
    with served_over_http(service) as base:
        proxy = TokenProxy(tmp_path / "nginx", base, TOKEN, PROXY_NAME).start()
        try:
            public = proxy.public_base
            with attacker_site(f"{public}/api/v1/backup") as page, chromium(NAMES) as driver:
                attack(driver, page, f"{public}/api/v1/backup", f"{public}/api/v1/backup/{names[0]}/verify")
                assert service.client.get("/api/v1/backup", headers=auth).get_json() == names

                driver.get(f"http://{ATTACKER}:{proxy.port}/api/v1/backup")  # refused by the proxy itself
                assert "misdirected request" in body_text(driver).lower()
                assert not any(name in body_text(driver) for name in names)

                driver.get(public + "/")
                assert driver.find_element(By.ID, "verdict").text.startswith("The newest backup is ")
                names = [*names, click_back_up_now(driver)][-3:]
                assert service.client.get("/api/v1/backup", headers=auth).get_json() == names
        finally:
            proxy.stop()


@pytest.mark.slow
def test_the_page_refreshes_itself_and_says_when_it_is_stale(make_service: Callable[..., Service],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.page, "REFRESH_SECONDS", 1)
    service = make_service()
    with chromium() as driver:
        with served_over_http(service) as base:
            driver.get(base + "/")
            first = driver.find_element(By.CSS_SELECTOR, "#as-of time").get_attribute("datetime")
            taken = service.client.post("/api/v1/backup").get_json()["filename"]  # not by this page
            WebDriverWait(driver, 30).until(lambda d: taken in body_text(d))
            assert driver.find_element(By.CSS_SELECTOR, "#as-of time").get_attribute("datetime") != first
        # The service is gone: the page keeps what it shows, and says it is stale.
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "stale").text.startswith("Stale: "))
        assert taken in body_text(driver)
