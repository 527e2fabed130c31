"""Headless Chromium for the browser tests and the README screenshots: Debian's chromium
driven through its own chromedriver by Selenium, with nothing fetched from the internet.

A missing browser raises (CI installs chromium and chromium-driver; a test that needs the
browser must fail without it, never skip).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-default-apps", "--disable-sync", "--hide-scrollbars", "--force-color-profile=srgb",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(CHROMEDRIVER).exists():
        raise FileNotFoundError("chromium and chromium-driver are not installed "
                                "(apt-get install --no-install-recommends chromium chromium-driver fonts-dejavu-core)")
    return found


def chromium(user_data_dir: Path, width: int = 1280, height: int = 900, mobile: bool = False,
             javascript: bool = True):
    """A fresh headless Chromium session with its own profile directory."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={width},{height}")
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    if mobile:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0}})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def allow_downloads(driver, directory: Path) -> None:
    """Save downloads into directory without asking."""
    directory.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(directory)})
