"""The status page at GET /, in a real browser (Debian's chromium, headless, driven by Selenium through
chromium-driver): it shows the backups and the same facts as `etcd-backup status`, "Back up now" takes a
backup that then appears, it fits a phone, and with an api-token it is refused without it; with a delta
watcher running, the recovery window it shows is the one `etcd-backup status --json` gives. The window test
saves a screenshot in its temp dir; with UPDATE_SCREENSHOT=1, as docs/status-page.png (the docs show it), so
that a test run leaves the tree as it was."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from common import present
from common.recovery_text import DELTAS_OFF
from harness.browser import chromium
from harness.in_process import Service, served_over_http
from harness.processes import ROOT, wait_until
from harness.servers import EtcdServer
from harness.writer import ContinuousWriter, current_revision
from tests.test_deltas import wait_stored, watcher
from tests.test_status import status_json
from worker.drill import run_drill

DOCS_SCREENSHOT = ROOT / "docs" / "status-page.png"
TOKEN = "page-token-0123456789abc"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def table_names(driver: webdriver.Chrome) -> list[str]:
    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#backups tbody tr td:first-child")]


def fact(driver: webdriver.Chrome, label: str) -> str:
    for term in driver.find_elements(By.CSS_SELECTOR, "#facts dt"):
        if term.text == label:
            return str(term.find_element(By.XPATH, "following-sibling::dd[1]").text)
    raise AssertionError(f"no {label!r} on the page")


@pytest.mark.slow
def test_the_page_in_a_browser_backs_up_now(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                            browser: webdriver.Chrome) -> None:
    service = make_service(schedule="0 */6 * * *", drill="30 3 * * *")
    for _ in range(3):
        service.client.post("/api/v1/backup")
    drilled = run_drill(service.config, redis_conn)
    assert drilled.passed, drilled.reason
    names = service.client.get("/api/v1/backup").get_json()
    with served_over_http(service) as base:
        browser.get(base + "/")
        assert browser.title == "etcd-backup status"
        assert table_names(browser) == names[::-1]  # newest first
        assert browser.find_element(By.ID, "verdict").text.startswith("The newest backup is ")
        assert fact(browser, "Kept").startswith("3 backups, ")
        assert fact(browser, "Restore drill").startswith("passed ") and names[-1] in fact(browser, "Restore drill")
        assert fact(browser, "Next backup").endswith("(0 */6 * * *)")
        newest_row = browser.find_element(By.CSS_SELECTOR, "#backups tbody tr")
        link = newest_row.find_element(By.TAG_NAME, "a").get_attribute("href")
        assert link == f"{base}/api/v1/backup/{names[-1]}"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#backups svg circle")) == 2 * 3  # size and duration

        browser.find_element(By.XPATH, "//button[normalize-space()='Back up now']").click()
        result = WebDriverWait(browser, 60).until(
            lambda driver: re.fullmatch(r"backup successfully: (snapshot-\d{8}_\d{6}\.tar\.gz) \(\d+ bytes\)",
                                        driver.find_element(By.ID, "result").text))
        new_name = result.group(1)
        WebDriverWait(browser, 30).until(lambda driver: table_names(driver)[:1] == [new_name])
        assert service.client.get("/api/v1/backup").get_json() == [*names, new_name]
        assert fact(browser, "Kept").startswith("4 backups, ")
        assert_fits_a_phone(browser, base)


def assert_fits_a_phone(browser: webdriver.Chrome, base: str) -> None:
    browser.set_window_size(390, 844)  # a phone: nothing but the table scrolls sideways
    browser.get(base + "/")
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    view_width = browser.execute_script("return document.documentElement.clientWidth")
    assert page_width <= view_width, (page_width, view_width)


@pytest.mark.slow
def test_the_page_shows_the_recovery_window_of_a_running_watcher(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, browser: webdriver.Chrome,
        tmp_path: Path) -> None:
    """A full backup, writes, the delta watcher storing them: the page's recovery point, window, gaps and
    watcher are those of `etcd-backup status --json` (its revisions and times, shown as the page shows times)."""
    service = make_service(schedule="0 */6 * * *", drill="30 3 * * *", delta_period="100ms")
    writer = ContinuousWriter(etcd.client(), f"/page-window-{tmp_path.name}/").start()
    service.client.post("/api/v1/backup")
    drilled = run_drill(service.config, redis_conn)
    assert drilled.passed, drilled.reason
    with served_over_http(service) as base, watcher(service.config, redis_conn):
        time.sleep(1.01)  # a new second: a new backup name
        service.client.post("/api/v1/backup")  # while deltas are stored: no gap between the two
        time.sleep(1)
        writer.stop()
        end = current_revision(etcd.url)
        wait_stored(redis_conn, end)
        wait_until(lambda: status_json("--url", base)["recovery_window"]["watcher"]["behind_revisions"] is not None,
                   10, "a report of etcd's revision after the last delta (the worker's, every 5 s)")
        window = status_json("--url", base)["recovery_window"]
        browser.get(base + "/")
        point, span = fact(browser, "Recovery point"), fact(browser, "Recovery window")
        gaps, running = fact(browser, "Gaps"), fact(browser, "Delta watcher")
        browser.set_window_size(1100, browser.execute_script("return document.documentElement.scrollHeight") + 140)
        screenshot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "status-page.png"
        browser.save_screenshot(str(screenshot))
        assert_fits_a_phone(browser, base)
    earliest, latest = window["earliest"], window["latest"]
    assert latest["revision"] == end and window["recovery_point"]["revision"] == end
    assert re.fullmatch(rf"revision {end}, \d+ s ago \(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", point), point
    assert span == (f"revision {earliest['revision']} ({present.when(earliest['time'])}) to {latest['revision']} "
                    f"({present.when(latest['time'])})"), (span, window)
    assert gaps == "none"
    last = window["watcher"]["last_stored"]
    assert running.startswith(f"running, lease held by {window['watcher']['lease_holder']}, last stored revision "
                              f"{last['revision']} ("), running
    assert running.endswith(f", 0 revisions behind etcd (revision {window['watcher']['etcd_revision']}, "
                            f"reported {present.when(window['watcher']['etcd_seen'])})"), running
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_the_page_with_a_token(make_service: Callable[..., Service], browser: webdriver.Chrome) -> None:
    service = make_service(api_token=TOKEN)
    with served_over_http(service) as base:
        browser.get(base + "/")
        assert "missing or wrong API token" in browser.find_element(By.TAG_NAME, "body").text
        assert browser.find_elements(By.ID, "facts") == []
        # A browser that sends the token (a proxy or an extension adds the header; here the DevTools protocol).
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {TOKEN}"}})
        browser.get(base + "/")
        assert browser.find_element(By.ID, "verdict").text == "No backup yet."
        browser.find_element(By.XPATH, "//button[normalize-space()='Back up now']").click()
        WebDriverWait(browser, 60).until(lambda driver: len(table_names(driver)) == 1)
        assert table_names(browser) == service.client.get(
            "/api/v1/backup", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()


def test_the_page_is_server_rendered_and_self_contained(make_service: Callable[..., Service]) -> None:
    """Readable without JavaScript (the facts and the table are in the HTML), nothing from another site."""
    service = make_service()
    taken = service.client.post("/api/v1/backup").get_json()
    response = service.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'href="/api/v1/backup/{taken["filename"]}"' in html
    assert present.size(taken["filesize"]) in html and "Back up now" in html
    assert '<form method="post" action="/api/v1/backup"' in html  # the button posts even without JavaScript
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN, no other site
    assert 'lang="en"' in html and 'name="viewport"' in html
    assert f"<dt>Deltas</dt>\n  <dd>{DELTAS_OFF}</dd>" in html  # the recovery window: one line with deltas off


def test_what_the_page_shows_is_escaped(make_service: Callable[..., Service], redis_conn: redis.Redis) -> None:
    """A failure message comes from etcd, Redis: whoever writes there must not write into the page."""
    from common.metrics import record_failure

    service = make_service(worker=False)
    record_failure(redis_conn, 1.0, "<script>alert(1)</script>")
    html = service.client.get("/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
