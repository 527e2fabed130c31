"""Rate limits: each route's own limit, the global limit, the webhook's ImprovMX exemption,
the exact 429 and its headers, and what must never be limited (health probes, mail while
the limit storage is down). memory:// storage; the multi-worker MongoDB case is in
tests/integration/test_security_multiworker.py.
"""

from __future__ import annotations

import time

import pytest

from improvmx_archive.config import ConfigError, Settings
from tests.conftest import API_KEY

BEARER = {"Authorization": f"Bearer {API_KEY}"}
IMPROVMX_IP = "15.237.103.194"
CLIENT = "192.0.2.10"
SEEDER = "192.0.2.250"
RAISED_GLOBAL = "10000 per hour"


def call(client, path, *, ip=CLIENT, method="GET", **kwargs):
    return client.open(path, method=method, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def refused(response, limit: str):
    """The pinned 429: JSON body naming the limit, and the headers a client backs off by."""
    assert response.status_code == 429
    assert response.get_json() == {"success": False, "error": f"Rate limit exceeded: {limit}"}
    assert response.headers["X-RateLimit-Limit"] == limit.split()[0]
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
    return int(response.headers["Retry-After"])


@pytest.fixture
def seeded(make_app, sample_payload):
    """Build an app with these overrides and one stored message (sent from another IP)."""

    def build(**overrides):
        app = make_app(**overrides)
        client = app.test_client()
        email_id = call(client, "/webhook", ip=SEEDER, method="POST", json=sample_payload).get_json()["email_id"]
        return client, email_id

    return build


ROUTES = [
    ("GET", "/emails", 20),
    ("GET", "/emails/{id}", 30),
    ("PATCH", "/emails/{id}", 30),
    ("GET", "/", 30),
    ("GET", "/docs", 60),
    ("GET", "/openapi.json", 60),
    ("GET", "/emails/{id}/attachments/0", 10),
    ("GET", "/emails/{id}/attachment/sample.pdf", 10),
    ("POST", "/webhook", 200),
]


@pytest.mark.parametrize("method,path,allowed", ROUTES)
def test_each_route_has_its_default_per_minute_limit(seeded, sample_payload, method, path, allowed):
    client, email_id = seeded(RATELIMIT_GLOBAL=RAISED_GLOBAL)
    path = path.format(id=email_id)
    body = {"json": sample_payload} if method == "POST" else {"json": {"processed": True}}
    statuses = {call(client, path, method=method, headers=BEARER, **body).status_code for _ in range(allowed)}
    assert statuses == {200}
    retry_after = refused(call(client, path, method=method, headers=BEARER, **body), f"{allowed} per 1 minute")
    assert 1 <= retry_after <= 60


def test_get_and_patch_of_one_message_have_separate_budgets(seeded):
    client, email_id = seeded(RATELIMIT_GLOBAL=RAISED_GLOBAL, RATELIMIT_DETAIL="2 per minute")
    for _ in range(2):
        call(client, f"/emails/{email_id}", headers=BEARER)
    refused(call(client, f"/emails/{email_id}", headers=BEARER), "2 per 1 minute")
    patched = call(client, f"/emails/{email_id}", method="PATCH", headers=BEARER, json={"processed": True})
    assert patched.status_code == 200


def test_each_limit_is_configurable(seeded):
    client, _ = seeded(RATELIMIT_GLOBAL=RAISED_GLOBAL, RATELIMIT_LIST="2 per 5 minutes")
    assert [call(client, "/emails", headers=BEARER).status_code for _ in range(2)] == [200, 200]
    assert 1 <= refused(call(client, "/emails", headers=BEARER), "2 per 5 minute") <= 300


def test_global_hourly_limit_is_shared_by_every_api_route(make_app):
    """With the defaults, 50 unauthenticated requests an hour from one IP, whichever routes
    they go to; a valid key is counted per principal instead (test_ratelimit_principals.py)."""
    client = make_app().test_client()
    statuses = [call(client, "/docs" if n % 2 else "/openapi.json").status_code for n in range(50)]
    assert statuses == [200] * 50
    assert 1 <= refused(call(client, "/emails"), "50 per 1 hour") <= 3600
    assert call(client, "/emails", headers=BEARER).status_code == 200


def test_global_daily_limit(make_app):
    client = make_app(RATELIMIT_GLOBAL="3 per day;100 per hour").test_client()
    assert [call(client, "/openapi.json").status_code for _ in range(3)] == [200] * 3
    assert 1 <= refused(call(client, "/openapi.json"), "3 per 1 day") <= 86400


def test_webhook_is_exempt_from_the_global_limits(make_app, sample_payload):
    """A busy domain gets more than 50 mails an hour; they must not use up the API's budget either."""
    client = make_app().test_client()
    statuses = {call(client, "/webhook", method="POST", json=sample_payload).status_code for _ in range(60)}
    assert statuses == {200}
    assert {call(client, "/openapi.json").status_code for _ in range(50)} == {200}
    refused(call(client, "/openapi.json"), "50 per 1 hour")


def test_webhook_per_minute_limit_bites_unknown_sources(make_app, sample_payload):
    client = make_app(RATELIMIT_WEBHOOK="3 per minute").test_client()
    assert [call(client, "/webhook", method="POST", json=sample_payload).status_code for _ in range(3)] == [200] * 3
    refused(call(client, "/webhook", method="POST", json=sample_payload), "3 per 1 minute")
    other = call(client, "/webhook", ip="192.0.2.11", method="POST", json=sample_payload)
    assert other.status_code == 200


def test_allowlisted_sender_is_exempt_from_the_webhook_limit(make_app, sample_payload):
    client = make_app(RATELIMIT_WEBHOOK="3 per minute", RATELIMIT_GLOBAL="1 per hour",
                      WEBHOOK_ALLOWED_IPS=IMPROVMX_IP).test_client()
    responses = [call(client, "/webhook", ip=IMPROVMX_IP, method="POST", json=sample_payload) for _ in range(10)]
    assert {r.status_code for r in responses} == {200}
    assert not any("X-RateLimit-Limit" in r.headers or "Retry-After" in r.headers for r in responses)
    statuses = [call(client, "/webhook", method="POST", json=sample_payload).status_code for _ in range(3)]
    assert statuses == [403] * 3
    refused(call(client, "/webhook", method="POST", json=sample_payload), "3 per 1 minute")


def test_allowlisted_sender_is_not_exempt_elsewhere(make_app):
    client = make_app(WEBHOOK_ALLOWED_IPS=IMPROVMX_IP, RATELIMIT_GLOBAL=RAISED_GLOBAL).test_client()
    assert {call(client, "/emails", ip=IMPROVMX_IP, headers=BEARER).status_code for _ in range(20)} == {200}
    refused(call(client, "/emails", ip=IMPROVMX_IP, headers=BEARER), "20 per 1 minute")


def test_success_carries_rate_limit_headers_but_no_retry_after(make_app):
    response = call(make_app().test_client(), "/emails", headers=BEARER)
    assert response.status_code == 200
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("20", "19")
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_are_never_limited(make_app, path):
    client = make_app(RATELIMIT_GLOBAL="2 per hour").test_client()
    responses = [call(client, path) for _ in range(20)]
    assert {r.status_code for r in responses} == {200}
    assert not any("X-RateLimit-Limit" in r.headers or "Retry-After" in r.headers for r in responses)


def test_unauthenticated_limits_are_per_client_ip(make_app):
    client = make_app(RATELIMIT_GLOBAL="2 per hour").test_client()
    for _ in range(2):
        call(client, "/openapi.json")
    refused(call(client, "/openapi.json"), "2 per 1 hour")
    assert call(client, "/openapi.json", ip="192.0.2.11").status_code == 200


def test_authenticated_limits_follow_the_key_not_the_address(make_app):
    client = make_app(RATELIMIT_LIST="2 per minute", RATELIMIT_GLOBAL=RAISED_GLOBAL).test_client()
    for _ in range(2):
        call(client, "/emails", headers=BEARER)
    refused(call(client, "/emails", headers=BEARER), "2 per 1 minute")
    refused(call(client, "/emails", ip="192.0.2.11", headers=BEARER), "2 per 1 minute")


def test_spoofed_forwarded_for_does_not_buy_a_new_budget(make_app):
    client = make_app(RATELIMIT_LIST="3 per minute", RATELIMIT_GLOBAL=RAISED_GLOBAL).test_client()
    for n in range(3):
        call(client, "/emails", headers={**BEARER, "X-Forwarded-For": f"203.0.113.{n}"})
    refused(call(client, "/emails", headers={**BEARER, "X-Forwarded-For": "203.0.113.99"}), "3 per 1 minute")


def test_disabled_limits_nothing_and_adds_no_headers(make_app, sample_payload):
    client = make_app(RATELIMIT_ENABLED="false", RATELIMIT_LIST="1 per minute", RATELIMIT_GLOBAL="1 per hour",
                      RATELIMIT_WEBHOOK="1 per minute").test_client()
    responses = [call(client, "/emails", headers=BEARER) for _ in range(5)]
    responses += [call(client, "/webhook", method="POST", json=sample_payload) for _ in range(5)]
    assert {r.status_code for r in responses} == {200}
    assert not any("X-RateLimit-Limit" in r.headers for r in responses)


def test_each_app_keeps_its_own_settings(make_app):
    """The limiter is module-level: a later app must not inherit or switch off an earlier one's limits."""
    strict = make_app(RATELIMIT_GLOBAL="2 per hour").test_client()
    make_app(RATELIMIT_ENABLED="false")
    assert [call(strict, "/openapi.json").status_code for _ in range(2)] == [200, 200]
    refused(call(strict, "/openapi.json"), "2 per 1 hour")
    relaxed = make_app(RATELIMIT_GLOBAL="5 per hour").test_client()
    assert [call(relaxed, "/openapi.json").status_code for _ in range(5)] == [200] * 5
    refused(call(relaxed, "/openapi.json"), "5 per 1 hour")


def test_mail_is_accepted_while_the_limit_storage_is_down(make_app, sample_payload, caplog):
    """An unreachable RATELIMIT_STORAGE_URI falls back to per-process memory: limits still hold,
    and a message is never refused because of the limiter."""
    client = make_app(RATELIMIT_STORAGE_URI="mongodb://127.0.0.1:1/", MONGO_TIMEOUT_MS="100",
                      RATELIMIT_WEBHOOK="2 per minute").test_client()
    assert [call(client, "/webhook", method="POST", json=sample_payload).status_code for _ in range(2)] == [200, 200]
    refused(call(client, "/webhook", method="POST", json=sample_payload), "2 per 1 minute")
    assert "Rate limit storage unreachable - falling back to in-memory storage" in caplog.text


@pytest.mark.parametrize("name,value,message", [
    ("RATELIMIT_LIST", "lots", "RATELIMIT_LIST is not a rate limit such as '30 per minute': 'lots'"),
    ("RATELIMIT_GLOBAL", "200 per fortnight",
     "RATELIMIT_GLOBAL is not a rate limit such as '30 per minute': '200 per fortnight'"),
    ("RATELIMIT_ENABLED", "maybe", "RATELIMIT_ENABLED must be true or false, not 'maybe'"),
    ("RATELIMIT_STORAGE_URI", "memcached://127.0.0.1:11211",
     "RATELIMIT_STORAGE_URI must be a mongodb:// or redis:// URI (shared by every worker) or memory:// "
     "(one count per process: tests only)"),
])
def test_invalid_limit_settings_stop_start_up(name, value, message):
    env = {"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/", name: value}
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env, dotenv_path=None)
    assert str(error.value) == message
