"""GET /metrics in one process on a real server (SecantusDB): its token, the names the issue
lists, and the values moving with traffic.

prometheus_client keeps one registry per process, so tests compare values before and after.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from improvmx_archive.config import ConfigError
from tests.conftest import API_KEY, make_settings

METRICS_TOKEN = "scrape-token-0123456789abcdef"
WEBHOOK_SECRET = "metrics-secret-0123456789"


@pytest.fixture
def app(secantus_app):
    """conftest's `client` then talks to the app on the real server."""
    return secantus_app


def scrape(client, token=API_KEY) -> dict[tuple, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_listed_metric_is_exposed(client, sample_payload):
    client.post("/webhook", json=sample_payload)
    names = {name for name, _ in scrape(client)}
    for expected in ("improvmx_webhook_deliveries_total", "improvmx_webhook_ingest_seconds_bucket",
                     "improvmx_http_requests_total", "improvmx_http_request_seconds_bucket",
                     "improvmx_spool_messages", "improvmx_spool_oldest_age_seconds", "improvmx_archive_messages",
                     "improvmx_archive_bytes", "improvmx_retention_deleted_total",
                     "improvmx_notifications_pending"):
        assert expected in names, expected


def test_deliveries_count_by_result_and_refusals_come_from_the_hook(client, sample_payload):
    before = scrape(client)
    client.post("/webhook", json=sample_payload)
    client.post("/webhook", json=sample_payload)
    client.post("/webhook", data="not json", content_type="application/json")
    after = scrape(client)
    for result, delta in (("stored", 1), ("duplicate", 1), ("refused", 1)):
        name = "improvmx_webhook_deliveries_total"
        assert value(after, name, result=result) - value(before, name, result=result) == delta, result


def test_http_metrics_use_the_route_template_never_the_secret(make_secantus_app, sample_payload):
    client = make_secantus_app(RATELIMIT_ENABLED="false", WEBHOOK_SECRET=WEBHOOK_SECRET).test_client()
    client.post(f"/webhook/{WEBHOOK_SECRET}", json=sample_payload)
    client.get("/emails/0123456789abcdef01234567", headers={"Authorization": f"Bearer {API_KEY}"})
    response = client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    text = response.get_data(as_text=True)
    assert WEBHOOK_SECRET not in text and "0123456789abcdef01234567" not in text
    assert 'route="/webhook/<secret>"' in text and 'route="/emails/<email_id>"' in text
    assert 'method="GET",route="/emails/<email_id>",status="404"' in text


def test_archive_gauges_follow_mongodb(client, sample_payload):
    client.post("/webhook", json=sample_payload)
    samples = scrape(client)
    assert value(samples, "improvmx_archive_messages") == 1
    assert value(samples, "improvmx_archive_bytes", kind="attachments") > 0


def test_spool_gauges_read_the_spool_directory(app, client, sample_payload):
    app.extensions["spool"].put(sample_payload)
    samples = scrape(client)
    assert value(samples, "improvmx_spool_messages") == 1
    assert value(samples, "improvmx_spool_oldest_age_seconds") >= 0


def test_metrics_token_replaces_the_api_keys_when_set(make_secantus_app):
    client = make_secantus_app(RATELIMIT_ENABLED="false", METRICS_TOKEN=METRICS_TOKEN).test_client()
    scrape(client, METRICS_TOKEN)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 403
    assert client.get("/metrics").status_code == 401


def test_wrong_metrics_tokens_count_toward_the_lockout(make_secantus_app):
    client = make_secantus_app(RATELIMIT_ENABLED="false", METRICS_TOKEN=METRICS_TOKEN).test_client()
    statuses = [client.get("/metrics", headers={"Authorization": "Bearer guessed-0123456789abcdef"}).status_code
                for _ in range(6)]
    assert statuses == [403] * 5 + [429]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 429


@pytest.mark.parametrize("token", ["short", "ok-token-0123456789,short"])
def test_short_metrics_tokens_are_refused_at_start(tmp_path, token):
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        make_settings(tmp_path, METRICS_TOKEN=token)
