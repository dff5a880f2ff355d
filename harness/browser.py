"""Debian's chromium, headless, driven by Selenium through chromium-driver: the browser the page tests
and the cross-site tests use. A fresh profile each time, nothing fetched from the network by the browser
itself (no component updates, no sync, no QUIC), so that a test sees only the requests its page makes."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUIET_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage")


@contextmanager
def chromium(*arguments: str, javascript: bool = True, window: str = "1100,1000") -> Iterator[webdriver.Chrome]:
    """A fresh headless chromium with `arguments` added (e.g. "--host-resolver-rules=MAP attacker.test
    127.0.0.1", so that a second name reaches a loopback server); `javascript=False`: as a person who
    turned JavaScript off."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (*QUIET_FLAGS, f"--window-size={window}", f"--user-data-dir={profile}", *arguments):
            options.add_argument(argument)
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
        driver.set_page_load_timeout(60)
        try:
            yield driver
        finally:
            driver.quit()
