"""The sending API's refusals (before anything is queued), permissions and composing rules,
on mongomock; delivery itself is tested against a real relay in tests/integration."""

from __future__ import annotations

import base64
import email
from email import policy

import pytest
from pymongo.errors import AutoReconnect

from improvmx_archive.outbound import compose
from improvmx_archive.outbound.outbox import COLLECTION
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SENDING = {"SMTP_HOST": "127.0.0.1", "SMTP_SECURITY": "starttls", "SMTP_USERNAME": "support@example.com",
           "SMTP_PASSWORD": "relay-password-123", "DOMINIO": "example.com", "RATELIMIT_ENABLED": "false"}


@pytest.fixture
def app(make_app):
    return make_app(**SENDING)


@pytest.fixture
def client(app):
    return app.test_client()


def queued(app) -> int:
    return app.extensions["database"][COLLECTION].count_documents({})


def store(app, recipient="support@example.com", subject="Question") -> str:
    raw = b"Cc: Carol <carol@example.net>, sales@example.com\r\n" + sample_mime(recipient=recipient, subject=subject)
    return app.extensions["archive"].ingest(payload_from_mime(raw)).email_id


def compose_body(**changes):
    body = {"from": "support@example.com", "to": ["x@example.net"], "subject": "Hello", "text": "Body"}
    body.update(changes)
    return body


def person_key(app, grants, scopes=("read", "send")):
    people, keys = app.extensions["people"], app.extensions["keys"]
    person = people.add("Maria", "maria@example.com")
    people.grant("Maria", grants)
    token, _ = keys.create(str(person["_id"]), "laptop", list(scopes))
    return {"Authorization": f"Bearer {token}"}, str(person["_id"])


def test_a_valid_send_answers_202_and_is_queued_durably(app, client):
    response = client.post("/send", headers=AUTH, json=compose_body())
    assert response.status_code == 202
    assert set(response.json) == {"success", "send_id", "message_id", "status"}
    assert response.json["message_id"].endswith("@example.com>")
    stored = app.extensions["database"][COLLECTION].find_one()
    assert stored["status"] == "queued" and stored["message_id"] == response.json["message_id"]
    raw = bytes(stored["raw"])
    assert f"Message-ID: {response.json['message_id']}".encode() in raw
    assert b"relay-password-123" not in raw and "relay-password-123" not in repr(stored)


INJECTED = "x@example.net\r\nBcc: victim@example.org"


@pytest.mark.parametrize("field, value", [
    ("from", "support@example.com\r\nBcc: victim@example.org"),
    ("to", [INJECTED]), ("cc", [INJECTED]), ("bcc", [INJECTED]), ("to", "x@example.net\nX-Evil: 1"),
    ("subject", "Hello\r\nBcc: victim@example.org"), ("subject", "Hello\x00"),
])
def test_header_injection_is_refused_in_every_field(app, client, field, value):
    response = client.post("/send", headers=AUTH, json=compose_body(**{field: value}))
    assert response.status_code == 400, response.json
    assert "line breaks" in response.json["error"]
    assert queued(app) == 0


def test_header_injection_in_an_attachment_name_and_forward_fields(app, client):
    attachment = {"filename": "a.txt\r\nBcc: v@example.org", "content_type": "text/plain", "content": "aGk="}
    assert client.post("/send", headers=AUTH, json=compose_body(attachments=[attachment])).status_code == 400
    email_id = store(app)
    assert client.post(f"/emails/{email_id}/forward", headers=AUTH, json={"to": [INJECTED]}).status_code == 400
    assert client.post(f"/emails/{email_id}/forward", headers=AUTH,
                       json={"to": "x@example.net", "cc": INJECTED}).status_code == 400
    assert client.post(f"/emails/{email_id}/forward", headers=AUTH,
                       json={"to": "x@example.net", "from": "support@example.com\nBcc: v@x.org"}).status_code == 400
    assert queued(app) == 0


def test_a_foreign_from_is_refused(app, client):
    response = client.post("/send", headers=AUTH, json=compose_body(**{"from": "ceo@bank.example"}))
    assert response.status_code == 403 and "alias of example.com" in response.json["error"]
    assert queued(app) == 0


def test_51_recipients_are_refused_50_are_not(app, client):
    many = [f"r{n}@example.net" for n in range(51)]
    response = client.post("/send", headers=AUTH, json=compose_body(to=many[:30], cc=many[30:40], bcc=many[40:]))
    assert response.status_code == 400 and "at most 50 recipients" in response.json["error"]
    assert queued(app) == 0
    assert client.post("/send", headers=AUTH, json=compose_body(to=many[:50])).status_code == 202


def test_the_daily_limit_refuses_with_429(make_app):
    app = make_app(**SENDING, SEND_DAILY_LIMIT="2")
    client = app.test_client()
    assert [client.post("/send", headers=AUTH, json=compose_body()).status_code for _ in range(3)] == [202, 202, 429]
    response = client.post("/send", headers=AUTH, json=compose_body())
    assert "00:00 UTC" in response.json["error"]
    assert queued(app) == 2


def test_an_attachment_past_the_size_limit_is_413(make_app):
    app = make_app(**SENDING, SEND_MAX_MB="0.01")
    big = base64.b64encode(b"x" * 20_000).decode()
    response = app.test_client().post("/send", headers=AUTH, json=compose_body(
        attachments=[{"filename": "big.bin", "content_type": "application/octet-stream", "content": big}]))
    assert response.status_code == 413
    assert queued(app) == 0


def test_sending_is_off_until_credentials_are_set(make_app):
    app = make_app(DOMINIO="example.com")
    response = app.test_client().post("/send", headers=AUTH, json=compose_body())
    assert response.status_code == 409 and "not configured" in response.json["error"]
    assert queued(app) == 0


def test_mongodb_unavailable_while_queuing_is_503_and_nothing_half_queued(app, client, monkeypatch):
    outbox = app.extensions["send_outbox"]

    def down(*args, **kwargs):
        raise AutoReconnect("connection refused")

    monkeypatch.setattr(outbox.sends, "insert_one", down)
    response = client.post("/send", headers=AUTH, json=compose_body())
    assert response.status_code == 503 and "nothing was queued" in response.json["error"]
    assert queued(app) == 0
    assert outbox.used_today() == 0  # the quota taken for it was given back


def test_a_member_sends_only_as_granted_aliases_and_answers_only_what_they_see(app, client):
    headers, _ = person_key(app, ["support@example.com"])
    assert client.post("/send", headers=headers, json=compose_body()).status_code == 202
    refused = client.post("/send", headers=headers, json=compose_body(**{"from": "billing@example.com"}))
    assert refused.status_code == 403 and "may not send as" in refused.json["error"]
    hidden = store(app, recipient="billing@example.com")
    assert client.post(f"/emails/{hidden}/reply", headers=headers, json={"text": "x"}).status_code == 404
    assert client.post(f"/emails/{hidden}/forward", headers=headers, json={"to": "x@example.net"}).status_code == 404
    assert client.get(f"/emails/{hidden}/thread", headers=headers).status_code == 404
    visible = store(app)
    assert client.post(f"/emails/{visible}/reply", headers=headers, json={"text": "x"}).status_code == 202


def test_a_member_sees_only_their_own_sends(app, client):
    headers, _ = person_key(app, ["support@example.com"])
    mine = client.post("/send", headers=headers, json=compose_body()).json["send_id"]
    operators = client.post("/send", headers=AUTH, json=compose_body()).json["send_id"]
    listed = client.get("/outbox", headers=headers).json
    assert [item["send_id"] for item in listed["sends"]] == [mine]
    assert client.get(f"/outbox/{operators}", headers=headers).status_code == 404
    assert client.post(f"/outbox/{operators}/cancel", headers=headers).status_code == 404
    assert {item["send_id"] for item in client.get("/outbox", headers=AUTH).json["sends"]} == {mine, operators}


def test_a_key_without_the_send_scope_cannot_send(app, client):
    headers, _ = person_key(app, ["support@example.com"], scopes=("read",))
    response = client.post("/send", headers=headers, json=compose_body())
    assert response.status_code == 403 and "'send' scope" in response.json["error"]


def test_cancel_a_queued_send_then_it_cannot_be_cancelled_again(app, client):
    send_id = client.post("/send", headers=AUTH, json=compose_body()).json["send_id"]
    response = client.post(f"/outbox/{send_id}/cancel", headers=AUTH)
    assert response.status_code == 200 and response.json["send"]["status"] == "cancelled"
    assert client.post(f"/outbox/{send_id}/cancel", headers=AUTH).status_code == 409
    assert client.post(f"/outbox/{send_id}/retry", headers=AUTH).status_code == 409
    assert client.post("/outbox/nope/retry", headers=AUTH).status_code == 404


def test_reply_subject_and_threading_headers():
    assert compose.reply_subject("Re: RE: Fwd: Hello") == "Re: Hello"
    assert compose.reply_subject("Hello") == "Re: Hello"
    document = {"message-id": "<p@x>", "headers": {"In-Reply-To": "<q@x>"}}
    assert compose.threading_of(document) == ("<p@x>", ["<q@x>", "<p@x>"])
    document = {"message-id": "<p@x>", "headers": {"References": "<a@x>\r\n\t<b@x>", "In-Reply-To": "<b@x>"}}
    assert compose.threading_of(document) == ("<p@x>", ["<a@x>", "<b@x>", "<p@x>"])


def test_reply_all_drops_our_aliases_and_duplicates():
    document = {"from": {"name": "Alice", "email": "alice@example.org"},
                "to": [{"email": "support@example.com"}, {"email": "Alice@example.org"}, {"email": "bob@example.net"}],
                "cc": [{"email": "bob@example.net"}, {"email": "sales@example.com"}]}
    to, cc = compose.reply_addresses(document, ("example.com",), True)
    assert to == ["Alice <alice@example.org>"] and cc == ["bob@example.net"]


def test_quoted_html_goes_through_the_ui_sanitiser():
    document = {"from": {"email": "a@example.org"}, "text": "hi",
                "html": '<p onclick="x()">hi<script>alert(1)</script><img src="javascript:x"></p>'}
    html = compose.reply_html("<b>ok</b><script>bad()</script>", "ok", document)
    assert "<script" not in html and "onclick" not in html and "javascript:" not in html
    assert "<b>ok</b>" in html and "<blockquote" in html


def test_the_built_message_is_what_the_draft_says():
    built = compose.build(compose.Draft(sender="support@example.com", to=["Bob <bob@example.net>"],
                                        bcc=["hidden@example.net"], subject="Hi", text="Body"),
                          max_bytes=10 ** 6)
    message = email.message_from_bytes(built.raw, policy=policy.default)
    assert message["Bcc"] is None and b"hidden" not in built.raw
    assert built.recipients == ["bob@example.net", "hidden@example.net"]
    assert message["Message-ID"] == built.message_id


def test_any_family_falls_back_to_ipv4_and_ipv6_only_does_not():
    import socket

    from improvmx_archive.outbound.smtp import connect_socket

    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        connected = connect_socket("localhost", port, "any", 1.0, 5.0)
        assert connected.family == socket.AF_INET
        connected.close()
        with pytest.raises(OSError):
            connect_socket("127.0.0.1", port, "ipv6", 1.0, 5.0)
    finally:
        listener.close()


def test_passwords_stay_out_of_settings_repr(tmp_path):
    from tests.conftest import make_settings
    settings = make_settings(tmp_path, **SENDING)
    assert "relay-password-123" not in repr(settings)


def test_sends_retries_and_cancels_are_in_the_audit_trail(app, client):
    email_id = store(app)
    send_id = client.post(f"/emails/{email_id}/reply", headers=AUTH, json={"text": "x"}).json["send_id"]
    assert client.post(f"/outbox/{send_id}/cancel", headers=AUTH).status_code == 200
    trail = app.extensions["database"]["audit_trail"]
    entries = [(e["action"], e.get("details")) for e in trail.find({"action": {"$regex": "^send"}}).sort("_id", 1)]
    assert entries[0][0] == "send" and entries[0][1]["send_id"] == send_id and entries[0][1]["kind"] == "reply"
    assert entries[1] == ("send_cancel", {"send_id": send_id, "was": "queued"})
    sent = trail.find_one({"action": "send"})
    assert sent["email_ids"] == [email_id]
