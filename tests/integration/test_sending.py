"""Sending through a real SMTP relay (aiosmtpd over TLS with AUTH, certificates from a
throwaway CA given through SMTP_CA_FILE) from an app on a real SecantusDB.

The background sender is driven pass by pass (Sender.step) so each fault is seen at the
state it produces; the gunicorn tests (test_sending_gunicorn.py) run it for real.
"""

from __future__ import annotations

import email
import json
import time
from email import policy

import pytest

from devtools.smtp_relay import PASSWORD, USERNAME, Relay, make_ca
from improvmx_archive.outbound.sender import Sender
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.conftest import API_KEY

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(params=["starttls", "tls"])
def relay(request, certificates):
    with Relay(certificates, mode=request.param) as running:
        yield running


@pytest.fixture
def starttls_relay(certificates):
    with Relay(certificates, mode="starttls") as running:
        yield running


def sending_env(relay: Relay, certificates, **extra) -> dict[str, str]:
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(relay.port), "SMTP_SECURITY": relay.mode,
            "SMTP_USERNAME": USERNAME, "SMTP_PASSWORD": PASSWORD, "SMTP_CA_FILE": str(certificates.ca),
            "SMTP_IP_FAMILY": "ipv4", "DOMINIO": "example.com", "SEND_RETRY_SECONDS": "1",
            "RATELIMIT_ENABLED": "false", **extra}


@pytest.fixture
def make_sending_app(make_secantus_app, certificates):
    def build(relay: Relay, **extra):
        return make_secantus_app(**sending_env(relay, certificates, **extra))
    return build


def sender_of(app) -> Sender:
    return Sender(app.extensions["archive"], app.extensions["send_outbox"], app.config["SETTINGS"].sending)


def store_original(app, *, subject="Question about my order", references=None, reply_to=None,
                   cc="Carol <carol@example.net>, sales@example.com") -> str:
    raw = sample_mime(recipient="support@example.com", sender="Alice Example <alice@example.org>", subject=subject)
    extra = f"Cc: {cc}\r\n"  # written as raw header lines, so a folded References stays folded
    extra += f"References: {references}\r\n" if references else ""
    extra += f"Reply-To: {reply_to}\r\n" if reply_to else ""
    return app.extensions["archive"].ingest(payload_from_mime(extra.encode() + raw)).email_id


def parsed(delivery) -> email.message.EmailMessage:
    return email.message_from_bytes(delivery.data, policy=policy.default)


def outbox_item(client, send_id):
    response = client.get(f"/outbox/{send_id}", headers=AUTH)
    assert response.status_code == 200, response.json
    return response.json["send"]


def test_reply_all_arrives_threaded_with_the_right_envelope(relay, make_sending_app):
    app = make_sending_app(relay)
    client = app.test_client()
    original_id = store_original(app, subject="Re: Re: Question", references="<root@example.org>\r\n <mid@example.org>")
    original = app.extensions["archive"].find(original_id)
    response = client.post(f"/emails/{original_id}/reply", headers=AUTH,
                           json={"text": "Thanks, it ships today.", "html": "<p>Thanks, <b>it ships</b></p>",
                                 "all": True})
    assert response.status_code == 202, response.json
    answer = response.json
    assert answer["success"] is True and answer["status"] == "queued"
    assert outbox_item(client, answer["send_id"])["status"] == "queued"

    assert sender_of(app).step() == 0
    [delivery] = relay.wait_for(1)
    message = parsed(delivery)
    assert delivery.login == USERNAME
    assert delivery.mail_from == "support@example.com"
    assert sorted(delivery.rcpt_tos) == ["alice@example.org", "carol@example.net"]  # sales@ is ours
    assert message["From"] == "support@example.com"
    assert message["To"] == "Alice Example <alice@example.org>"
    assert message["Cc"] == "Carol <carol@example.net>"
    assert message["Subject"] == "Re: Question"
    assert message["Message-ID"] == answer["message_id"]
    assert message["In-Reply-To"] == original["message-id"]
    assert message["References"].split() == ["<root@example.org>", "<mid@example.org>", original["message-id"]]
    text = message.get_body(("plain",)).get_content()
    assert text.startswith("Thanks, it ships today.") and "> Hello," in text
    html = message.get_body(("html",)).get_content()
    assert "<b>it ships</b>" in html and "<blockquote" in html and "sample" in html

    item = outbox_item(client, answer["send_id"])
    assert item["status"] == "sent" and item["attempts"] == 1 and item["last_reply"].startswith("250")
    copy_id = item["archived_email_id"]
    copy = app.extensions["archive"].find(copy_id)
    assert copy["source"] == "sent" and copy["message-id"] == answer["message_id"]
    assert "support@example.com" in copy["audience"]
    assert "notify_pending" not in copy

    thread = client.get(f"/emails/{original_id}/thread", headers=AUTH).json
    assert [entry["id"] for entry in thread["emails"]] == [original_id, copy_id]
    assert [entry["source"] for entry in thread["emails"]] == ["webhook", "sent"]


def test_reply_goes_to_reply_to_and_only_there(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    original_id = store_original(app, reply_to="Helpdesk <tickets@example.org>")
    response = app.test_client().post(f"/emails/{original_id}/reply", headers=AUTH, json={"text": "Answer"})
    assert response.status_code == 202
    sender_of(app).step()
    [delivery] = starttls_relay.wait_for(1)
    assert delivery.rcpt_tos == ["tickets@example.org"]
    assert parsed(delivery)["Cc"] is None


def test_forwards_inline_and_as_attachment(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    original_id = store_original(app, subject="Invoice 42")
    inline = client.post(f"/emails/{original_id}/forward", headers=AUTH,
                         json={"to": ["Bob <bob@example.net>"], "text": "FYI"})
    attached = client.post(f"/emails/{original_id}/forward", headers=AUTH,
                           json={"to": "bob@example.net", "cc": ["dan@example.net"], "as_attachment": True})
    assert inline.status_code == 202 and attached.status_code == 202
    sender = sender_of(app)
    sender.step()
    sender.step()
    first, second = starttls_relay.wait_for(2)
    forwarded = parsed(first)
    assert forwarded["Subject"] == "Fwd: Invoice 42"
    assert first.rcpt_tos == ["bob@example.net"]
    assert "---------- Forwarded message ----------" in forwarded.get_body(("plain",)).get_content()
    names = [part.get_filename() for part in forwarded.iter_attachments()]
    assert "sample.pdf" in names
    pdf = next(part for part in forwarded.iter_attachments() if part.get_filename() == "sample.pdf")
    assert pdf.get_content().startswith(b"%PDF-1.4")

    wrapper = parsed(second)
    assert sorted(second.rcpt_tos) == ["bob@example.net", "dan@example.net"]
    [eml] = [part for part in wrapper.iter_attachments()]
    assert eml.get_content_type() == "message/rfc822"
    assert eml.get_filename() == "Invoice 42.eml"
    inner = eml.get_content()
    assert inner["Subject"] == "Invoice 42"
    assert any(part.get_filename() == "sample.pdf" for part in inner.iter_attachments())


def test_compose_with_bcc_keeps_bcc_out_of_every_header(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    response = client.post("/send", headers=AUTH, json={
        "from": "support@example.com", "to": ["x@example.net"], "cc": "y@example.net",
        "bcc": ["hidden@example.net"], "subject": "Hello", "text": "Body",
        "attachments": [{"filename": "notes.txt", "content_type": "text/plain", "content": "aGVsbG8="}]})
    assert response.status_code == 202, response.json
    sender_of(app).step()
    [delivery] = starttls_relay.wait_for(1)
    assert sorted(delivery.rcpt_tos) == ["hidden@example.net", "x@example.net", "y@example.net"]
    assert b"hidden" not in delivery.data
    message = parsed(delivery)
    assert [part.get_filename() for part in message.iter_attachments()] == ["notes.txt"]
    item = outbox_item(client, response.json["send_id"])
    assert item["bcc"] == ["hidden@example.net"]
    copy = app.extensions["archive"].find(item["archived_email_id"])
    assert [entry["email"] for entry in copy["bcc"]] == ["hidden@example.net"]
    stored = app.extensions["send_outbox"].sends.find_one({})
    assert "raw" not in stored and "copy_pending" not in stored  # the archive holds the copy now
    listed = client.get("/emails", headers=AUTH, query_string={"q": "in:sent"}).json
    assert [entry["id"] for entry in listed["emails"]] == [item["archived_email_id"]]


def wait_due(seconds: float) -> None:
    time.sleep(seconds)


def test_451_then_250_delivers_exactly_once(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    starttls_relay.behaviour.data_replies = ["451 4.3.0 Try again later"]
    send_id = client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": "x@example.net",
                                                       "subject": "S", "text": "T"}).json["send_id"]
    sender = sender_of(app)
    sender.step()
    item = outbox_item(client, send_id)
    assert item["status"] == "retrying" and item["last_reply"] == "451 4.3.0 Try again later"
    assert starttls_relay.deliveries == []
    assert sender.step() > 0  # not due yet: SEND_RETRY_SECONDS=1
    deadline = time.monotonic() + 10
    while outbox_item(client, send_id)["status"] != "sent" and time.monotonic() < deadline:
        sender.step()
        time.sleep(0.2)
    assert outbox_item(client, send_id)["attempts"] == 2
    assert len(starttls_relay.wait_for(1)) == 1
    sender.step()
    assert len(starttls_relay.deliveries) == 1


def test_550_fails_without_retry(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    starttls_relay.behaviour.data_replies = ["550 5.7.1 Message rejected as spam"]
    send_id = client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": "x@example.net",
                                                       "subject": "S", "text": "T"}).json["send_id"]
    sender = sender_of(app)
    sender.step()
    time.sleep(1.2)
    sender.step()
    item = outbox_item(client, send_id)
    assert item["status"] == "failed" and item["attempts"] == 1
    assert item["last_reply"] == "550 5.7.1 Message rejected as spam"
    assert starttls_relay.deliveries == []
    assert client.post(f"/outbox/{send_id}/cancel", headers=AUTH).status_code == 409


def test_one_of_three_recipients_refused(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    starttls_relay.behaviour.refuse = {"nobody@example.net"}
    send_id = client.post("/send", headers=AUTH, json={
        "from": "support@example.com", "to": ["a@example.net", "nobody@example.net", "b@example.net"],
        "subject": "S", "text": "T"}).json["send_id"]
    sender_of(app).step()
    [delivery] = starttls_relay.wait_for(1)
    assert delivery.rcpt_tos == ["a@example.net", "b@example.net"]
    item = outbox_item(client, send_id)
    assert item["status"] == "sent"
    assert list(item["refused"]) == ["nobody@example.net"]
    assert item["refused"]["nobody@example.net"].startswith("550 5.1.1")


def test_connection_dropped_after_data_is_unknown_and_resent_only_on_request(starttls_relay, make_sending_app):
    app = make_sending_app(starttls_relay)
    client = app.test_client()
    starttls_relay.behaviour.drop_after_data = 1
    send_id = client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": "x@example.net",
                                                       "subject": "S", "text": "T"}).json["send_id"]
    sender = sender_of(app)
    sender.step()
    item = outbox_item(client, send_id)
    assert item["status"] == "unknown", item
    assert "may or may not have been delivered" in item["last_reply"]
    assert len(starttls_relay.deliveries) == 1
    time.sleep(1.5)
    for _ in range(3):
        sender.step()
    assert len(starttls_relay.deliveries) == 1
    assert outbox_item(client, send_id)["status"] == "unknown"

    retried = client.post(f"/outbox/{send_id}/retry", headers=AUTH)
    assert retried.status_code == 200 and retried.json["send"]["status"] == "queued"
    sender.step()
    assert len(starttls_relay.wait_for(2)) == 2
    assert outbox_item(client, send_id)["status"] == "sent"
    assert client.post(f"/outbox/{send_id}/retry", headers=AUTH).status_code == 409


def test_relay_down_while_sends_queue_then_up(certificates, make_sending_app):
    relay = Relay(certificates, mode="starttls")  # not started: nothing listens on its port
    app = make_sending_app(relay)
    client = app.test_client()
    ids = [client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": f"p{n}@example.net",
                                                    "subject": f"S{n}", "text": "T"}).json["send_id"]
           for n in range(3)]
    sender = sender_of(app)
    for _ in range(3):
        sender.step()
    states = [outbox_item(client, send_id) for send_id in ids]
    assert {item["status"] for item in states} == {"retrying"}
    assert all("could not reach" in item["last_reply"] for item in states)
    relay.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(outbox_item(client, i)["status"] != "sent" for i in ids):
            sender.step()
            time.sleep(0.2)
        assert [outbox_item(client, i)["status"] for i in ids] == ["sent"] * 3
        assert sorted(d.rcpt_tos[0] for d in relay.deliveries) == ["p0@example.net", "p1@example.net",
                                                                   "p2@example.net"]
    finally:
        relay.stop()


def test_an_untrusted_certificate_is_never_accepted(starttls_relay, make_secantus_app, certificates):
    env = sending_env(starttls_relay, certificates)
    del env["SMTP_CA_FILE"]
    app = make_secantus_app(**env)
    client = app.test_client()
    send_id = client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": "x@example.net",
                                                       "subject": "S", "text": "T"}).json["send_id"]
    sender_of(app).step()
    item = outbox_item(client, send_id)
    assert item["status"] == "retrying" and "certificate" in item["last_reply"]
    assert starttls_relay.deliveries == []


def test_cli_check_send_test_and_outbox_commands(starttls_relay, make_sending_app, make_secantus_app, certificates):
    app = make_sending_app(starttls_relay)
    runner = app.test_cli_runner()
    checked = runner.invoke(args=["check"])
    assert checked.exit_code == 0, checked.output
    assert "certificate verified, login ok" in checked.output
    tested = runner.invoke(args=["send-test", "--to", "owner@example.net"])
    assert tested.exit_code == 0, tested.output
    [delivery] = starttls_relay.wait_for(1)
    assert delivery.rcpt_tos == ["owner@example.net"] and delivery.mail_from == "support@example.com"

    starttls_relay.behaviour.data_replies = ["550 5.7.1 no"]
    send_id = app.test_client().post("/send", headers=AUTH, json={
        "from": "support@example.com", "to": "x@example.net", "subject": "S", "text": "T"}).json["send_id"]
    sender_of(app).step()
    status = runner.invoke(args=["outbox", "status"])
    assert "1 failed" in status.output and send_id in status.output and "550 5.7.1 no" in status.output
    assert runner.invoke(args=["outbox", "cancel", send_id]).exit_code == 1
    assert runner.invoke(args=["outbox", "retry", send_id]).exit_code == 0
    sender_of(app).step()
    assert outbox_item(app.test_client(), send_id)["status"] == "sent"

    wrong = sending_env(starttls_relay, certificates, SMTP_PASSWORD="wrong-password-1")
    failing = make_secantus_app(**wrong).test_cli_runner().invoke(args=["check"])
    assert failing.exit_code == 4 and "login refused" in failing.output
    assert "wrong-password-1" not in failing.output


def test_mongodb_down_while_queuing_answers_503_and_queues_nothing(tmp_path, make_app, certificates, starttls_relay):
    from pymongo import MongoClient

    from devtools import processes
    from tests.conftest import make_settings
    from improvmx_archive import create_app

    server = processes.secantus(tmp_path / "db").start()
    try:
        uri = processes.mongo_uri(server.port)
        env = sending_env(starttls_relay, certificates, MONGO_URI=uri, MONGO_DB="down", MONGO_TIMEOUT_MS="800")
        client = MongoClient(uri, serverSelectionTimeoutMS=800, tz_aware=True)
        app = create_app(make_settings(tmp_path, **env), mongo_client=client)
        http = app.test_client()
        body = {"from": "support@example.com", "to": "x@example.net", "subject": "S", "text": "T"}
        assert http.post("/send", headers=AUTH, json=body).status_code == 202
        server.stop()
        refused = http.post("/send", headers=AUTH, json=body)
        assert refused.status_code == 503 and "nothing was queued" in refused.json["error"]
        assert refused.headers["Retry-After"] == "30"
        server = processes.secantus(tmp_path / "db", port=server.port).start()
        outbox = app.extensions["send_outbox"]
        assert outbox.sends.count_documents({}) == 1
        assert outbox.used_today() == 1
        assert http.post("/send", headers=AUTH, json=body).status_code == 202
    finally:
        server.stop()


def test_a_refused_login_fails_the_send_and_shows_why_without_the_password(starttls_relay, make_secantus_app,
                                                                          certificates):
    app = make_secantus_app(**sending_env(starttls_relay, certificates, SMTP_PASSWORD="not-the-password"))
    client = app.test_client()
    send_id = client.post("/send", headers=AUTH, json={"from": "support@example.com", "to": "x@example.net",
                                                       "subject": "S", "text": "T"}).json["send_id"]
    sender_of(app).step()
    item = outbox_item(client, send_id)
    assert item["status"] == "failed" and item["last_reply"].startswith("login refused: 535")
    assert "not-the-password" not in json.dumps(item)
    assert starttls_relay.deliveries == []
