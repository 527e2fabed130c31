"""UI sign-in, sessions and CSRF: the shared lockout, cookie flags, expiry, sign-out,
rotation, token-less and cross-site POSTs, and UI_ENABLED=false."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import mongomock
import pytest

from improvmx_archive.config import ConfigError
from improvmx_archive.ui import derive_secret_key
from improvmx_archive.ui.sessions import COOKIE_NAME, key_fingerprint
from tests.conftest import API_KEY, OTHER_KEY, make_settings
from tests.ui_helpers import csrf_token, post_form, sign_in

WRONG_KEY = "not-the-key-but-long-enough"


@pytest.fixture
def stored_id(app, sample_payload):
    return app.extensions["archive"].ingest(sample_payload).email_id


def _cookie(client, name=COOKIE_NAME):
    return client.get_cookie(name, path="/ui")


def test_unsigned_visitor_is_sent_to_sign_in_and_back(client):
    response = client.get("/ui/overview")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/login?next=/ui/overview"


def test_sign_in_sets_a_strict_http_only_cookie_scoped_to_ui(client):
    response = sign_in(client)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui;" in cookie + ";"
    assert "Secure" not in cookie  # plain HTTP here
    assert client.get("/ui/").status_code == 200


def test_cookie_is_secure_when_the_request_came_over_https(make_app):
    app = make_app(RATELIMIT_ENABLED="false", TRUSTED_PROXY_COUNT="1")
    client = app.test_client()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    page = client.get("/ui/login", headers=headers)
    assert "Secure" in page.headers["Set-Cookie"]  # the CSRF cookie too
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    response = client.post("/ui/login", data={"key": API_KEY, "csrf_token": token},
                           headers={**headers, "Referer": "https://localhost/ui/login"})
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME + "="))
    assert "; Secure" in cookie


def test_only_the_token_hash_and_key_fingerprint_are_stored(app, client):
    sign_in(client)
    token = _cookie(client).value
    [stored] = list(app.extensions["database"].ui_sessions.find())
    assert token not in str(stored) and API_KEY not in str(stored)
    assert stored["key_fingerprint"] == key_fingerprint(API_KEY)


def test_wrong_key_is_403_and_counts_toward_the_shared_lockout(client):
    statuses = [sign_in(client, WRONG_KEY).status_code for _ in range(5)]
    assert statuses == [403] * 5
    blocked = sign_in(client, API_KEY)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 800
    assert "Too many failed attempts" in blocked.get_data(as_text=True)
    assert blocked.mimetype == "text/html"
    # the same block holds for the API, as it is one lockout
    api = client.get("/emails", headers={"Authorization": f"Bearer {API_KEY}"},
                     environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert api.status_code == 429


def test_api_failures_block_ui_sign_in_too(client):
    for _ in range(5):
        client.get("/emails", headers={"Authorization": f"Bearer {WRONG_KEY}"},
                   environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert sign_in(client).status_code == 429


def test_empty_key_guesses_nothing_and_is_not_counted(app, client):
    for _ in range(6):
        assert sign_in(client, "").status_code == 400
    assert app.extensions["database"].auth_failures.count_documents({}) == 0


def test_sign_in_without_csrf_token_is_refused_and_counts_nothing(app, client):
    response = client.post("/ui/login", data={"key": API_KEY})
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert _cookie(client) is None
    assert app.extensions["database"].ui_sessions.count_documents({}) == 0


def test_cross_site_post_is_refused_even_with_a_token(client, stored_id):
    sign_in(client)
    token = csrf_token(client, "/ui/")
    response = client.post(f"/ui/emails/{stored_id}/processed", data={"processed": "true", "csrf_token": token},
                           headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert client.get(f"/emails/{stored_id}", headers={"Authorization": f"Bearer {API_KEY}"}
                      ).get_json()["email"]["processed"] is False


def test_token_less_post_changes_nothing(app, client, stored_id):
    sign_in(client)
    response = client.post(f"/ui/emails/{stored_id}/processed", data={"processed": "true"})
    assert response.status_code == 400
    assert app.extensions["archive"].emails.find_one()["processed"] is False
    response = client.post("/ui/emails/bulk", data={"ids": stored_id, "action": "processed",
                                                    "csrf_token": "forged"})
    assert response.status_code == 400
    assert app.extensions["archive"].emails.find_one()["processed"] is False


def test_sign_out_ends_the_session_everywhere(app, client):
    sign_in(client)
    token = _cookie(client).value
    response = post_form(client, "/ui/logout", {})
    assert response.status_code == 303
    assert app.extensions["database"].ui_sessions.count_documents({}) == 0
    other = app.test_client()
    other.set_cookie(COOKIE_NAME, token, path="/ui")
    assert other.get("/ui/").status_code == 302


def test_sign_out_is_a_post_only(client):
    sign_in(client)
    assert client.get("/ui/logout").status_code == 405
    assert client.get("/ui/").status_code == 200


def test_session_expires_after_ui_session_hours(app, client):
    sign_in(client)
    sessions = app.extensions["database"].ui_sessions
    stored = sessions.find_one()
    hours = (stored["expires_at"] - stored["created_at"]).total_seconds() / 3600
    assert hours == pytest.approx(12)
    # expiry is checked on use, not left to the TTL monitor (mongomock has none)
    sessions.update_one({}, {"$set": {"expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    assert client.get("/ui/").status_code == 302
    assert sessions.count_documents({}) == 0


def test_ui_session_hours_is_configurable(make_app):
    app = make_app(RATELIMIT_ENABLED="false", UI_SESSION_HOURS="0.5")
    client = app.test_client()
    sign_in(client)
    stored = app.extensions["database"].ui_sessions.find_one()
    assert (stored["expires_at"] - stored["created_at"]) == timedelta(minutes=30)


def test_removing_a_key_revokes_its_sessions_on_every_host(make_app):
    """Two apps on one database, as two hosts: a key dropped from API_KEY on the second
    ends the session opened with it on the first, and only that one."""
    database = mongomock.MongoClient(tz_aware=True)
    before = make_app(database, RATELIMIT_ENABLED="false", API_KEY=f"{API_KEY},{OTHER_KEY}")
    old, new = before.test_client(), before.test_client()
    sign_in(old, API_KEY)
    sign_in(new, OTHER_KEY)
    after = make_app(database, RATELIMIT_ENABLED="false", API_KEY=OTHER_KEY)
    for client, expected in ((old, 302), (new, 200)):
        moved = after.test_client()
        moved.set_cookie(COOKIE_NAME, _cookie(client).value, path="/ui")
        assert moved.get("/ui/").status_code == expected


def test_sessions_work_across_workers_sharing_the_database(make_app):
    database = mongomock.MongoClient(tz_aware=True)
    first, second = make_app(database, RATELIMIT_ENABLED="false"), make_app(database, RATELIMIT_ENABLED="false")
    client = first.test_client()
    sign_in(client)
    other = second.test_client()
    other.set_cookie(COOKIE_NAME, _cookie(client).value, path="/ui")
    assert other.get("/ui/").status_code == 200


def test_secret_key_is_the_same_for_the_same_keys_in_any_order():
    assert derive_secret_key(("a" * 16, "b" * 16)) == derive_secret_key(("b" * 16, "a" * 16))
    assert derive_secret_key(("a" * 16,)) != derive_secret_key(("b" * 16,))


def test_next_never_leaves_the_ui(app):
    for target in ("https://evil.example/", "//evil.example/ui/", "/ui\\..\\x", "/emails", "/ui/overview"):
        client = app.test_client()
        response = client.post("/ui/login", data={"key": API_KEY, "csrf_token": csrf_token(client), "next": target})
        assert response.headers["Location"] == ("/ui/overview" if target == "/ui/overview" else "/ui/")


def test_ui_disabled_means_404_everywhere_under_ui(make_app):
    app = make_app(RATELIMIT_ENABLED="false", UI_ENABLED="false")
    client = app.test_client()
    for path in ("/ui/", "/ui/login", "/ui/static/ui.css", "/ui/overview"):
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.post("/ui/login", data={"key": API_KEY}).status_code == 404
    assert not any(rule.rule.startswith("/ui") for rule in app.url_map.iter_rules())


def test_opening_a_message_changes_nothing(app, client, stored_id):
    sign_in(client)
    before = app.extensions["archive"].emails.find_one()
    for path in (f"/ui/emails/{stored_id}", f"/ui/emails/{stored_id}/frame", f"/ui/emails/{stored_id}?remote=1",
                 f"/ui/emails/{stored_id}/parts/0"):
        assert client.get(path).status_code == 200
    assert app.extensions["archive"].emails.find_one() == before


@pytest.mark.parametrize("name,value,message", [
    ("UI_ENABLED", "maybe", "UI_ENABLED must be true or false"),
    ("UI_SESSION_HOURS", "0", "UI_SESSION_HOURS must be at least 0.1"),
    ("UI_SESSION_HOURS", "twelve", "UI_SESSION_HOURS must be a number"),
])
def test_ui_settings_are_validated_at_start(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        make_settings(tmp_path, **{name: value})
