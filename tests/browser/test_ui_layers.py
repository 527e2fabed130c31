"""Each defence of the message view on its own in a real browser: with the sanitiser switched
off, the sandboxed frame and its CSP alone still stop script, handlers, navigation and every
remote fetch. And every page works with JavaScript turned off."""

from __future__ import annotations

import threading
import time

import mongomock
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from devtools import browser
from improvmx_archive import create_app
from improvmx_archive.sample import payload_from_mime, sample_mime
from improvmx_archive.ui import message as message_view
from improvmx_archive.sanitize import CleanedHtml
from tests.browser.test_ui_browser import QUIET_SECONDS, hostile_payload, sign_in, wait
from tests.conftest import make_settings
from tests.browser.conftest import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def in_process(tmp_path):
    """The app on mongomock served by werkzeug in a thread, so a test can change its code."""
    app = create_app(make_settings(tmp_path, API_KEY=API_KEY, RATELIMIT_ENABLED="false"),
                     mongo_client=mongomock.MongoClient(tz_aware=True))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_sandbox_and_frame_policy_hold_without_the_sanitiser(in_process, tracker, driver, monkeypatch):
    app, base = in_process
    monkeypatch.setattr(message_view, "clean_html", lambda html, inline_url: CleanedHtml(html, 1))
    email_id = app.extensions["archive"].ingest(hostile_payload(tracker)).email_id
    sign_in(driver, base)
    cookies_before = sorted((c["name"], c["value"]) for c in driver.get_cookies())
    tracker.requests.clear()
    driver.get(f"{base}/ui/emails/{email_id}")
    driver.switch_to.frame(driver.find_element(By.ID, "mail-frame"))
    assert driver.find_elements(By.TAG_NAME, "script")  # the raw script really is in the frame
    form_button = driver.find_element(By.XPATH, "//button[text()='Pay']")
    form_button.click()  # sandboxed: the form cannot be submitted
    driver.switch_to.default_content()
    time.sleep(QUIET_SECONDS)
    assert tracker.requests == []
    assert driver.title == "Hostile offer · ImprovMX Archive"
    assert sorted((c["name"], c["value"]) for c in driver.get_cookies()) == cookies_before
    assert driver.current_url == f"{base}/ui/emails/{email_id}"


def test_every_page_works_with_javascript_off(in_process, tmp_path):
    app, base = in_process
    app.extensions["archive"].ingest(payload_from_mime(sample_mime(subject="No script needed")))
    session = browser.chromium(tmp_path / "profile", javascript=False)
    try:
        sign_in(session, base)
        session.find_element(By.CSS_SELECTOR, "[data-select-all]").click()
        assert not session.find_element(By.CSS_SELECTOR, "input[name=ids]").is_selected()  # ui.js did not run
        session.find_element(By.PARTIAL_LINK_TEXT, "No script needed").click()
        wait(session, expected_conditions.presence_of_element_located((By.ID, "mark-processed"))).click()
        wait(session, expected_conditions.presence_of_element_located((By.ID, "mark-unprocessed")))
        assert app.extensions["archive"].emails.find_one()["processed"] is True
        for tab in ("Text", "Headers", "Source"):
            session.find_element(By.LINK_TEXT, tab).click()
            assert session.find_element(By.ID, "subject").text == "No script needed"
        session.get(f"{base}/ui/overview")
        assert session.find_element(By.CSS_SELECTOR, "svg.chart")
        session.find_element(By.ID, "sign-out").click()
        WebDriverWait(session, 15).until(expected_conditions.presence_of_element_located((By.ID, "key")))
    finally:
        session.quit()
    assert app.extensions["database"].ui_sessions.count_documents({}) == 0
