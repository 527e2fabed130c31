"""The UI's sending pages over the Flask test client: forms without script, CSRF on every
send, the same refusals as the API, the outbox with retry and cancel, the conversation."""

from __future__ import annotations

import io

import pytest

from improvmx_archive.outbound.outbox import COLLECTION
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.ui_helpers import csrf_token, page, post_form
from tests.unit.test_sending_api import SENDING


@pytest.fixture
def app(make_app):
    return make_app(**SENDING)


def store(app) -> str:
    raw = b"Cc: Carol <carol@example.net>\r\n" + sample_mime(recipient="support@example.com", subject="Order 7")
    return app.extensions["archive"].ingest(payload_from_mime(raw)).email_id


def sends(app):
    return list(app.extensions["database"][COLLECTION].find())


def test_the_message_page_offers_reply_reply_all_and_forward(app, ui):
    email_id = store(app)
    html = page(ui, f"/ui/emails/{email_id}")
    for link in (f"/ui/emails/{email_id}/reply", f"/ui/emails/{email_id}/reply?all=1", f"/ui/emails/{email_id}/forward"):
        assert f'href="{link}"' in html.replace("&amp;", "&")


def test_reply_all_form_shows_the_recipients_and_queues_on_post(app, ui):
    email_id = store(app)
    form = page(ui, f"/ui/emails/{email_id}/reply?all=1")
    assert "carol@example.net" in form and "Re: Order 7" in form
    response = post_form(ui, f"/ui/emails/{email_id}/reply", {"all": "1", "text": "On its way"},
                         page=f"/ui/emails/{email_id}/reply?all=1")
    assert response.status_code == 303
    [queued] = sends(app)
    assert queued["kind"] == "reply_all" and sorted(queued["recipients"]) == ["alice@example.org", "carol@example.net"]
    shown = page(ui, response.headers["Location"])
    assert "Queued" in shown and "Re: Order 7" in shown


def test_a_send_without_the_csrf_token_is_refused_and_nothing_queued(app, ui):
    email_id = store(app)
    response = ui.post(f"/ui/emails/{email_id}/reply", data={"text": "x"})
    assert response.status_code == 400
    assert sends(app) == []


def test_compose_with_an_attachment_and_a_refusal_shown_on_the_form(app, ui):
    token = csrf_token(ui, "/ui/compose")
    response = ui.post("/ui/compose", data={"csrf_token": token, "from": "ceo@bank.example", "to": "x@example.net",
                                            "subject": "S", "text": "T"})
    assert response.status_code == 403 and "alias of example.com" in response.get_data(as_text=True)
    assert sends(app) == []
    response = ui.post("/ui/compose", content_type="multipart/form-data", data={
        "csrf_token": token, "from": "support@example.com", "to": "x@example.net, y@example.net",
        "bcc": "z@example.net", "subject": "Hello", "text": "Body",
        "attachments": (io.BytesIO(b"%PDF-1.4"), "offer.pdf", "application/pdf")})
    assert response.status_code == 303
    [queued] = sends(app)
    assert queued["recipients"] == ["x@example.net", "y@example.net", "z@example.net"]
    assert b"offer.pdf" in bytes(queued["raw"]) and b"z@example.net" not in bytes(queued["raw"])


def test_outbox_retry_and_cancel_buttons(app, ui):
    token = csrf_token(ui, "/ui/compose")
    ui.post("/ui/compose", data={"csrf_token": token, "from": "support@example.com", "to": "x@example.net",
                                 "subject": "S", "text": "T"})
    [queued] = sends(app)
    send_id = str(queued["_id"])
    listing = page(ui, "/ui/outbox")
    assert f"/ui/outbox/{send_id}/cancel" in listing and f"/ui/outbox/{send_id}/retry" not in listing
    assert post_form(ui, f"/ui/outbox/{send_id}/cancel", {}, page="/ui/outbox").status_code == 303
    assert sends(app)[0]["status"] == "cancelled"
    again = post_form(ui, f"/ui/outbox/{send_id}/cancel", {}, page="/ui/outbox")
    assert again.status_code == 409


def test_sent_filter_and_the_conversation_on_the_message_page(app, ui):
    from improvmx_archive.outbound.service import archive_copy
    from improvmx_archive.outbound import compose
    email_id = store(app)
    original = app.extensions["archive"].find(email_id)
    in_reply_to, references = compose.threading_of(original)
    built = compose.build(compose.Draft(sender="support@example.com", to=["alice@example.org"], subject="Re: Order 7",
                                        text="Answer", in_reply_to=in_reply_to, references=references),
                          max_bytes=10 ** 6)
    copy_id = archive_copy(app.extensions["archive"], {"person_id": None}, built.raw)
    html = page(ui, f"/ui/emails/{email_id}")
    assert 'id="conversation"' in html and f"/ui/emails/{copy_id}" in html
    assert 'id="filter-sent"' in page(ui, "/ui/")
