"""The outbox's rules on mongomock: signing, masking, fan-out, claims, giving up, the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from improvmx_archive import notify
from improvmx_archive.config import ConfigError
from improvmx_archive.notify import Attempt, Outbox
from tests.conftest import make_settings

URL = "https://user:secret-pass@hooks.example.net:8443/services/T0/B0/tok3n?key=q-secret"
OTHER_URL = "https://second.example.org/hook"
SECRET = "notify-secret-0123456789abcdef"


@pytest.fixture
def app(make_app):
    return make_app(RATELIMIT_ENABLED="false", NOTIFY_URL=f"{URL},{OTHER_URL}", NOTIFY_SECRET=SECRET)


@pytest.fixture
def outbox(app) -> Outbox:
    return app.extensions["outbox"]


def test_signature_is_stripe_style_hmac_of_timestamp_dot_body():
    body = b'{"event":"message.stored"}'
    header = notify.signature(SECRET, 1700000000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_masked_url_keeps_only_scheme_host_port_and_an_id():
    shown = notify.masked(URL)
    assert shown.startswith("https://hooks.example.net:8443/")
    for secret in ("user", "secret-pass", "services", "tok3n", "q-secret"):
        assert secret not in shown


@pytest.mark.parametrize("attempts", [1, 2, 5, 30])
def test_backoff_doubles_with_jitter_and_is_capped(attempts):
    ceiling = min(notify.BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), notify.BACKOFF_CAP_SECONDS)
    for _ in range(50):
        assert ceiling / 2 <= notify.backoff(attempts).total_seconds() <= ceiling


def test_stored_message_is_marked_and_fanned_out_once_per_receiver(app, client, outbox, sample_payload):
    email_id = client.post("/webhook", json=sample_payload).get_json()["email_id"]
    assert client.post("/webhook", json=sample_payload).get_json()["duplicate"] is True
    assert outbox.counts() == {"unsent": 1, "pending": 0, "failed": 0}
    assert outbox.fan_out() == 1
    assert outbox.fan_out() == 0  # the marker is gone; a second worker finds nothing
    entries = list(outbox.outbox.find({}))
    assert sorted(e["url_id"] for e in entries) == sorted(notify.receiver_id(u) for u in (URL, OTHER_URL))
    body = json.loads(entries[0]["body"])
    assert body["email_id"] == email_id and body["event"] == "message.stored"
    assert outbox.counts() == {"unsent": 0, "pending": 2, "failed": 0}


def test_fan_out_by_two_workers_at_once_makes_one_entry(app, client, outbox, sample_payload):
    client.post("/webhook", json=sample_payload)
    message = outbox.emails.find_one({})
    now = datetime.now(timezone.utc)
    for _ in range(2):
        outbox._enqueue(message["_id"], "r1", "https://r1/…", b"{}", now)
    assert outbox.outbox.count_documents({}) == 1


def test_a_claimed_notification_is_leased_to_one_sender(app, client, outbox, sample_payload):
    client.post("/webhook", json=sample_payload)
    outbox.fan_out()
    url_id = notify.receiver_id(URL)
    first = outbox.claim(url_id)
    assert first is not None and first["attempts"] == 1
    assert outbox.claim(url_id) is None  # leased: no second sender gets it
    assert outbox.record(first, Attempt(False, "HTTP 500")) == "retry"
    assert outbox.outbox.find_one({"_id": first["_id"]})["last_result"] == "HTTP 500"


def test_a_notification_past_its_window_fails_for_good_and_retry_requeues_it(app, client, outbox, sample_payload):
    client.post("/webhook", json=sample_payload)
    outbox.fan_out()
    url_id = notify.receiver_id(URL)
    outbox.outbox.update_many({}, {"$set": {"give_up_at": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    item = outbox.claim(url_id)
    assert outbox.record(item, Attempt(False, "timeout")) == "failed"
    assert outbox.counts()["failed"] == 1

    runner = app.test_cli_runner()
    status = runner.invoke(args=["notify", "status"])
    assert status.exit_code == 1
    assert "failed for good: 1" in status.output and "timeout" in status.output
    assert "secret-pass" not in status.output and "tok3n" not in status.output
    assert "1 failed notification(s) queued again" in runner.invoke(args=["notify", "retry"]).output
    assert outbox.counts()["failed"] == 0 and outbox.claim(url_id) is not None


def test_a_lost_lease_does_not_overwrite_the_new_holders_outcome(app, client, outbox, sample_payload):
    client.post("/webhook", json=sample_payload)
    outbox.fan_out()
    url_id = notify.receiver_id(URL)
    stale = outbox.claim(url_id)
    outbox.outbox.update_one({"_id": stale["_id"]}, {"$set": {"next_attempt_at": datetime.now(timezone.utc)}})
    current = outbox.claim(url_id)
    outbox.record(current, Attempt(True, "HTTP 200"))
    outbox.record(stale, Attempt(False, "timeout"))
    assert outbox.outbox.find_one({"_id": stale["_id"]})["status"] == "delivered"


def test_without_notify_url_nothing_is_marked(make_app, sample_payload):
    app = make_app(RATELIMIT_ENABLED="false")
    app.test_client().post("/webhook", json=sample_payload)
    assert app.extensions["outbox"].counts() == {"unsent": 0, "pending": 0, "failed": 0}


@pytest.mark.parametrize("overrides,message", [
    ({"NOTIFY_URL": "ftp://example.com/x", "NOTIFY_SECRET": SECRET}, "entry 1 is not an absolute"),
    ({"NOTIFY_URL": "https://example.com/x"}, "NOTIFY_SECRET must be set"),
    ({"NOTIFY_URL": "https://a.example/x,https://a.example/x", "NOTIFY_SECRET": SECRET}, "same URL twice"),
    ({"PUBLIC_URL": "archive.example"}, "PUBLIC_URL"),
])
def test_notification_settings_are_checked_at_start(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_settings(tmp_path, **overrides)


def test_a_receiver_removed_from_notify_url_no_longer_holds_the_backlog_up(app, make_app, client, outbox,
                                                                          sample_payload):
    client.post("/webhook", json=sample_payload)
    outbox.fan_out()
    assert outbox.counts()["pending"] == 2
    # The same database after a restart with one receiver left in NOTIFY_URL.
    restarted = make_app(mongo_client=app.extensions["mongo_client"], RATELIMIT_ENABLED="false",
                         NOTIFY_URL=OTHER_URL, NOTIFY_SECRET=SECRET)
    remaining = restarted.extensions["outbox"]
    assert remaining.counts() == {"unsent": 0, "pending": 1, "failed": 0}
    assert remaining.orphaned() == 1
    result = restarted.test_cli_runner().invoke(args=["notify", "status"])
    assert "for receivers no longer in NOTIFY_URL (never sent, not counted above): 1" in result.output
