"""Scaled out: two app hosts (two gunicorn instances) behind one Caddy load balancer, sharing
one database. Every piece of state lives in MongoDB, so whichever instance a request lands
on gives the same answer: messages, idempotency, brute-force lockouts and rate limits.
The gunicorn access logs show which instance served each request."""

from __future__ import annotations

import pytest

from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.deploy.helpers import request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(apps=2, RATELIMIT_LIST="3 per minute")


def test_a_message_posted_through_one_instance_is_listed_through_the_other(stack):
    payload = payload_from_mime(sample_mime(subject="Scaled out"))
    request_id, stored = stack.post_webhook(payload)
    assert stored.status == 200, stored.body
    email_id = stored.json()["email_id"]
    [receiver] = stack.served_by(request_id)
    other = stack.apps[1 - receiver]

    direct = request(other.port, "GET", "/emails", headers={"Authorization": f"Bearer {stack.api_key}"})
    assert email_id in [email["id"] for email in direct.json()["emails"]]

    served = set()
    for _ in range(2):  # round robin: one listing from each instance
        request_id, listed = stack.through_caddy("GET", "/emails", source="127.0.0.6", key=stack.api_key)
        assert email_id in [email["id"] for email in listed.json()["emails"]]
        served.update(stack.served_by(request_id))
    assert served == {0, 1}

    retries = [stack.post_webhook(payload) for _ in range(2)]  # ImprovMX retrying: one per instance
    assert {index for request_id, _ in retries for index in stack.served_by(request_id)} == {0, 1}
    assert [(r.json()["email_id"], r.json()["duplicate"]) for _, r in retries] == [(email_id, True)] * 2


def test_a_lockout_earned_on_both_instances_applies_on_both(stack):
    source, served = "127.0.0.8", set()
    for _ in range(5):  # the lockout threshold, spread over both instances
        request_id, refused = stack.through_caddy("GET", "/emails", source=source, key="wrong-key-0123456789")
        assert refused.status == 403
        served.update(stack.served_by(request_id))
    assert served == {0, 1}

    served = set()
    for _ in range(2):
        request_id, blocked = stack.through_caddy("GET", "/emails", source=source, key=stack.api_key)
        assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0
        served.update(stack.served_by(request_id))
    assert served == {0, 1}


def test_rate_limit_windows_are_shared_by_both_instances(stack):
    key = stack.personal_key("scaleout")  # counted per person: a budget no other test spent
    statuses, served = [], set()
    for _ in range(4):  # RATELIMIT_LIST is 3 per minute: per instance, 2 + 2 would all pass
        request_id, response = stack.through_caddy("GET", "/emails", source="127.0.0.9", key=key)
        statuses.append(response.status)
        served.update(stack.served_by(request_id))
    assert statuses == [200, 200, 200, 429]
    assert served == {0, 1}
