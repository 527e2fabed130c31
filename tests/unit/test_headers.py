"""Response headers: the security set on every kind of response, CORS only for configured
origins, and the request id. Values are pinned exactly, since browsers act on each one.
"""

from __future__ import annotations

import re

import pytest

from improvmx_archive.config import ConfigError, Settings
from tests.conftest import API_KEY

CSP_API = "default-src 'none'; frame-ancestors 'none'; sandbox"
CSP_DOCS = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
ORIGIN = "https://dashboard.example.com"


def security_headers(response) -> dict[str, str]:
    names = ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options", "Cross-Origin-Resource-Policy",
             "Content-Security-Policy", "Cache-Control")
    return {name: response.headers.get(name) for name in names}


def expected(csp: str) -> dict[str, str]:
    return {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cross-Origin-Resource-Policy": "same-origin", "Content-Security-Policy": csp,
            "Cache-Control": "no-store"}


@pytest.fixture
def stored_id(client, sample_payload):
    return client.post("/webhook", json=sample_payload).get_json()["email_id"]


@pytest.mark.parametrize("method,path,status,csp", [
    ("GET", "/healthz", 200, CSP_API),
    ("GET", "/emails", 200, CSP_API),
    ("GET", "/emails/{id}", 200, CSP_API),
    ("GET", "/emails/{id}/attachments/0", 200, CSP_API),
    ("GET", "/emails/{id}/attachments/1", 200, CSP_API),
    ("GET", "/docs", 200, CSP_DOCS),
    ("GET", "/nowhere", 404, CSP_API),
    ("GET", "/webhook", 405, CSP_API),
    ("POST", "/webhook", 400, CSP_API),
])
def test_every_response_carries_the_security_headers(client, auth, stored_id, method, path, status, csp):
    response = client.open(path.format(id=stored_id), method=method, headers=auth)
    assert response.status_code == status
    assert security_headers(response) == expected(csp)
    assert "Server" not in response.headers


def test_downloaded_html_never_gets_the_docs_policy(make_app):
    """An HTML attachment is served as a download under the sandboxing API policy, never as a page."""
    client = make_app(RATELIMIT_ENABLED="false").test_client()
    payload = {"to": [{"email": "inbox@example.com"}], "subject": "html part",
               "attachments": [{"type": "text/html", "name": "x.html", "content": "PHNjcmlwdD4=",
                                "encoding": "base64"}]}
    email_id = client.post("/webhook", json=payload).get_json()["email_id"]
    response = client.get(f"/emails/{email_id}/attachments/0", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Content-Security-Policy"] == CSP_API


def test_request_id_is_echoed_when_safe_and_replaced_when_not(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123.XYZ_789"}).headers["X-Request-ID"] == \
        "abc-123.XYZ_789"
    for unsafe in ("short", "has space in it", "x" * 65, "<script>alert(1)</script>"):
        assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz", headers={"X-Request-ID": unsafe})
                            .headers["X-Request-ID"])


# --- CORS --------------------------------------------------------------------------------------

def test_no_cors_headers_unless_origins_are_configured(client, auth):
    response = client.get("/emails", headers={**auth, "Origin": ORIGIN})
    assert response.status_code == 200
    assert not any(name.startswith("Access-Control-") for name in response.headers.keys())


def test_configured_origin_gets_cors_without_credentials(make_app, auth):
    client = make_app(CORS_ORIGINS=f"{ORIGIN}, https://other.example.com", RATELIMIT_ENABLED="false").test_client()
    response = client.get("/emails", headers={**auth, "Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.headers["Vary"]
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
            "X-Request-ID", "Content-Disposition"} <= exposed


def test_errors_are_readable_by_a_configured_origin(make_app):
    """A dashboard must be able to read the 401/429 body to tell its user what happened."""
    client = make_app(CORS_ORIGINS=ORIGIN, RATELIMIT_ENABLED="false").test_client()
    response = client.get("/emails", headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_unlisted_origin_gets_no_cors(make_app, auth):
    client = make_app(CORS_ORIGINS=ORIGIN, RATELIMIT_ENABLED="false").test_client()
    response = client.get("/emails", headers={**auth, "Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_preflight_needs_no_key_and_allows_only_what_the_api_uses(make_app):
    client = make_app(CORS_ORIGINS=ORIGIN, RATELIMIT_ENABLED="false").test_client()
    response = client.options("/emails", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Headers"].lower() == "authorization"
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "PATCH", "DELETE", "OPTIONS"}
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("value", ["*", f"{ORIGIN}, *"])
def test_wildcard_origin_is_refused_at_start_up(value):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/", "CORS_ORIGINS": value},
                          dotenv_path=None)
    assert str(error.value) == "CORS_ORIGINS must list origins explicitly; '*' is refused"
