"""End to end as deployed: a client -> the real Caddy (shipped Caddyfile) -> the real gunicorn
(shipped gunicorn.conf.py) -> SecantusDB. Clients connect from 127.0.0.5/.6, so the address
the app must see differs from the proxy's own (127.0.0.1)."""

from __future__ import annotations

import gzip
import http.client
import json
import secrets

import pytest

from improvmx_archive.sample import payload_from_mime, sample_mime

pytestmark = pytest.mark.slow

IMPROVMX = "127.0.0.5"  # plays ImprovMX's sending address: the only one WEBHOOK_ALLOWED_IPS admits
READER = "127.0.0.6"
MAX_BODY = 70 * 1024 * 1024  # the app's and the Caddyfile's default


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(apps=1, WEBHOOK_ALLOWED_IPS=IMPROVMX)


@pytest.fixture(scope="module")
def delivered(stack):
    """One ImprovMX payload delivered through Caddy: (payload, request id, response)."""
    payload = payload_from_mime(sample_mime(subject="Through Caddy"))
    request_id, response = stack.post_webhook(payload, source=IMPROVMX)
    assert response.status == 200, response.body
    return payload, request_id, response


def test_webhook_through_caddy_is_stored_and_read_back(stack, delivered):
    _, request_id, response = delivered
    body = response.json()
    assert body["success"] is True and body["duplicate"] is False
    assert response.headers["X-Request-ID"] == request_id
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in response.headers

    _, listed = stack.through_caddy("GET", "/emails", source=READER, key=stack.api_key,
                                    headers={"Accept-Encoding": "gzip"})
    assert listed.status == 200 and listed.headers["Content-Encoding"] == "gzip"
    emails = json.loads(gzip.decompress(listed.body))["emails"]
    assert body["email_id"] in [email["id"] for email in emails]

    _, detail = stack.through_caddy("GET", f"/emails/{body['email_id']}", source=READER, key=stack.api_key)
    assert detail.status == 200 and detail.json()["email"]["subject"] == "Through Caddy"


def test_the_app_sees_the_client_address_caddy_reported(stack, delivered):
    _, request_id, _ = delivered
    caddy_saw = stack.caddy_entry(request_id)["request"]["remote_ip"]
    assert caddy_saw == IMPROVMX
    access = stack.access_line(request_id)
    assert access.startswith(f'{IMPROVMX} "POST /webhook/*** HTTP/1.1" 200 ')
    assert f'xff="{IMPROVMX}"' in access  # Caddy's header, exactly one address
    assert f" ip={IMPROVMX}" in stack.app_line(request_id)


def test_a_spoofed_x_forwarded_for_is_ignored(stack, delivered):
    payload, _, _ = delivered
    # A stranger claims to be ImprovMX: Caddy replaces the header, the allowlist refuses.
    request_id, response = stack.post_webhook(payload, source="127.0.0.1", **{"X-Forwarded-For": IMPROVMX})
    assert response.status == 403
    assert 'xff="127.0.0.1"' in stack.access_line(request_id)
    assert " ip=127.0.0.1" in stack.app_line(request_id)

    request_id, response = stack.through_caddy("GET", "/healthz", source=READER,
                                               headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
    assert response.status == 200
    assert stack.access_line(request_id).startswith(f"{READER} ") and "203.0.113.9" not in stack.access_line(request_id)
    assert f" ip={READER}" in stack.app_line(request_id)


def test_an_oversize_body_is_refused_by_caddy_before_gunicorn(stack):
    probe = secrets.token_hex(8)
    connection = http.client.HTTPConnection("127.0.0.1", stack.caddy.port, timeout=30,
                                            source_address=(IMPROVMX, 0))
    connection.putrequest("POST", f"/webhook/{stack.webhook_secret}?probe={probe}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders(b"{" + b" " * 65536)  # the start of the body; Caddy answers at once
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["success"] is False
    connection.close()

    refused = [e for e in stack.caddy_entries() if probe in e["request"]["uri"]]
    assert [e["status"] for e in refused] == [413]
    assert refused[0]["request"]["uri"] == f"/webhook/***?probe={probe}"
    assert probe not in stack.apps[0].log_text()


def test_a_body_of_exactly_the_cap_gets_through(stack, delivered):
    payload, _, stored = delivered
    document = json.dumps(payload).encode()
    padded = document + b" " * (MAX_BODY - len(document))  # still the same JSON document
    request_id, response = stack.through_caddy("POST", f"/webhook/{stack.webhook_secret}", source=IMPROVMX,
                                               headers={"Content-Type": "application/json"}, body=padded)
    assert response.status == 200, response.body
    assert response.json()["email_id"] == stored.json()["email_id"] and response.json()["duplicate"] is True
    assert stack.served_by(request_id) == [0]


def test_no_secret_or_api_key_reaches_any_log(stack, delivered):
    stack.through_caddy("GET", "/emails", source=READER, key=stack.api_key)
    logs = stack.caddy.log_text() + stack.apps[0].log_text()
    assert "/webhook/***" in stack.caddy.log_text() and "/webhook/***" in stack.apps[0].log_text()
    assert stack.webhook_secret not in logs and stack.api_key not in logs
