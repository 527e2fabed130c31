"""Bearer keys, brute-force lockout, client address, webhook guard and body limit.

Every refusal is pinned to its exact status, body and headers, because API clients and
ImprovMX act on them. Apps run on mongomock with the limiter off unless a test needs it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from improvmx_archive import security
from improvmx_archive.config import ConfigError, Settings
from improvmx_archive.db import create_indexes
from improvmx_archive.requestlog import mask_path
from tests.conftest import API_KEY, OTHER_KEY

MISSING = {"success": False, "error": "Missing Authorization header; send 'Authorization: Bearer <API key>'"}
MALFORMED = {"success": False, "error": "Malformed Authorization header; expected 'Bearer <API key>'"}
WRONG = {"success": False, "error": "Invalid API key"}
LOCKED = {"success": False, "error": "Too many failed attempts. Please try again later."}
NOT_FOUND = {"success": False, "error": "Not found"}
SOURCE_REFUSED = {"success": False, "error": "Source address not allowed"}
TOO_LARGE = {"success": False, "error": "Request body too large"}
SECRET = "s3cret-path-0123456789"
IMPROVMX_IP = "15.237.103.194"
ATTACKER = "198.51.100.66"
PUBLIC_ENDPOINTS = {"health.liveness", "health.readiness", "webhook.receive", "docs.docs", "docs.openapi", "static",
                    # The UI's sign-in and its assets; inline_part is authorised by a session
                    # grant in its URL (tests/unit/test_ui_sessions.py).
                    "ui.login", "ui.login_submit", "ui.static", "ui.inline_part",
                    "favicon"}  # the UI's icon, asked for by browsers before anyone signs in
BEARER = {"Authorization": f"Bearer {API_KEY}"}
BAD_KEY = {"Authorization": "Bearer not-the-key-but-long-enough"}


def call(client, path, *, ip="192.0.2.10", method="GET", headers=None, **kwargs):
    """One request as if it came from `ip` (the TCP peer the WSGI server saw)."""
    return client.open(path, method=method, headers=headers or {}, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def fail(client, times, ip="192.0.2.10", headers=BAD_KEY):
    return [call(client, "/emails", ip=ip, headers=headers).status_code for _ in range(times)]


@pytest.fixture
def stored_id(client, sample_payload):
    return client.post("/webhook", json=sample_payload).get_json()["email_id"]


# --- bearer keys ----------------------------------------------------------------------------

def test_every_route_but_the_public_ones_requires_the_key(app):
    """A new route is closed (a bearer key, or a UI session) unless deliberately listed here."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        guarded = getattr(view, "requires_api_key", False) or getattr(view, "requires_ui_session", False)
        assert guarded == (rule.endpoint not in PUBLIC_ENDPOINTS), rule


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/emails"), ("GET", "/emails/{id}"), ("PATCH", "/emails/{id}"),
    ("GET", "/emails/{id}/attachment/sample.pdf"), ("GET", "/emails/{id}/attachments/0"),
])
def test_missing_header_is_401_and_names_the_scheme(client, stored_id, method, path):
    response = call(client, path.format(id=stored_id), method=method, json={"processed": True})
    assert response.status_code == 401
    assert response.get_json() == MISSING
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="improvmx-webhook"'


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", API_KEY, f"Token {API_KEY}"])
def test_malformed_header_is_401(client, header):
    response = call(client, "/emails", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json() == MALFORMED
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("token", ["not-the-key-but-long-enough", API_KEY[:-1], API_KEY + "x", API_KEY.upper()])
def test_wrong_key_is_403(client, token):
    response = call(client, "/emails", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.get_json() == WRONG
    assert "WWW-Authenticate" not in response.headers
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize("header", [f"Bearer {API_KEY}", f"bearer {API_KEY}", f"Bearer   {API_KEY}  "])
def test_correct_key_is_accepted(client, header):
    assert call(client, "/emails", headers={"Authorization": header}).status_code == 200


def test_key_rotation_accepts_every_listed_key_and_only_those(make_app):
    """API_KEY=new,old during a rotation; dropping old from the list revokes it."""
    both = make_app(API_KEY=f"{OTHER_KEY},{API_KEY}", RATELIMIT_ENABLED="false").test_client()
    assert call(both, "/emails", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200
    assert call(both, "/emails", headers=BEARER).status_code == 200
    rotated = make_app(API_KEY=OTHER_KEY, RATELIMIT_ENABLED="false").test_client()
    assert call(rotated, "/emails", headers=BEARER).get_json() == WRONG
    assert call(rotated, "/emails", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200


def test_key_comparison_checks_every_key_without_stopping_early(monkeypatch):
    """Constant time across the key list too: a match on the first key still compares the rest."""
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    assert security.key_matches("k1-0123456789abcdef", ("k1-0123456789abcdef", "k2", "k3"))
    assert compared == [b"k1-0123456789abcdef", b"k2", b"k3"]
    assert not security.key_matches("", ("k1-0123456789abcdef",))


@pytest.mark.parametrize("value,message", [
    ("", "API_KEY is not set: set it to a long random token (comma-separate several to rotate)"),
    ("short", "API_KEY: every key must be at least 16 characters long"),
    (f"{API_KEY},short", "API_KEY: every key must be at least 16 characters long"),
])
def test_weak_api_key_stops_start_up(value, message):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"API_KEY": value, "MONGO_URI": "mongodb://127.0.0.1:1/"}, dotenv_path=None)
    assert str(error.value) == message


# --- lockout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("limits", ["true", "false"])
def test_fifth_failure_blocks_and_the_block_is_a_pinned_429(make_app, limits):
    """With limits on, Retry-After is still the block's own end, not a rate-limit window's."""
    client = make_app(RATELIMIT_ENABLED=limits).test_client()
    assert fail(client, 5) == [403] * 5
    response = call(client, "/emails", headers=BEARER)
    assert response.status_code == 429
    assert response.get_json() == LOCKED
    assert 890 <= int(response.headers["Retry-After"]) <= 900


def test_four_failures_do_not_block(client):
    assert fail(client, 4) == [403] * 4
    assert call(client, "/emails", headers=BEARER).status_code == 200


def test_malformed_headers_count_and_absent_headers_do_not(client):
    assert fail(client, 10, headers={}) == [401] * 10
    assert call(client, "/emails", headers=BEARER).status_code == 200
    assert fail(client, 3, headers={"Authorization": "Basic eA=="}) + fail(client, 2) == [401] * 3 + [403] * 2
    assert call(client, "/emails", headers=BEARER).get_json() == LOCKED


def test_correct_key_does_not_lift_a_block_and_other_ips_are_unaffected(client):
    fail(client, 5, ip=ATTACKER)
    for _ in range(3):
        assert call(client, "/emails", ip=ATTACKER, headers=BEARER).get_json() == LOCKED
    assert call(client, "/", ip=ATTACKER, headers=BEARER).get_json() == LOCKED
    assert call(client, "/emails", ip="192.0.2.11", headers=BEARER).status_code == 200


def test_blocked_ip_can_still_deliver_mail_and_probe_health(client, sample_payload):
    """The lockout guards the API; it never costs a message or a health check."""
    fail(client, 5, ip=IMPROVMX_IP)
    assert call(client, "/webhook", ip=IMPROVMX_IP, method="POST", json=sample_payload).status_code == 200
    assert call(client, "/healthz", ip=IMPROVMX_IP).status_code == 200


def test_block_ends_when_its_time_is_past(app):
    client = app.test_client()
    fail(client, 5)
    blocks = app.extensions["database"].auth_blocks
    blocks.update_one({"_id": "192.0.2.10"}, {"$set": {"until": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    assert call(client, "/emails", headers=BEARER).status_code == 200


def test_failures_older_than_the_window_do_not_count(app):
    client = app.test_client()
    old = datetime.now(timezone.utc) - timedelta(minutes=5, seconds=1)
    app.extensions["database"].auth_failures.insert_many([{"ip": "192.0.2.10", "at": old} for _ in range(4)])
    assert fail(client, 4) == [403] * 4
    assert call(client, "/emails", headers=BEARER).status_code == 200


def test_lockout_state_is_expired_by_ttl_indexes(app):
    database = app.extensions["database"]
    create_indexes(database)
    failures = database.auth_failures.index_information()["expire_failures"]
    blocks = database.auth_blocks.index_information()["expire_blocks"]
    assert (failures["key"], failures["expireAfterSeconds"]) == ([("at", 1)], 300)
    assert (blocks["key"], blocks["expireAfterSeconds"]) == ([("until", 1)], 0)


@pytest.mark.parametrize("limits", ["true", "false"])
def test_lockout_store_unavailable_admits_only_a_valid_key(make_app, limits):
    """No lockout state: a bad key cannot be counted, so it gets 503, never a pass; the valid
    key still works, so the owner can read GET / (spool depth) during an outage."""
    def unavailable(*args, **kwargs):
        raise ServerSelectionTimeoutError("down")

    app = make_app(RATELIMIT_ENABLED=limits)
    app.extensions["lockout"].blocks.find_one = unavailable
    client = app.test_client()
    refused = call(client, "/emails", headers=BAD_KEY)
    assert refused.status_code == 503
    assert refused.get_json() == {"success": False, "error": "Service temporarily unavailable"}
    assert refused.headers["Retry-After"] == "30"
    assert call(client, "/emails", headers=BEARER).status_code == 200
    assert call(client, "/emails").status_code == 401


# --- client address ---------------------------------------------------------------------------

def test_without_a_proxy_a_spoofed_forwarded_for_changes_nothing(client):
    """TRUSTED_PROXY_COUNT=0: X-Forwarded-For is the client's own claim and is ignored."""
    for n in range(5):
        call(client, "/emails", ip=ATTACKER, headers={**BAD_KEY, "X-Forwarded-For": f"203.0.113.{n}"})
    assert call(client, "/emails", ip=ATTACKER, headers={**BEARER, "X-Forwarded-For": "203.0.113.99"}
                ).get_json() == LOCKED
    assert call(client, "/emails", ip="203.0.113.99", headers=BEARER).status_code == 200


def test_behind_one_proxy_only_the_address_it_appended_counts(make_app):
    """TRUSTED_PROXY_COUNT=1 (Caddy): the right-most entry is the proxy's; the rest is the client's."""
    client = make_app(TRUSTED_PROXY_COUNT="1", RATELIMIT_ENABLED="false").test_client()
    for n in range(5):
        call(client, "/emails", ip="127.0.0.1", headers={**BAD_KEY, "X-Forwarded-For": f"10.0.0.{n}, {ATTACKER}"})
    assert call(client, "/emails", ip="127.0.0.1", headers={**BEARER, "X-Forwarded-For": ATTACKER}
                ).get_json() == LOCKED
    assert call(client, "/emails", ip="127.0.0.1",
                headers={**BEARER, "X-Forwarded-For": f"{ATTACKER}, 192.0.2.20"}).status_code == 200


@pytest.mark.parametrize("count,forwarded,expected", [
    ("0", "203.0.113.1", "127.0.0.1"),
    ("1", None, "127.0.0.1"),
    ("1", "203.0.113.1, 203.0.113.2", "203.0.113.2"),
    ("2", "203.0.113.1, 203.0.113.2, 203.0.113.3", "203.0.113.2"),
])
def test_client_ip_trusts_exactly_the_configured_number_of_proxies(make_app, caplog, count, forwarded, expected):
    """Seen through the whole WSGI stack (ProxyFix included), as the request log records it."""
    caplog.set_level(logging.INFO, logger="improvmx_archive")
    client = make_app(TRUSTED_PROXY_COUNT=count).test_client()
    call(client, "/healthz", ip="127.0.0.1", headers={"X-Forwarded-For": forwarded} if forwarded else {})
    assert caplog.records[-1].getMessage().endswith(f" ip={expected}")


# --- webhook guard ---------------------------------------------------------------------------------

def test_with_a_secret_only_the_secret_url_takes_mail(make_app, sample_payload, auth):
    client = make_app(WEBHOOK_SECRET=SECRET, RATELIMIT_ENABLED="false").test_client()
    for path in ("/webhook", "/webhook/wrong-secret-0123456789", f"/webhook/{SECRET}x", f"/webhook/{SECRET[:-1]}"):
        response = client.post(path, json=sample_payload)
        assert (response.status_code, response.get_json()) == (404, NOT_FOUND), path
    assert client.get("/emails", headers=auth).get_json()["total"] == 0
    assert client.post(f"/webhook/{SECRET}", json=sample_payload).status_code == 200
    assert client.get("/emails", headers=auth).get_json()["total"] == 1


def test_without_a_secret_a_secret_url_is_not_found(client, sample_payload):
    response = client.post("/webhook/anything-0123456789", json=sample_payload)
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_allowlist_refuses_every_other_source(make_app, sample_payload, auth):
    client = make_app(WEBHOOK_ALLOWED_IPS=f"{IMPROVMX_IP}, 10.0.0.0/8", RATELIMIT_ENABLED="false").test_client()
    response = call(client, "/webhook", ip=ATTACKER, method="POST", json=sample_payload)
    assert (response.status_code, response.get_json()) == (403, SOURCE_REFUSED)
    assert client.get("/emails", headers=auth).get_json()["total"] == 0
    assert call(client, "/webhook", ip=IMPROVMX_IP, method="POST", json=sample_payload).status_code == 200
    assert call(client, "/webhook", ip="10.20.30.40", method="POST", json=sample_payload).status_code == 200


def test_secret_and_allowlist_both_apply(make_app, sample_payload):
    client = make_app(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOWED_IPS=IMPROVMX_IP, RATELIMIT_ENABLED="false").test_client()
    wrong_source = call(client, f"/webhook/{SECRET}", ip=ATTACKER, method="POST", json=sample_payload)
    assert (wrong_source.status_code, wrong_source.get_json()) == (403, SOURCE_REFUSED)
    wrong_secret = call(client, "/webhook/wrong-secret-0123456789", ip=IMPROVMX_IP, method="POST", json=sample_payload)
    assert (wrong_secret.status_code, wrong_secret.get_json()) == (404, NOT_FOUND)
    assert call(client, f"/webhook/{SECRET}", ip=IMPROVMX_IP, method="POST", json=sample_payload).status_code == 200


@pytest.mark.parametrize("count,forwarded", [("0", IMPROVMX_IP), ("1", f"{IMPROVMX_IP}, {ATTACKER}")])
def test_allowlist_cannot_be_met_with_a_forged_forwarded_for(make_app, sample_payload, count, forwarded):
    client = make_app(WEBHOOK_ALLOWED_IPS=IMPROVMX_IP, TRUSTED_PROXY_COUNT=count, RATELIMIT_ENABLED="false"
                      ).test_client()
    ip = ATTACKER if count == "0" else "127.0.0.1"
    response = call(client, "/webhook", ip=ip, method="POST", json=sample_payload,
                    headers={"X-Forwarded-For": forwarded})
    assert (response.status_code, response.get_json()) == (403, SOURCE_REFUSED)


def test_allowlist_behind_a_proxy_uses_the_address_the_proxy_saw(make_app, sample_payload):
    client = make_app(WEBHOOK_ALLOWED_IPS=IMPROVMX_IP, TRUSTED_PROXY_COUNT="1", RATELIMIT_ENABLED="false"
                      ).test_client()
    response = call(client, "/webhook", ip="127.0.0.1", method="POST", json=sample_payload,
                    headers={"X-Forwarded-For": IMPROVMX_IP})
    assert response.status_code == 200


@pytest.mark.parametrize("name,value,message", [
    ("WEBHOOK_SECRET", "short", "WEBHOOK_SECRET must be at least 16 characters and contain no '/'"),
    ("WEBHOOK_SECRET", "a/b-0123456789abcdef", "WEBHOOK_SECRET must be at least 16 characters and contain no '/'"),
    ("WEBHOOK_ALLOWED_IPS", "15.237.103.194, improvmx.com",
     "WEBHOOK_ALLOWED_IPS holds 'improvmx.com', which is not an IP address or CIDR"),
    ("TRUSTED_PROXY_COUNT", "-1", "TRUSTED_PROXY_COUNT must be at least 0"),
    ("MAX_BODY_MB", "0", "MAX_BODY_MB must be at least 1"),
])
def test_invalid_security_settings_stop_start_up(name, value, message):
    env = {"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/", name: value}
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env, dotenv_path=None)
    assert str(error.value) == message


def test_security_defaults():
    """Off by default only because they are per deployment; docs/security.md says turn them on."""
    settings = Settings.from_env({"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/"}, dotenv_path=None)
    assert (settings.webhook_secret, settings.webhook_allowed_networks, settings.cors_origins) == ("", (), ())
    assert (settings.trusted_proxy_count, settings.max_body_bytes, settings.ratelimit_enabled) == (1, 70 * 2**20, True)
    assert settings.ratelimit_storage_uri == "mongodb://127.0.0.1:1/"


# --- body limit ---------------------------------------------------------------------------------------

def test_body_over_max_body_mb_is_a_json_413(make_app, auth):
    app = make_app(MAX_BODY_MB="1", RATELIMIT_ENABLED="false")
    client = app.test_client()
    assert app.config["MAX_CONTENT_LENGTH"] == 2**20
    response = client.post("/webhook", data=b"x" * (2**20 + 1), content_type="application/json")
    assert (response.status_code, response.get_json()) == (413, TOO_LARGE)
    assert client.get("/emails", headers=auth).get_json()["total"] == 0


def test_body_of_exactly_max_body_mb_is_accepted(make_app, sample_payload):
    client = make_app(MAX_BODY_MB="1", RATELIMIT_ENABLED="false").test_client()
    body = json.dumps({**sample_payload, "text": ""}).encode()
    body = json.dumps({**sample_payload, "text": "x" * (2**20 - len(body))}).encode()
    assert len(body) == 2**20
    assert client.post("/webhook", data=body, content_type="application/json").status_code == 200


# --- logs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,masked", [
    (f"/webhook/{SECRET}", "/webhook/***"),
    (f"/webhook/{SECRET}/more", "/webhook/***/more"),
    ("/webhook", "/webhook"),
    ("/emails/abc", "/emails/abc"),
    (f"/ui/emails/{'a' * 24}/inline/{'b' * 64}.{'c' * 32}/1", f"/ui/emails/{'a' * 24}/inline/***/1"),
])
def test_mask_path(path, masked):
    assert mask_path(path) == masked


def test_logs_name_the_ip_and_never_the_key_or_the_secret(make_app, sample_payload, caplog):
    caplog.set_level(logging.INFO, logger="improvmx_archive")
    client = make_app(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOWED_IPS=IMPROVMX_IP, RATELIMIT_ENABLED="false"
                      ).test_client()
    tried = "Bearer tried-key-must-not-be-logged"
    for _ in range(5):
        call(client, "/emails", ip=ATTACKER, headers={"Authorization": tried})
    call(client, "/emails", ip=ATTACKER, headers=BEARER)
    call(client, "/emails", ip="192.0.2.30", headers={"Authorization": "Basic eA=="})
    call(client, f"/webhook/{SECRET}", ip=IMPROVMX_IP, method="POST", json=sample_payload)
    call(client, f"/webhook/{SECRET}", ip=ATTACKER, method="POST", json=sample_payload)
    call(client, f"/webhook/{SECRET}-wrong", ip=IMPROVMX_IP, method="POST", json=sample_payload)
    messages = [record.getMessage() for record in caplog.records]
    text = "\n".join(messages)
    assert f"failed authentication ip={ATTACKER} path=/emails reason=wrong key" in messages
    assert "failed authentication ip=192.0.2.30 path=/emails reason=malformed" in messages
    assert any(m.startswith(f"blocked ip={ATTACKER} after 5 failed attempts until=") for m in messages)
    assert f"refused blocked ip={ATTACKER} path=/emails" in messages
    assert f"webhook refused from ip={ATTACKER} (not in WEBHOOK_ALLOWED_IPS)" in messages
    assert sum("method=POST path=/webhook/*** status=" in m for m in messages) == 3
    for secret in ("tried-key-must-not-be-logged", API_KEY, SECRET):
        assert secret not in text
