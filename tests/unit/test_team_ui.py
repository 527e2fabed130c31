"""Signing in as a person, the Account, Keys and People pages, on mongomock: every change a
CSRF-protected form POST (what a browser without JavaScript sends), members kept out of
People, and changes felt on the very next request."""

from __future__ import annotations

import re

import pytest
from argon2 import PasswordHasher

from improvmx_archive.access import passwords, team
from tests.conftest import API_KEY
from tests.ui_helpers import csrf_token, mime, page, sign_in

PASSWORD = "correct horse battery staple"
WRONG = "That email and password do not match."


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """argon2id with tiny parameters: the same code paths, a fraction of the time."""
    monkeypatch.setattr(passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    passwords._dummy_hash.cache_clear()
    yield
    passwords._dummy_hash.cache_clear()


@pytest.fixture
def crew(app):
    """ana (member: support@), bo (member: *@shop.test), root (admin), each with a password;
    one message per alias."""
    archive = app.extensions["archive"]
    for to in ("support@archive.test", "sales@archive.test", "orders@shop.test"):
        archive.ingest(mime(f"for {to}", to=to))
    with app.app_context():
        team.add_person(team.CLI_ACTOR, "ana", "ana@archive.test")
        team.grant(team.CLI_ACTOR, "ana", ["support@archive.test"])
        team.add_person(team.CLI_ACTOR, "bo", "bo@archive.test")
        team.grant(team.CLI_ACTOR, "bo", ["*@shop.test"])
        team.add_person(team.CLI_ACTOR, "root", "root@archive.test", admin=True)
        for name in ("ana", "bo", "root"):
            team.set_password(team.CLI_ACTOR, name, PASSWORD)
    return app


def password_sign_in(client, email: str, password: str = PASSWORD, ip: str = "192.0.2.10"):
    return client.post("/ui/login", data={"email": email, "password": password, "csrf_token": csrf_token(client)},
                       environ_base={"REMOTE_ADDR": ip})


def form(client, path: str, data: dict, page_path: str):
    """Submit a form as a browser without JavaScript would: the token from the page it is on."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page_path)})


@pytest.fixture
def as_person(crew):
    def open_as(name: str):
        client = crew.test_client()
        response = password_sign_in(client, f"{name}@archive.test")
        assert response.status_code == 303, response.get_data(as_text=True)
        return client

    return open_as


def test_a_member_signs_in_with_a_password_and_sees_only_their_aliases(as_person):
    ana = as_person("ana")
    inbox = page(ana, "/ui/")
    assert "for support@archive.test" in inbox
    assert "for sales@archive.test" not in inbox and "for orders@shop.test" not in inbox
    assert "People</a>" not in inbox and ">ana</a>" in inbox
    root_inbox = page(as_person("root"), "/ui/")
    assert all(f"for {to}" in root_inbox for to in ("support@archive.test", "sales@archive.test", "orders@shop.test"))


def test_unknown_email_and_wrong_password_look_the_same_and_cost_the_same(crew, monkeypatch):
    verified = []
    real_verify = passwords.PasswordHasher.verify

    def counting_verify(self, hashed, password):
        verified.append(hashed)
        return real_verify(self, hashed, password)

    monkeypatch.setattr(passwords.PasswordHasher, "verify", counting_verify)
    client = crew.test_client()
    wrong = password_sign_in(client, "ana@archive.test", "not the password at all")
    unknown = password_sign_in(client, "nobody@archive.test", "not the password at all", ip="192.0.2.11")
    assert wrong.status_code == unknown.status_code == 403
    assert WRONG in wrong.get_data(as_text=True) and WRONG in unknown.get_data(as_text=True)
    assert re.sub(r'value="[^"]*"', "", wrong.get_data(as_text=True)).replace("ana@archive.test", "") == \
        re.sub(r'value="[^"]*"', "", unknown.get_data(as_text=True)).replace("nobody@archive.test", "")
    assert len(verified) == 2 and all(h.startswith("$argon2id$") for h in verified)


def test_a_disabled_person_with_the_right_password_gets_the_same_refusal(crew):
    with crew.app_context():
        team.set_disabled(team.CLI_ACTOR, "bo", True)
    response = password_sign_in(crew.test_client(), "bo@archive.test")
    assert response.status_code == 403 and WRONG in response.get_data(as_text=True)


def test_failed_passwords_count_toward_the_shared_lockout(crew):
    client = crew.test_client()
    for _ in range(5):
        assert password_sign_in(client, "ana@archive.test", "wrong password here", ip="192.0.2.50").status_code == 403
    blocked = password_sign_in(client, "ana@archive.test", ip="192.0.2.50")
    assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    api = client.get("/emails", headers={"Authorization": f"Bearer {API_KEY}"}, environ_base={"REMOTE_ADDR": "192.0.2.50"})
    assert api.status_code == 429  # the API's bearer check shares the same block


def test_the_sign_in_form_needs_both_fields(crew):
    client = crew.test_client()
    response = client.post("/ui/login", data={"email": "ana@archive.test", "csrf_token": csrf_token(client)})
    assert response.status_code == 400 and "Enter your email and password" in response.get_data(as_text=True)


def test_outdated_hash_is_renewed_on_sign_in(crew):
    people = crew.extensions["people"]
    old = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    people.set_password_hash("ana", old)
    assert password_sign_in(crew.test_client(), "ana@archive.test").status_code == 303
    renewed = people.by_name("ana")["password_hash"]
    assert renewed != old and not passwords.needs_rehash(renewed)


def test_disabling_and_grants_take_effect_on_the_very_next_request(crew, as_person):
    bo = as_person("bo")
    assert "for orders@shop.test" in page(bo, "/ui/")
    with crew.app_context():
        team.grant(team.CLI_ACTOR, "bo", ["sales@archive.test"])
    assert "for sales@archive.test" in page(bo, "/ui/")
    with crew.app_context():
        team.revoke_grants(team.CLI_ACTOR, "bo", ["*@shop.test", "sales@archive.test"])
    html = page(bo, "/ui/")
    assert "for orders@shop.test" not in html and "for sales@archive.test" not in html
    crew.extensions["people"].set_disabled("bo", True)  # straight in the store: no session cleanup helps
    response = bo.get("/ui/")
    assert response.status_code == 302 and "/ui/login" in response.headers["Location"]
    assert bo.get(response.headers["Location"]).status_code == 200  # the sign-in form, not a redirect loop


# Account ------------------------------------------------------------------------------------

def test_changing_ones_password_needs_the_current_one_and_ends_other_sessions(crew, as_person):
    laptop, phone = as_person("ana"), as_person("ana")
    wrong = form(laptop, "/ui/account/password", {"current_password": "nope nope nope", "new_password": "a brand new passphrase",
                                                   "repeat_password": "a brand new passphrase"}, "/ui/account")
    assert wrong.status_code == 403 and "current password is not right" in wrong.get_data(as_text=True)
    short = form(laptop, "/ui/account/password", {"current_password": PASSWORD, "new_password": "short",
                                                   "repeat_password": "short"}, "/ui/account")
    assert short.status_code == 400 and "at least 12 characters" in short.get_data(as_text=True)
    differ = form(laptop, "/ui/account/password", {"current_password": PASSWORD, "new_password": "a brand new passphrase",
                                                    "repeat_password": "a brand new passphrasE"}, "/ui/account")
    assert differ.status_code == 400
    changed = form(laptop, "/ui/account/password", {"current_password": PASSWORD, "new_password": "a brand new passphrase",
                                                     "repeat_password": "a brand new passphrase"}, "/ui/account")
    assert changed.status_code == 303
    assert "Password changed" in page(laptop, "/ui/account")
    assert phone.get("/ui/").status_code == 302  # the other session ended
    assert password_sign_in(crew.test_client(), "ana@archive.test").status_code == 403
    assert password_sign_in(crew.test_client(), "ana@archive.test", "a brand new passphrase").status_code == 303


def test_operator_account_page_says_it_has_no_password(client):
    sign_in(client)
    assert "operator" in page(client, "/ui/account")
    response = form(client, "/ui/account/password", {"current_password": "x", "new_password": "y" * 12,
                                                      "repeat_password": "y" * 12}, "/ui/account")
    assert response.status_code == 400


# Keys ---------------------------------------------------------------------------------------

def test_a_person_creates_uses_lists_and_revokes_their_own_key(crew, as_person):
    ana = as_person("ana")
    created = form(ana, "/ui/keys", {"name": "billing script", "scopes": ["read", "write"], "expires": "30"}, "/ui/keys")
    assert created.status_code == 201
    html = created.get_data(as_text=True)
    token = re.search(r'id="new-token" value="(imxa_[^"]+)"', html).group(1)
    assert "will not be shown again" in html
    listing = page(ana, "/ui/keys")
    assert "billing script" in listing and "read, write" in listing and token not in listing
    api = ana.get("/emails", headers={"Authorization": f"Bearer {token}"})
    assert [e["subject"] for e in api.get_json()["emails"]] == ["for support@archive.test"]
    key_id = crew.extensions["keys"].all()[0]["_id"]
    assert re.search(r"billing script.*?<td>never</td>", listing, re.S)  # not used through the UI yet
    revoked = form(ana, f"/ui/keys/{key_id}/revoke", {}, "/ui/keys")
    assert revoked.status_code == 303
    assert "revoked" in page(ana, "/ui/keys")
    assert ana.get("/emails", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_key_is_created_with_only_the_scopes_ticked(crew, as_person):
    ana = as_person("ana")
    token = re.search(r'value="(imxa_[^"]+)"',
                      form(ana, "/ui/keys", {"name": "reader", "scopes": ["read"], "expires": ""}, "/ui/keys")
                      .get_data(as_text=True)).group(1)
    record = crew.extensions["keys"].all()[0]
    assert record["scopes"] == ["read"] and record["expires_at"] is None
    email_id = ana.get("/emails", headers={"Authorization": f"Bearer {token}"}).get_json()["emails"][0]["id"]
    assert ana.patch(f"/emails/{email_id}", json={"processed": True},
                     headers={"Authorization": f"Bearer {token}"}).status_code == 403


@pytest.mark.parametrize("data,message", [
    ({"name": "", "scopes": ["read"]}, "a key&#39;s name is 1 to 100"),
    ({"name": "x", "scopes": []}, "scopes are a comma-separated"),
    ({"name": "x", "scopes": ["root"]}, "scopes are a comma-separated"),
    ({"name": "x", "scopes": ["read"], "expires": "soon"}, "Expiry is a number of days"),
])
def test_bad_key_requests_are_explained(crew, as_person, data, message):
    ana = as_person("ana")
    response = form(ana, "/ui/keys", data, "/ui/keys")
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert crew.extensions["keys"].all() == []


def test_nobody_revokes_someone_elses_key_from_the_keys_page(crew, as_person):
    with crew.app_context():
        _, record = team.create_key(team.CLI_ACTOR, "bo", "bo's", "read")
    response = form(as_person("ana"), f"/ui/keys/{record['_id']}/revoke", {}, "/ui/keys")
    assert response.status_code == 404
    assert crew.extensions["keys"].by_id(record["_id"])["revoked_at"] is None


def test_an_operator_session_has_no_keys_of_its_own(client):
    sign_in(client)
    html = page(client, "/ui/keys")
    assert 'id="operator-keys"' in html and 'id="create-key"' not in html
    assert form(client, "/ui/keys", {"name": "x", "scopes": ["read"]}, "/ui/keys").status_code == 400


# People -------------------------------------------------------------------------------------

def test_members_get_a_404_for_people_and_every_people_form(crew, as_person):
    ana = as_person("ana")
    token = csrf_token(ana, "/ui/keys")
    assert ana.get("/ui/people").status_code == 404
    for path, data in (("/ui/people", {"name": "eve", "email": "eve@archive.test"}),
                       ("/ui/people/ana/grants", {"grants": "sales@archive.test"}),
                       ("/ui/people/ana/role", {"role": "admin"}),
                       ("/ui/people/bo/disabled", {"disabled": "true"}),
                       ("/ui/people/bo/password", {"password": "x" * 20}),
                       ("/ui/people/keys/k_x/revoke", {})):
        assert ana.post(path, data={**data, "csrf_token": token}).status_code == 404, path
    people = crew.extensions["people"]
    assert people.by_name("eve") is None and people.by_name("ana")["role"] == "member"
    assert people.by_name("ana")["grants"] == ["support@archive.test"] and not people.by_name("bo")["disabled"]


@pytest.mark.parametrize("who", ["root", "operator"])
def test_an_admin_manages_people(crew, as_person, who):
    if who == "operator":
        admin = crew.test_client()
        sign_in(admin)
    else:
        admin = as_person("root")
    people = crew.extensions["people"]
    added = form(admin, "/ui/people", {"name": "eve", "email": "eve@archive.test", "role": "member",
                                       "grants": "sales@archive.test *@shop.test", "password": "eve's long password"},
                 "/ui/people")
    assert added.status_code == 303
    eve = people.by_name("eve")
    assert eve["grants"] == ["sales@archive.test", "*@shop.test"] and eve["role"] == "member"
    assert password_sign_in(crew.test_client(), "eve@archive.test", "eve's long password").status_code == 303
    assert form(admin, "/ui/people/eve/grants/revoke", {"grant": "*@shop.test"}, "/ui/people").status_code == 303
    assert form(admin, "/ui/people/eve/grants", {"grants": "support@archive.test"}, "/ui/people").status_code == 303
    assert people.by_name("eve")["grants"] == ["sales@archive.test", "support@archive.test"]
    assert form(admin, "/ui/people/eve/role", {"role": "admin"}, "/ui/people").status_code == 303
    assert people.by_name("eve")["role"] == "admin"
    assert form(admin, "/ui/people/eve/disabled", {"disabled": "true"}, "/ui/people").status_code == 303
    assert people.by_name("eve")["disabled"] is True
    assert form(admin, "/ui/people/eve/disabled", {"disabled": "false"}, "/ui/people").status_code == 303
    assert form(admin, "/ui/people/eve/password", {"password": "another long password"}, "/ui/people").status_code == 303
    assert password_sign_in(crew.test_client(), "eve@archive.test", "another long password").status_code == 303
    html = page(admin, "/ui/people")
    assert "eve@archive.test" in html and "$argon2" not in html and "password_hash" not in html


def test_an_admin_revokes_anyones_key_from_people(crew, as_person):
    with crew.app_context():
        token, record = team.create_key(team.CLI_ACTOR, "bo", "bo's laptop", "read")
    root = as_person("root")
    assert "bo&#39;s laptop" in page(root, "/ui/people")
    assert form(root, f"/ui/people/keys/{record['_id']}/revoke", {}, "/ui/people").status_code == 303
    assert root.get("/emails", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert form(root, "/ui/people/keys/k_missing/revoke", {}, "/ui/people").status_code == 404


@pytest.mark.parametrize("path,data,message", [
    ("/ui/people", {"name": "ana", "email": "other@archive.test"}, "already exists"),
    ("/ui/people", {"name": "new", "email": "not-an-address"}, "is not an email address"),
    ("/ui/people", {"name": "new", "email": "new@archive.test", "grants": "bogus"}, "is neither an alias"),
    ("/ui/people", {"name": "new", "email": "new@archive.test", "password": "short"}, "at least 12 characters"),
    ("/ui/people/ana/grants", {"grants": "bogus"}, "is neither an alias"),
    ("/ui/people/ana/grants", {"grants": ""}, "name an alias"),
    ("/ui/people/nobody/grants", {"grants": "a@b.test"}, "no person named"),
    ("/ui/people/ana/role", {"role": "owner"}, "role must be one of"),
    ("/ui/people/ana/password", {"password": "short"}, "at least 12 characters"),
])
def test_bad_people_changes_are_explained_and_change_nothing(crew, as_person, path, data, message):
    root = as_person("root")
    before = list(crew.extensions["people"].collection.find({}, {"updated_at": 0}))
    response = form(root, path, data, "/ui/people")
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    assert list(crew.extensions["people"].collection.find({}, {"updated_at": 0})) == before


def test_an_admin_cannot_disable_or_demote_themselves_in_the_ui(crew, as_person):
    root = as_person("root")
    for path, data in (("/ui/people/root/disabled", {"disabled": "true"}), ("/ui/people/root/role", {"role": "member"})):
        response = form(root, path, data, "/ui/people")
        assert response.status_code == 400 and "yourself" in response.get_data(as_text=True)
    person = crew.extensions["people"].by_name("root")
    assert person["role"] == "admin" and not person["disabled"]


# CSRF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,data", [
    ("/ui/people", {"name": "eve", "email": "eve@archive.test"}),
    ("/ui/people/ana/disabled", {"disabled": "true"}),
    ("/ui/keys", {"name": "x", "scopes": ["read"]}),
    ("/ui/account/password", {"current_password": PASSWORD, "new_password": "x" * 20, "repeat_password": "x" * 20}),
])
def test_every_change_refuses_a_post_without_its_csrf_token(crew, as_person, path, data):
    root = as_person("root")
    before = (list(crew.extensions["people"].collection.find()), list(crew.extensions["keys"].collection.find()))
    missing = root.post(path, data=data)
    assert missing.status_code == 400 and "nothing was changed" in missing.get_data(as_text=True)
    cross_site = root.post(path, data={**data, "csrf_token": csrf_token(root, "/ui/keys")},
                           headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    assert (list(crew.extensions["people"].collection.find()), list(crew.extensions["keys"].collection.find())) == before


def test_the_nav_links_the_team_pages(crew, as_person):
    root = page(as_person("root"), "/ui/")
    assert 'href="/ui/keys"' in root and 'href="/ui/people"' in root and 'href="/ui/account"' in root
    member = page(as_person("ana"), "/ui/")
    assert 'href="/ui/keys"' in member and 'href="/ui/people"' not in member


def test_the_team_pages_work_as_plain_forms(crew, as_person):
    """Without JavaScript a browser can only follow links and submit forms: every change on
    these pages is a POST form carrying its CSRF token, to a route that exists."""
    root = as_person("root")
    with crew.app_context():
        team.create_key(team.CLI_ACTOR, "bo", "bo's", "read")
    rules = {rule.rule.replace("<name>", "x").replace("<key_id>", "k"): rule.methods for rule in crew.url_map.iter_rules()}
    for path in ("/ui/people", "/ui/keys", "/ui/account"):
        html = page(root, path)
        forms = re.findall(r"<form ([^>]*)>(.*?)</form>", html, re.S)
        assert forms, path
        for attributes, body in forms:
            assert 'method="post"' in attributes and 'name="csrf_token"' in body, (path, attributes)
            action = re.search(r'action="([^"]+)"', attributes).group(1)
            generic = re.sub(r"^/ui/people/(?!keys)[^/]+", "/ui/people/x", action)
            generic = re.sub(r"/keys/k_[0-9a-f]+", "/keys/k", generic)
            assert "POST" in rules[generic], action
