"""The web UI in headless Chromium against gunicorn on SecantusDB: what an owner does every
day, and what a hostile message and a hostile site cannot do."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from devtools.browser import allow_downloads
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.browser.conftest import API_KEY, LocalSite

pytestmark = pytest.mark.slow

QUIET_SECONDS = 1.5  # how long the tracker must stay silent after the page settled


def hostile_payload(tracker) -> dict:
    """A message trying everything a sender can put in HTML against its reader."""
    t = tracker.url
    html = f"""<html><head>
<meta http-equiv="refresh" content="0;url={t('/meta-refresh')}">
<base href="{t('/base/')}">
<link rel="stylesheet" href="{t('/link.css')}">
<style>@import url({t('/import.css')});
@font-face {{ font-family: Tracked; src: url({t('/font.woff')}); }}
body {{ font-family: Tracked; background: url({t('/body-bg.png')}); }}</style>
</head><body>
<script>parent.document.title = "pwned"; document.cookie = "pwned=1"; new Image().src = "{t('/script')}";</script>
<img src="x" onerror="parent.document.title='pwned'; new Image().src='{t('/onerror')}'">
<a href="javascript:parent.document.title='pwned'">a javascript: link</a>
<form action="{t('/form')}" method="post"><input name="card" value="1234"><button>Pay</button></form>
<div style="width: 20px; height: 20px; background-image: url({t('/css-url.png')})">styled</div>
<p style="font-family: Tracked">text in a remote font</p>
<img src="{t('/tracking-pixel.png')}" alt="remote">
<iframe src="{t('/iframe')}"></iframe><object data="{t('/object')}"></object>
<p>Plain content survives.</p>
</body></html>"""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "Mallory <mallory@evil.example>", "sales@archive.test", "Hostile offer"
    message.set_content("plain part")
    message.add_alternative(html, subtype="html")
    return payload_from_mime(message.as_bytes())


@pytest.fixture(scope="module")
def mail(served, tracker):
    served.ingest("invoice", payload_from_mime(sample_mime(recipient="billing@archive.test",
                                                           subject="Invoice 2026-11 from Acme")))
    served.ingest("picture", payload_from_mime(sample_mime(recipient="photos@archive.test",
                                                           subject="Holiday picture")))
    served.ingest("hostile", hostile_payload(tracker))
    served.wait_searchable("holiday", 1)
    return served


def wait(driver, condition, timeout=15):
    return WebDriverWait(driver, timeout).until(condition)


def sign_in(driver, base):
    """Through the sign-in form, unless the browser's session is still signed in."""
    driver.get(base + "/ui/")
    if driver.find_elements(By.ID, "key"):
        driver.find_element(By.ID, "key").send_keys(API_KEY)
        driver.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait(driver, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".messages")))


def test_owner_signs_in_searches_reads_and_downloads(driver, mail, tmp_path):
    sign_in(driver, mail.base)
    rows = driver.find_elements(By.CSS_SELECTOR, ".message-row .subject")
    assert [row.text for row in rows] == ["Hostile offer", "Holiday picture", "Invoice 2026-11 from Acme"]

    search = driver.find_element(By.ID, "q")
    search.send_keys("holiday")
    search.submit()
    wait(driver, expected_conditions.url_contains("q=holiday"))
    rows = driver.find_elements(By.CSS_SELECTOR, ".message-row .subject")
    assert [row.text for row in rows] == ["Holiday picture"]

    rows[0].click()
    wait(driver, expected_conditions.presence_of_element_located((By.ID, "mail-frame")))
    assert driver.find_element(By.ID, "subject").text == "Holiday picture"
    driver.switch_to.frame(driver.find_element(By.ID, "mail-frame"))
    image = wait(driver, expected_conditions.presence_of_element_located((By.TAG_NAME, "img")))
    wait(driver, lambda d: d.execute_script("return arguments[0].complete", image))
    assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
    driver.switch_to.default_content()

    downloads = tmp_path / "downloads"
    allow_downloads(driver, downloads)
    driver.find_element(By.LINK_TEXT, "sample.pdf").click()
    target = downloads / "sample.pdf"
    wait(driver, lambda d: target.exists() and not list(downloads.glob("*.crdownload")))
    assert target.read_bytes().startswith(b"%PDF-1.4")

    driver.find_element(By.ID, "mark-processed").click()
    wait(driver, expected_conditions.presence_of_element_located((By.ID, "mark-unprocessed")))
    assert mail.api(f"/emails/{mail.ids['picture']}")["email"]["processed"] is True


def test_hostile_message_runs_nothing_and_fetches_nothing_until_asked(driver, mail, tracker):
    sign_in(driver, mail.base)
    cookies_before = sorted((c["name"], c["value"]) for c in driver.get_cookies())
    tracker.requests.clear()
    driver.get(f"{mail.base}/ui/emails/{mail.ids['hostile']}")
    title = "Hostile offer · ImprovMX Archive"
    assert driver.title == title
    frame = driver.find_element(By.ID, "mail-frame")
    driver.switch_to.frame(frame)
    wait(driver, expected_conditions.presence_of_element_located(
        (By.XPATH, "//p[text()='Plain content survives.']")))
    driver.find_element(By.LINK_TEXT, "a javascript: link").click()  # no href is left to follow
    assert driver.find_elements(By.TAG_NAME, "form") == [] and driver.find_elements(By.TAG_NAME, "iframe") == []
    driver.switch_to.default_content()
    time.sleep(QUIET_SECONDS)

    assert tracker.requests == []
    assert driver.title == title
    assert sorted((c["name"], c["value"]) for c in driver.get_cookies()) == cookies_before
    assert driver.current_url.startswith(mail.base)  # no refresh, no navigation away
    assert driver.find_element(By.ID, "remote-notice").text.startswith("Remote content blocked")

    driver.find_element(By.ID, "show-remote").click()
    wait(driver, lambda d: tracker.requests)
    assert "GET /tracking-pixel.png" in tracker.requests
    assert driver.title == title


def test_cross_site_and_token_less_posts_change_nothing(driver, mail):
    """A page on another site (localhost is another site than 127.0.0.1) and one on another
    origin of the same site both auto-submit a form against a signed-in reader."""
    sign_in(driver, mail.base)
    target = f"{mail.base}/ui/emails/{mail.ids['invoice']}/processed"
    attack = (f'<form id="f" method="post" action="{target}"><input name="processed" value="true"></form>'
              '<script>document.getElementById("f").submit()</script>').encode()
    attacker = LocalSite({"/attack": ("text/html", attack)})
    try:
        for host in ("localhost", "127.0.0.1"):
            driver.get(attacker.url("/attack", host=host))
            wait(driver, lambda d: d.current_url.startswith(mail.base))
            wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
            assert "nothing was changed" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        attacker.close()
    assert mail.api(f"/emails/{mail.ids['invoice']}")["email"]["processed"] is False


def test_sign_out_ends_the_session(driver, mail):
    sign_in(driver, mail.base)
    driver.find_element(By.ID, "sign-out").click()
    wait(driver, expected_conditions.presence_of_element_located((By.ID, "key")))
    driver.get(mail.base + "/ui/overview")
    assert "/ui/login" in driver.current_url
    assert all(cookie["name"] != "ui_session" for cookie in driver.get_cookies())
