"""Each defence of the message view on its own in a real browser: with the sanitiser switched
off, the sandboxed frame and its CSP alone still stop script, handlers, navigation and every
remote fetch; with every Content-Security-Policy header removed, the sanitised HTML alone
fetches nothing remote until the reader asks. And every page works with JavaScript turned off."""

from __future__ import annotations

import threading
import time

from email.message import EmailMessage

import mongomock
import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from devtools import browser
from improvmx_archive import create_app
from improvmx_archive.sample import payload_from_mime, sample_mime
from improvmx_archive.ui import message as message_view
from improvmx_archive.ui.sanitize import CleanedHtml
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
    monkeypatch.setattr(message_view, "clean_html", lambda html, inline_url, remote=False: CleanedHtml(html, 1))
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


def every_fetching_payload(tracker) -> dict:
    """The hostile message plus every other way HTML can make a browser fetch something."""
    t = tracker.url
    html = f"""<html><head><link rel="stylesheet" href="{t('/link2.css')}">
<link rel="preload" as="image" href="{t('/preload.png')}"><link rel="prefetch" href="{t('/prefetch')}">
<link rel="icon" href="{t('/icon.png')}"></head>
<body background="{t('/body-attr.png')}">
<img src="{t('/img.png')}" srcset="{t('/srcset.png')} 2x" alt="tracked">
<img src="{t('/img2.png').replace('http:', '')}" alt="protocol-relative">
<img src=" HTTP://127.0.0.1:{tracker.port}/upper.png">
<picture><source srcset="{t('/source.png')}"><img src="{t('/picture.png')}"></picture>
<video poster="{t('/poster.png')}" src="{t('/video.mp4')}"><track src="{t('/track.vtt')}"></video>
<audio src="{t('/audio.mp3')}"></audio><input type="image" src="{t('/input.png')}">
<table background="{t('/table.png')}"><tr><td background="{t('/td.png')}">cell</td></tr></table>
<div style="background-image: url('{t('/style-url.png')}')">styled</div>
<div style="list-style-image: image-set('{t('/image-set.png')}' 1x)">set</div>
<div style="background: src('{t('/src-fn.png')}')">src</div>
<svg width="10" height="10"><image href="{t('/svg-image.png')}" width="10" height="10"/>
<use href="{t('/use.svg#a')}"/><filter id="f"><feImage href="{t('/fe-image.png')}"/></filter></svg>
<a ping="{t('/ping')}" href="{t('/clicked-only')}">a link</a>
<p>Plain content survives.</p></body></html>"""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Mallory <mallory@evil.example>", "sales@archive.test", \
        "Fetches everything"
    message.set_content("plain part")
    message.add_alternative(html, subtype="html")
    return payload_from_mime(message.as_bytes())


class _WithoutContentSecurityPolicy:
    """What a proxy that drops the header does: every response loses its CSP."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def without_policy(status, headers, *args):
            kept = [(name, value) for name, value in headers if name.lower() != "content-security-policy"]
            return start_response(status, kept, *args)

        return self.wsgi_app(environ, without_policy)


@pytest.mark.parametrize("payload", [hostile_payload, every_fetching_payload])
def test_sanitised_html_fetches_nothing_remote_without_any_policy(in_process, tracker, driver, payload):
    """The sanitiser alone: no CSP anywhere, the frame opened in the page and on its own (a
    saved page, a client that ignores CSP). The local tracker counts every request."""
    app, base = in_process
    app.wsgi_app = _WithoutContentSecurityPolicy(app.wsgi_app)
    email_id = app.extensions["archive"].ingest(payload(tracker)).email_id
    sign_in(driver, base)
    assert "Content-Security-Policy" not in requests.get(f"{base}/ui/login", timeout=10).headers
    tracker.requests.clear()
    driver.get(f"{base}/ui/emails/{email_id}")
    driver.switch_to.frame(driver.find_element(By.ID, "mail-frame"))
    wait(driver, expected_conditions.presence_of_element_located((By.XPATH, "//p[text()='Plain content survives.']")))
    driver.switch_to.default_content()
    driver.get(f"{base}/ui/emails/{email_id}/frame")  # the frame's document on its own, unsandboxed
    wait(driver, expected_conditions.presence_of_element_located((By.XPATH, "//p[text()='Plain content survives.']")))
    time.sleep(QUIET_SECONDS)
    assert tracker.requests == []
    # ...and the counter works: asking for remote content loads the images.
    driver.get(f"{base}/ui/emails/{email_id}/frame?remote=1")
    wait(driver, lambda d: any("GET /" in request and ".png" in request for request in tracker.requests))


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
