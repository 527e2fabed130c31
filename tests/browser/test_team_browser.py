"""People in the real browser, against gunicorn (two workers) on SecantusDB: a member signs in
with a password and sees only their aliases; the People and Keys pages do their work with
JavaScript turned off, on a phone-sized window too."""

from __future__ import annotations

import re
import uuid

import pytest
import requests
from pymongo import MongoClient
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools import browser, processes
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.passwords import hash_password
from improvmx_archive.access.people import People
from improvmx_archive.sample import payload_from_mime, sample_mime

pytestmark = pytest.mark.slow

OPERATOR_KEY = "team-browser-key-0123456789abcdef"
PASSWORDS = {"ana": "ana's long passphrase", "root": "root's long passphrase"}


def wait(driver, condition, timeout=15):
    return WebDriverWait(driver, timeout).until(condition)


@pytest.fixture(scope="module")
def site(secantus_server, tmp_path_factory):
    """The archive with three messages (support@, sales@, orders@shop.test) and two people:
    ana (member, support@archive.test) and root (admin), both with passwords."""
    work = tmp_path_factory.mktemp("team-browser")
    uri = processes.mongo_uri(secantus_server.port)
    database_name = f"team_browser_{uuid.uuid4().hex[:10]}"
    env = {"API_KEY": OPERATOR_KEY, "MONGO_URI": uri, "MONGO_DB": database_name,
           "RATELIMIT_STORAGE_URI": "memory://", "RATELIMIT_UI": "100000 per minute",
           "SPOOL_DIR": str(work / "spool"), "TRUSTED_PROXY_COUNT": "0", "WEB_CONCURRENCY": "2"}
    server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
    base = f"http://127.0.0.1:{server.port}"
    for to in ("support@archive.test", "sales@archive.test", "orders@shop.test"):
        payload = payload_from_mime(sample_mime(recipient=to, subject=f"Mail for {to}"))
        assert requests.post(base + "/webhook", json=payload, timeout=30).status_code == 200
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    database = mongo[database_name]
    people = People(database)
    people.add("ana", "ana@archive.test")
    people.grant("ana", ["support@archive.test"])
    people.add("root", "root@archive.test", role="admin")
    for name, password in PASSWORDS.items():
        people.set_password_hash(name, hash_password(password))
    try:
        yield base, database
    finally:
        server.stop()
        mongo.drop_database(database_name)
        mongo.close()


def sign_in_with_password(driver, base: str, name: str) -> None:
    driver.delete_all_cookies()
    driver.get(base + "/ui/login")
    driver.find_element(By.ID, "email").send_keys(f"{name}@archive.test")
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "sign-in").click()
    wait(driver, expected_conditions.presence_of_element_located((By.ID, "account-link")))


def notice(driver, expected: str) -> str:
    """The page's notice once it says `expected`. A form post replaces the page, and with it
    the previous page's notice, which goes stale if read mid-load: wait on the text, re-finding
    the element each time."""

    def says(current):
        try:
            text = current.find_element(By.CSS_SELECTOR, ".notice").text
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return text if expected in text else False

    return wait(driver, says)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    session = browser.chromium(tmp_path_factory.mktemp("team-js"))
    yield session
    session.quit()


@pytest.fixture(scope="module")
def scriptless(tmp_path_factory):
    session = browser.chromium(tmp_path_factory.mktemp("team-nojs"), width=420, height=900, javascript=False)
    yield session
    session.quit()


def test_a_member_signs_in_with_a_password_and_sees_only_their_aliases(site, scripted):
    base, _ = site
    sign_in_with_password(scripted, base, "ana")
    wait(scripted, expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".messages")))
    subjects = [row.text for row in scripted.find_elements(By.CSS_SELECTOR, ".message-row .subject")]
    assert subjects == ["Mail for support@archive.test"]
    aliases = scripted.find_element(By.CSS_SELECTOR, ".aliases").text
    assert "support@archive.test" in aliases and "sales@" not in aliases and "shop.test" not in aliases
    assert not scripted.find_elements(By.LINK_TEXT, "People")
    scripted.get(base + "/ui/people")
    assert "404" in scripted.find_element(By.TAG_NAME, "main").text
    scripted.get(base + "/ui/?q=sales")
    assert not scripted.find_elements(By.CSS_SELECTOR, ".message-row")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the pages are photographed at phone size (to look at after a run)."""
    return tmp_path_factory.mktemp("team-screenshots")


def test_people_page_works_without_javascript_on_a_phone(site, scriptless, shots):
    base, database = site
    driver = scriptless
    sign_in_with_password(driver, base, "root")
    driver.find_element(By.LINK_TEXT, "People").click()
    driver.find_element(By.ID, "new-name").send_keys("eve")
    driver.find_element(By.ID, "new-email").send_keys("eve@archive.test")
    driver.find_element(By.ID, "new-grants").send_keys("sales@archive.test")
    driver.find_element(By.ID, "new-password").send_keys("eve's long passphrase")
    driver.find_element(By.ID, "add-person-button").click()
    assert notice(driver, "eve added.") == "eve added."
    driver.find_element(By.ID, "grants-eve").send_keys("*@shop.test")
    driver.find_element(By.CSS_SELECTOR, "#person-eve .row-form button").click()
    notice(driver, "eve now also sees *@shop.test")
    driver.find_element(By.CSS_SELECTOR, "#person-eve form.grant button").click()  # remove sales@
    notice(driver, "no longer sees sales@archive.test")
    Select(driver.find_element(By.ID, "role-ana")).select_by_value("admin")
    driver.find_element(By.XPATH, "//select[@id='role-ana']/following-sibling::button").click()
    notice(driver, "ana is now admin")
    driver.find_element(By.ID, "toggle-eve").click()
    notice(driver, "eve disabled")
    eve = database.people.find_one({"name": "eve"})
    assert eve["grants"] == ["*@shop.test"] and eve["disabled"] is True
    assert database.people.find_one({"name": "ana"})["role"] == "admin"
    database.people.update_one({"name": "ana"}, {"$set": {"role": "member"}})
    driver.save_screenshot(str(shots / "people-phone.png"))


def test_keys_page_works_without_javascript(site, scriptless, shots):
    base, database = site
    driver = scriptless
    sign_in_with_password(driver, base, "ana")
    driver.find_element(By.LINK_TEXT, "Keys").click()
    driver.find_element(By.ID, "key-name").send_keys("billing script")
    driver.find_element(By.ID, "scope-write").click()
    Select(driver.find_element(By.ID, "key-expires")).select_by_value("30")
    driver.find_element(By.ID, "create-key-button").click()
    token = wait(driver, expected_conditions.presence_of_element_located((By.ID, "new-token"))).get_attribute("value")
    assert token.startswith("imxa_")
    assert "will not be shown again" in driver.find_element(By.ID, "created-key").text
    listed = requests.get(base + "/emails", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    assert [e["subject"] for e in listed["emails"]] == ["Mail for support@archive.test"]
    driver.get(base + "/ui/keys")
    table = driver.find_element(By.ID, "key-list").text
    assert "billing script" in table and "read, write" in table and token not in driver.page_source
    key_id = Keys(database).all()[0]["_id"]
    driver.find_element(By.ID, f"revoke-{key_id}").click()
    notice(driver, "revoked")
    assert requests.get(base + "/emails", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 401
    assert re.search(r"revoked \d{4}-\d\d-\d\d", driver.find_element(By.ID, "key-list").text)
    driver.save_screenshot(str(shots / "keys-phone.png"))
