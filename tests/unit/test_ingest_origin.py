"""Archive.ingest records when and how a message arrived: imports keep the message's own date."""

from datetime import datetime, timezone

from improvmx_archive.sample import payload_from_mime, sample_mime


def test_webhook_ingest_is_received_now_from_the_webhook(app):
    archive = app.extensions["archive"]
    before = datetime.now(timezone.utc)
    result = archive.ingest(payload_from_mime(sample_mime()))
    stored = archive.emails.find_one({})
    assert stored["source"] == "webhook"
    assert stored["received_at"] >= before.replace(microsecond=0)
    assert archive.find(result.email_id)["source"] == "webhook"


def test_imported_message_keeps_the_given_date_and_source(app):
    archive = app.extensions["archive"]
    old = datetime(2019, 5, 1, 8, 30, tzinfo=timezone.utc)
    archive.ingest(payload_from_mime(sample_mime()), received_at=old, source="import")
    stored = archive.emails.find_one({})
    assert stored["source"] == "import"
    assert stored["received_at"] == old
