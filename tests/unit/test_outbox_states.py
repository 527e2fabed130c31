"""The outbox state machine on mongomock, with the SMTP transaction replaced by chosen
outcomes: what each outcome and each kind of sender death leaves behind."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY

from improvmx_archive.outbound import sender as sender_module
from improvmx_archive.outbound.outbox import COLLECTION
from improvmx_archive.outbound.sender import Sender
from improvmx_archive.outbound.smtp import Outcome
from tests.conftest import API_KEY
from tests.unit.test_sending_api import SENDING, compose_body

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def app(make_app):
    return make_app(**SENDING, NOTIFY_URL="http://127.0.0.1:9/hook", NOTIFY_SECRET="notify-secret-0123456789")


def queue(app) -> str:
    return app.test_client().post("/send", headers=AUTH, json=compose_body()).json["send_id"]


def sender_with(app, monkeypatch, *outcomes: Outcome, reach_body: bool = True) -> Sender:
    script = list(outcomes)

    def deliver(settings, login, sender, recipients, raw, before_body):
        if reach_body:
            before_body()
        return script.pop(0)

    monkeypatch.setattr(sender_module.smtp, "deliver", deliver)
    return Sender(app.extensions["archive"], app.extensions["send_outbox"], app.config["SETTINGS"].sending)


def state(app) -> dict:
    return app.extensions["database"][COLLECTION].find_one()


def sends_counted(result: str) -> float:
    return REGISTRY.get_sample_value("improvmx_sends_total", {"result": result}) or 0.0


def test_sent_stores_a_copy_that_announces_nothing(app, monkeypatch):
    queue(app)
    before = sends_counted("sent")
    sender_with(app, monkeypatch, Outcome("sent", "250 ok")).step()
    item = state(app)
    assert item["status"] == "sent" and item["archived_email_id"]
    copy = app.extensions["database"].emails.find_one({"source": "sent"})
    assert "notify_pending" not in copy
    assert "support@example.com" in copy["audience"]
    assert sends_counted("sent") == before + 1


def test_retry_backs_off_and_gives_up_after_send_max_hours(app, monkeypatch):
    queue(app)
    sender = sender_with(app, monkeypatch, Outcome("retry", "451 later"), Outcome("retry", "451 later"))
    sender.step()
    item = state(app)
    assert item["status"] == "retrying"
    delay = item["next_attempt_at"].replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(seconds=50) < delay <= timedelta(seconds=60)  # SEND_RETRY_SECONDS defaults to 60
    outbox = app.extensions["send_outbox"]
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    outbox.sends.update_one({}, {"$set": {"next_attempt_at": past, "give_up_at": past}})
    sender.step()
    item = state(app)
    assert item["status"] == "failed" and item["last_reply"] == "gave up after 2 attempt(s): 451 later"


def test_a_sender_dead_before_the_body_requeues_after_the_body_is_unknown(app, monkeypatch):
    outbox = app.extensions["send_outbox"]
    queue(app)
    claimed = outbox.claim()
    assert claimed["phase"] == "connecting"
    expired = datetime.now(timezone.utc) - timedelta(seconds=1)
    outbox.sends.update_one({}, {"$set": {"lease_until": expired}})
    assert outbox.expire_stale() == (1, 0)
    assert state(app)["status"] == "retrying"

    claimed = outbox.claim()
    outbox.mark_body(claimed)
    outbox.sends.update_one({}, {"$set": {"lease_until": expired}})
    assert outbox.expire_stale() == (0, 1)
    assert state(app)["status"] == "unknown"
    assert outbox.claim() is None  # nothing picks an unknown send up on its own


def test_a_late_250_turns_an_unknown_send_into_sent(app, monkeypatch):
    outbox = app.extensions["send_outbox"]
    queue(app)
    claimed = outbox.claim()
    outbox.mark_body(claimed)
    outbox.sends.update_one({}, {"$set": {"lease_until": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    outbox.expire_stale()
    assert outbox.record(claimed, Outcome("sent", "250 ok")) == "sent"
    assert state(app)["status"] == "sent"


def test_a_conversation_follows_references_and_uses_the_subject_only_without_headers(app):
    from tests.ui_helpers import mime
    archive = app.extensions["archive"]

    def stored(subject, message_id=None, headers=None, to="support@example.com"):
        payload = mime(subject, to=to)
        payload["message-id"] = message_id
        payload.setdefault("headers", {}).update(headers or {})
        return archive.ingest(payload).email_id

    root = stored("Plan", "<root@x>")
    answer = stored("Re: Plan", "<a@x>", {"In-Reply-To": "<root@x>"})
    deeper = stored("Re: Re: Plan", "<b@x>", {"References": "<root@x>\r\n <a@x>"})
    bare = stored("RE: plan")  # no Message-ID, no In-Reply-To, no References: the subject links it
    other = stored("Plan", "<other@x>")  # same subject, own unrelated Message-ID: not linked
    hidden = stored("Re: Plan", "<h@x>", {"In-Reply-To": "<b@x>"}, to="billing@example.com")
    client = app.test_client()
    found = [entry["id"] for entry in client.get(f"/emails/{root}/thread", headers=AUTH).json["emails"]]
    assert found == [root, answer, deeper, bare, hidden]
    assert other not in found

    people, keys = app.extensions["people"], app.extensions["keys"]
    person = people.add("Maria", "maria@example.com")
    people.grant("Maria", ["support@example.com"])
    token, _ = keys.create(str(person["_id"]), "laptop", ["read"])
    member = client.get(f"/emails/{deeper}/thread", headers={"Authorization": f"Bearer {token}"}).json
    assert [entry["id"] for entry in member["emails"]] == [root, answer, deeper, bare]


def test_metrics_show_the_queue_depth(app):
    queue(app)
    queue(app)
    scraped = app.test_client().get("/metrics", headers=AUTH).get_data(as_text=True)
    assert 'improvmx_send_queue{status="queued"} 2.0' in scraped


def test_an_outcome_is_recorded_once_mongodb_answers_again(app, monkeypatch):
    from pymongo.errors import AutoReconnect

    from improvmx_archive.outbound import outbox as outbox_module
    queue(app)
    sender = sender_with(app, monkeypatch, Outcome("sent", "250 ok"))
    monkeypatch.setattr(sender_module, "RECORD_PAUSE_SECONDS", 0.01)
    real_record, failures = outbox_module.SendOutbox.record, [AutoReconnect("down"), AutoReconnect("down")]

    def flaky(self, item, outcome):
        if failures:
            raise failures.pop(0)
        return real_record(self, item, outcome)

    monkeypatch.setattr(outbox_module.SendOutbox, "record", flaky)
    sender.step()
    assert state(app)["status"] == "sent"
