"""Answering and writing mail in a real browser (headless Chromium) against gunicorn on
SecantusDB, with a real TLS relay: on a phone with JavaScript off, and on a desktop."""

from __future__ import annotations

import time
import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from devtools import browser, processes
from devtools.smtp_relay import PASSWORD, USERNAME, Relay, make_ca
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.browser.conftest import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, secantus_server):
    work = tmp_path_factory.mktemp("sending-browser")
    certificates = make_ca(work / "ca")
    relay = Relay(certificates).start()
    env = {"API_KEY": API_KEY, "MONGO_URI": processes.mongo_uri(secantus_server.port),
           "MONGO_DB": f"send_browser_{uuid.uuid4().hex[:10]}", "RATELIMIT_STORAGE_URI": "memory://",
           "RATELIMIT_GLOBAL": "100000 per hour", "RATELIMIT_UI": "100000 per minute",
           "SPOOL_DIR": str(work / "spool"), "TRUSTED_PROXY_COUNT": "0", "BACKGROUND_TASKS": "on",
           "WEB_CONCURRENCY": "2", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(relay.port),
           "SMTP_USERNAME": USERNAME, "SMTP_PASSWORD": PASSWORD, "SMTP_CA_FILE": str(certificates.ca),
           "SMTP_IP_FAMILY": "ipv4", "DOMINIO": "example.com"}
    server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
    yield f"http://127.0.0.1:{server.port}", relay
    server.stop()
    relay.stop()


def ingest(base: str, subject: str) -> str:
    import requests
    raw = sample_mime(recipient="support@example.com", subject=subject)
    response = requests.post(base + "/webhook", json=payload_from_mime(raw), timeout=30)
    return response.json()["email_id"]


def wait(driver, condition, timeout=20):
    return WebDriverWait(driver, timeout).until(condition)


def sign_in(driver, base):
    driver.get(base + "/ui/")
    if driver.find_elements(By.ID, "key"):
        driver.find_element(By.ID, "key").send_keys(API_KEY + Keys.ENTER)
    wait(driver, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".messages")))


def follow(driver, element) -> None:
    """Follow a link. With JavaScript off chromedriver's click never returns (its atoms are
    script), so a link is followed by its address and a button pressed from the keyboard."""
    if element.tag_name == "a":
        driver.get(element.get_attribute("href"))
    else:
        element.send_keys(Keys.SPACE)


def wait_sent(driver, timeout=30):
    deadline = time.monotonic() + timeout
    while "Sent" not in driver.find_element(By.CSS_SELECTOR, ".send .state").text \
            or not driver.find_elements(By.LINK_TEXT, "The sent message"):  # the copy is stored just after
        assert time.monotonic() < deadline, driver.page_source[:2000]
        time.sleep(0.5)
        driver.refresh()


@pytest.mark.parametrize("phone", [True, False], ids=["phone-no-js", "desktop-js"])
def test_reply_from_the_message_page_is_sent_and_joins_the_conversation(stack, tmp_path, phone):
    base, relay = stack
    size = {"width": 390, "height": 780} if phone else {}
    driver = browser.chromium(tmp_path / "profile", mobile=phone, javascript=not phone, **size)
    try:
        subject = f"Question {uuid.uuid4().hex[:6]}"
        email_id = ingest(base, subject)
        sign_in(driver, base)
        driver.get(f"{base}/ui/emails/{email_id}")
        follow(driver, driver.find_element(By.ID, "reply"))
        wait(driver, expected_conditions.presence_of_element_located((By.ID, "text")))
        if phone:
            width = driver.execute_cdp_cmd("Runtime.evaluate", {"expression": "document.documentElement.scrollWidth",
                                                                "returnByValue": True})["result"]["value"]
            assert width <= 500, "the compose page scrolls sideways on a phone"
        driver.find_element(By.ID, "text").send_keys("It ships today.")
        before = len(relay.deliveries)
        follow(driver, driver.find_element(By.ID, "send"))
        wait(driver, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".send")))
        assert "Queued for sending" in driver.page_source
        wait_sent(driver)
        delivered = relay.wait_for(before + 1)[-1]
        assert f"Subject: Re: {subject}".encode() in delivered.data
        follow(driver, driver.find_element(By.LINK_TEXT, "The sent message"))
        wait(driver, expected_conditions.presence_of_element_located((By.ID, "conversation")))
        assert subject in driver.find_element(By.ID, "conversation").text
    finally:
        driver.quit()
