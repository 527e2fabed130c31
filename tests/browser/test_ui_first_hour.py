"""The UI's first hour (issue 19, items 7-11) in headless Chromium against gunicorn (two
workers) on SecantusDB: a refused search stays correctable, every header shows, the message
frame fits its content and stays sandboxed, figures agree across workers after an import
and a delete, and the small things (icon, favicon, phone chart) look right."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from devtools import browser, processes
from improvmx_archive.sample import payload_from_mime
from tests.browser.conftest import API_KEY
from tests.browser.test_ui_browser import sign_in, wait

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Archive:
    base: str

    def ingest(self, payload: dict) -> str:
        response = requests.post(self.base + "/webhook", json=payload, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["email_id"]

    def import_raw(self, raw: bytes) -> str:
        response = requests.post(self.base + "/import", data=raw, timeout=30,
                                 headers={**AUTH, "Content-Type": "message/rfc822"})
        assert response.status_code == 201, response.text
        return response.json()["email_id"]

    def total(self, **params: str) -> int:
        response = requests.get(self.base + "/emails", params=params, headers=AUTH, timeout=30)
        response.raise_for_status()
        return response.json()["total"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, secantus_server):
    """An archive of this module's own (a fresh database), so counts here are exact."""
    work = tmp_path_factory.mktemp("first-hour-app")
    env = {
        "API_KEY": API_KEY,
        "MONGO_URI": processes.mongo_uri(secantus_server.port),
        "MONGO_DB": f"first_hour_{uuid.uuid4().hex[:10]}",
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_GLOBAL": "100000 per hour",
        "RATELIMIT_UI": "100000 per minute",
        "SPOOL_DIR": str(work / "spool"),
        "TRUSTED_PROXY_COUNT": "0",
        "BACKGROUND_TASKS": "off",
        "WEB_CONCURRENCY": "2",
    }
    server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
    yield Archive(f"http://127.0.0.1:{server.port}")
    server.stop()


def raw_mail(subject: str, to: str, delivered_to: str, *, cc: str | None = None, html: str | None = None,
             attachment: tuple[bytes, str, str, str] | None = None, sender: str = "Alice <alice@example.org>",
             extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    message = EmailMessage()
    for name, value in extra_headers:
        message[name] = value
    message["From"], message["To"], message["Subject"] = sender, to, subject
    if cc:
        message["Cc"] = cc
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    message["Delivered-To"] = delivered_to
    message.set_content("plain text")
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment:
        data, maintype, subtype, name = attachment
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def test_a_search_with_an_unclosed_quote_stays_in_the_inbox(driver, archive):
    archive.ingest(payload_from_mime(raw_mail("Quarterly numbers", "sales@archive.test", "sales@archive.test")))
    sign_in(driver, archive.base)
    search = driver.find_element(By.ID, "q")
    search.send_keys('"quarterly numbers')
    search.submit()
    wait(driver, expected_conditions.presence_of_element_located((By.ID, "search-problem")))
    assert driver.find_element(By.ID, "q").get_attribute("value") == '"quarterly numbers'  # as typed
    assert driver.title.startswith("Inbox")
    problem = driver.find_element(By.ID, "search-problem")
    assert problem.is_displayed() and problem.text
    box = driver.find_element(By.ID, "q").rect
    assert 0 <= problem.rect["y"] - (box["y"] + box["height"]) < 80  # right under the search box
    search = driver.find_element(By.ID, "q")
    search.clear()
    search.send_keys('"quarterly numbers"')
    search.submit()
    wait(driver, lambda d: not d.find_elements(By.ID, "search-problem"))


def test_headers_tab_shows_every_stored_header(driver, archive):
    email_id = archive.ingest(payload_from_mime(raw_mail(
        "Every header", "sales@archive.test", "sales@archive.test",
        extra_headers=(("Received", "from relay.example by mx.improvmx.com; Mon, 30 Nov 2026 10:00:02 +0000"),
                       ("Received", "from origin.example by relay.example; Mon, 30 Nov 2026 10:00:01 +0000"),
                       ("Sender", "Robot <robot@lists.example.org>")))))
    sign_in(driver, archive.base)
    driver.get(f"{archive.base}/ui/emails/{email_id}?tab=headers")
    rows = [(row.find_element(By.TAG_NAME, "th").text, row.find_element(By.TAG_NAME, "td").text)
            for row in driver.find_elements(By.CSS_SELECTOR, "table.headers tr")]
    names = [name for name, _ in rows]
    for name in ("From", "To", "Date", "Received", "Sender", "Subject", "Delivered-To"):
        assert name in names, name
    assert dict(rows)["Sender"] == "Robot <robot@lists.example.org>"
    assert [value.split()[1] for name, value in rows if name == "Received"] == ["relay.example", "origin.example"]


@pytest.mark.parametrize("width, height, mobile", [(1280, 900, False), (390, 844, True)])
def test_a_short_message_fits_its_frame_and_its_attachment_is_in_view(archive, shapes, tmp_path, width, height,
                                                                      mobile):
    email_id = archive.ingest(payload_from_mime(raw_mail(
        "Two lines", "sales@archive.test", "sales@archive.test",
        html="<p>Hello Sam,</p><p>the signed contract is attached.</p>",
        attachment=(b"%PDF-1.4\n%%EOF\n", "application", "pdf", "contract.pdf"))))
    session = browser.chromium(tmp_path / "profile", width=width, height=height, mobile=mobile)
    try:
        sign_in(session, archive.base)
        session.get(f"{archive.base}/ui/emails/{email_id}")
        frame = wait(session, expected_conditions.presence_of_element_located((By.ID, "mail-frame")))
        link = session.find_element(By.LINK_TEXT, "contract.pdf")
        assert link.rect["y"] + link.rect["height"] <= session.execute_script("return window.innerHeight")
        frame_height = frame.size["height"]
        assert frame_height <= 200, frame_height  # not 70% of the window for two lines
        # The sandbox is intact: no scripts, no same-origin access for the sender's HTML.
        assert frame.get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
        assert session.execute_script("return arguments[0].contentDocument === null", frame)
        policy = requests.get(f"{archive.base}/ui/emails/{email_id}/frame",
                              cookies={c["name"]: c["value"] for c in session.get_cookies()},
                              timeout=30).headers["Content-Security-Policy"]
        assert policy.startswith("sandbox allow-popups allow-popups-to-escape-sandbox;")
        assert "allow-scripts" not in policy and "allow-same-origin" not in policy
        content = content_height(session, frame)
        assert content <= frame_height, (content, frame_height)  # all of it shows, no inner scroll
        for shape, email_id in shapes.items():
            session.get(f"{archive.base}/ui/emails/{email_id}")
            frame = wait(session, expected_conditions.presence_of_element_located((By.ID, "mail-frame")))
            cap = 0.8 * session.execute_script("return window.innerHeight")
            content, frame_height = content_height(session, frame), frame.size["height"]
            assert content <= frame_height or frame_height >= cap - 1, (shape, content, frame_height)
            assert frame_height <= max(content * 2, content + 160), (shape, content, frame_height)  # no big void
    finally:
        session.quit()


def content_height(driver, frame) -> int:
    """How tall the frame's document really is (its body's bottom plus the body margin)."""
    driver.switch_to.frame(frame)
    try:
        wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
        return driver.execute_script("return Math.ceil(document.body.getBoundingClientRect().bottom) + 12")
    finally:
        driver.switch_to.default_content()


# Shapes of HTML mail the frame's size estimate must fit (fits in the frame, or fills it).
SHAPES = {
    "line breaks": "Hi,<br><br>Thanks for your order.<br>It ships tomorrow.<br><br>-- <br>Shop",
    "list": "<ul>" + "".join(f"<li>item {n} with a few words</li>" for n in range(10)) + "</ul>",
    "divs": "".join(f"<div>line {n}</div>" for n in range(20)),
    "preformatted": "<pre>" + "\n".join(f"row {n}: value" for n in range(15)) + "</pre>",
    "newsletter": ('<table width="600" cellpadding="0"><tr><td style="padding: 12px 24px; font-family: Arial">'
                   "<h1>Big news</h1>" + "<p>Short item text about things.</p>" * 6
                   + '<img src="data:image/png;base64,iVBORw0KGgo=" width="600" height="200"></td></tr></table>'),
    "blocked image": '<p>Look</p><img src="https://t.example/big.png" width="600" height="300"><p>end</p>',
    "paragraph": "<p>" + "lorem ipsum dolor sit amet " * 40 + "</p>",
}


@pytest.fixture(scope="module")
def shapes(archive):
    return {shape: archive.ingest(payload_from_mime(raw_mail(shape, "sales@archive.test", "sales@archive.test",
                                                             html=html)))
            for shape, html in SHAPES.items()}


def test_a_long_message_still_gets_a_tall_frame(driver, archive):
    paragraphs = "".join(f"<p>Paragraph {n}: {'lorem ipsum dolor ' * 30}</p>" for n in range(30))
    email_id = archive.ingest(payload_from_mime(raw_mail("Long", "sales@archive.test", "sales@archive.test",
                                                         html=paragraphs)))
    sign_in(driver, archive.base)
    driver.get(f"{archive.base}/ui/emails/{email_id}")
    frame = wait(driver, expected_conditions.presence_of_element_located((By.ID, "mail-frame")))
    assert frame.size["height"] >= 0.75 * driver.execute_script("return window.innerHeight")


def _aliases(driver) -> dict[str, int]:
    return {row.find_element(By.CSS_SELECTOR, ".alias").text: int(row.find_element(By.CSS_SELECTOR, ".count").text)
            for row in driver.find_elements(By.CSS_SELECTOR, ".aliases a")
            if row.find_elements(By.CSS_SELECTOR, ".alias")}


def _storage(driver) -> dict[str, str]:
    card = driver.find_element(By.XPATH, "//section[h2[text()='Storage']]")
    return dict(zip([dt.text for dt in card.find_elements(By.TAG_NAME, "dt")],
                    [dd.text for dd in card.find_elements(By.TAG_NAME, "dd")]))


def _every_worker_sees(driver, url: str, read, expected, attempts: int = 6):
    """Load the page several times (the two workers take turns at random) and check each."""
    for _ in range(attempts):
        driver.get(url)
        assert read(driver) == expected


def test_sidebar_and_storage_agree_with_the_archive_after_an_import_and_a_delete(driver, archive):
    """Without DOMINIO: the sidebar lists where mail was delivered, never a Cc'd outsider;
    after an import and a delete every worker shows the new figures at once."""
    archive.ingest(payload_from_mime(raw_mail("Before", "sales@archive.test", "sales@archive.test")))
    sign_in(driver, archive.base)
    before_aliases = {alias: archive.total(to=alias) for alias in _aliases_of(driver, archive)}
    driver.get(archive.base + "/ui/overview")
    before_storage = _storage(driver)
    _every_worker_sees(driver, archive.base + "/ui/", _aliases, before_aliases)  # every worker has cached them

    big = (b"z" * 400_000, "application", "pdf", "big.pdf")  # GridFS-sized: changes "Kept in GridFS"
    imported = archive.import_raw(raw_mail("Imported", "billing@archive.test", "billing@archive.test",
                                           cc="Partner <partner@other.example>", attachment=big))
    after_import = {**before_aliases, "billing@archive.test": 1}
    _every_worker_sees(driver, archive.base + "/ui/", _aliases, after_import)
    assert "partner@other.example" not in driver.find_element(By.CLASS_NAME, "sidebar").text
    driver.get(archive.base + "/ui/overview")
    imported_storage = _storage(driver)
    assert imported_storage["Kept in GridFS"] != before_storage["Kept in GridFS"]
    _every_worker_sees(driver, archive.base + "/ui/overview", _storage, imported_storage)

    response = requests.delete(f"{archive.base}/emails/{imported}", headers=AUTH, timeout=30)
    assert response.status_code == 200
    _every_worker_sees(driver, archive.base + "/ui/", _aliases, before_aliases)
    driver.get(archive.base + "/ui/overview")
    deleted_storage = _storage(driver)
    for figure in ("Bodies and headers", "Attachments as received"):
        assert deleted_storage[figure] == before_storage[figure], figure
    _every_worker_sees(driver, archive.base + "/ui/overview", _storage, deleted_storage)
    assert archive.total() == int(re.search(r"All messages\n?(\d+)", driver.find_element(
        By.XPATH, "//section[h2[text()='Processed']]").text).group(1))


def _aliases_of(driver, archive) -> list[str]:
    driver.get(archive.base + "/ui/")
    return list(_aliases(driver))


def test_attachment_mark_favicon_and_the_phone_chart(archive, tmp_path):
    archive.ingest(payload_from_mime(raw_mail("With a file", "sales@archive.test", "sales@archive.test",
                                              attachment=(b"%PDF-1.4\n", "application", "pdf", "f.pdf"))))
    icon = requests.get(archive.base + "/favicon.ico", timeout=30)
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"
    session = browser.chromium(tmp_path / "phone", width=390, height=844, mobile=True)
    try:
        sign_in(session, archive.base)
        clip = session.find_element(By.CSS_SELECTOR, ".clip svg.icon")
        assert clip.is_displayed() and clip.size["width"] >= 10
        assert session.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href").endswith("/favicon.ico")
        session.get(archive.base + "/ui/overview")
        chart = session.find_element(By.CSS_SELECTOR, "svg.chart-narrow")
        assert chart.is_displayed() and not session.find_element(By.CSS_SELECTOR, "svg.chart-wide").is_displayed()
        labels = chart.find_elements(By.TAG_NAME, "text")
        heights = [label.rect["height"] for label in labels]
        assert len(labels) >= 5 and min(heights) >= 10, heights  # readable, not 4 px text
        boxes = sorted((label.rect["x"], label.rect["x"] + label.rect["width"]) for label in labels[:-1])
        assert all(left[1] <= right[0] for left, right in zip(boxes, boxes[1:]))  # date labels do not overlap
        session.save_screenshot(str(tmp_path / "overview-phone.png"))  # kept under pytest's basetemp to look at
    finally:
        session.quit()
