"""The Audit page in headless Chromium with JavaScript off, against gunicorn on SecantusDB:
an admin reaches it from the nav, filters it with the plain form and sees who read what;
a member sees only their own entries."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
from pymongo import MongoClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools import browser, processes
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.people import People
from improvmx_archive.ui.sessions import COOKIE_NAME, UiSessions

API_KEY = "audit-browser-key-0123456789abcdef"


def _payload(to: str, subject: str) -> dict:
    return {"from": {"email": "customer@example.org", "name": "Customer"}, "to": [{"email": to, "name": ""}],
            "subject": subject, "text": f"body of {subject}", "html": None, "headers": {},
            "attachments": [], "inlines": []}


@pytest.fixture(scope="module")
def archive(tmp_path_factory, secantus_server):
    work = tmp_path_factory.mktemp("audit-browser")
    uri, name = processes.mongo_uri(secantus_server.port), f"audit_browser_{uuid.uuid4().hex[:10]}"
    env = {"API_KEY": API_KEY, "MONGO_URI": uri, "MONGO_DB": name, "RATELIMIT_ENABLED": "false",
           "SPOOL_DIR": str(work / "spool"), "TRUSTED_PROXY_COUNT": "0", "WEB_CONCURRENCY": "2"}
    server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
    mongo = MongoClient(uri, tz_aware=True)
    base = f"http://127.0.0.1:{server.port}"
    try:
        ids = {to: requests.post(base + "/webhook", json=_payload(to, f"for {to}"), timeout=30).json()["email_id"]
               for to in ("support@archive.test", "sales@archive.test")}
        people, keys = People(mongo[name]), Keys(mongo[name])
        ana = people.add("ana", "ana@archive.test")
        people.grant("ana", ["support@archive.test"])
        token, _ = keys.create(str(ana["_id"]), "laptop", ["read"])
        for email_id in ids.values():  # ana reads hers and is refused the other
            requests.get(f"{base}/emails/{email_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        session, _ = UiSessions(mongo[name], (API_KEY,), timedelta(hours=1)).open(
            ip="127.0.0.1", user_agent="test", person_id=str(ana["_id"]))
        yield {"base": base, "ids": ids, "ana_session": session}
    finally:
        server.stop()
        mongo.drop_database(name)
        mongo.close()


@pytest.fixture
def no_script(tmp_path):
    driver = browser.chromium(tmp_path / "profile", javascript=False)
    yield driver
    driver.quit()


def test_an_admin_filters_the_trail_with_javascript_off(no_script, archive):
    driver, base, ids = no_script, archive["base"], archive["ids"]
    driver.get(base + "/ui/login")
    driver.find_element(By.ID, "key").send_keys(API_KEY)
    driver.find_element(By.CSS_SELECTOR, "button.primary").click()
    # signed in, no script needed: the inbox's list appears once the form post's answer has loaded
    assert WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".messages"))
    driver.get(f"{base}/ui/emails/{ids['sales@archive.test']}")  # the admin's own view
    driver.find_element(By.LINK_TEXT, "Audit").click()
    WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(base + "/ui/audit"))
    form = driver.find_element(By.CSS_SELECTOR, "form.audit-filters")
    Select(form.find_element(By.NAME, "person")).select_by_value("ana")
    Select(form.find_element(By.NAME, "action")).select_by_visible_text("view")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 15).until(lambda d: "person=ana" in d.current_url and "action=view" in d.current_url)
    rows = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")]
    assert len(rows) == 2 and all("ana" in row and "view" in row for row in rows)
    assert any("refused" in row and ids["sales@archive.test"] in row for row in rows)
    assert any(" ok " in f" {row} " and ids["support@archive.test"] in row for row in rows)
    assert driver.find_elements(By.CSS_SELECTOR, "tr.outcome-refused")


def test_a_member_sees_only_their_own_entries(no_script, archive):
    driver, base = no_script, archive["base"]
    driver.get(base + "/ui/login")  # a page on the origin, so the cookie can be set for it
    driver.add_cookie({"name": COOKIE_NAME, "value": archive["ana_session"], "path": "/ui"})
    driver.get(base + "/ui/audit")
    assert not driver.find_elements(By.NAME, "person")  # no one else to choose
    actors = {row.find_elements(By.TAG_NAME, "td")[2].text.split()[0]
              for row in driver.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")}
    assert actors == {"ana"}
