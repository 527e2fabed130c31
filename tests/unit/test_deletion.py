"""DELETE, hold and tombstones through the API on mongomock (SecantusDB runs the races:
tests/integration/test_lifecycle_secantus.py)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from improvmx_archive.config import ConfigError
from improvmx_archive.sample import sample_mime
from tests.conftest import make_settings
from tests.payloads import message_with_attachment


@pytest.fixture
def stored(client) -> str:
    """A message whose attachment is large enough to live in GridFS."""
    return client.post("/webhook", json=message_with_attachment(os.urandom(300_000))).get_json()["email_id"]


def test_delete_removes_the_message_and_its_own_blobs(app, client, auth, stored):
    database = app.extensions["database"]
    assert database["blobs.files"].count_documents({}) > 0
    assert client.delete(f"/emails/{stored}", headers=auth).get_json() == {"success": True, "id": stored,
                                                                           "deleted": True}
    assert client.get(f"/emails/{stored}", headers=auth).status_code == 404
    assert database["blobs.files"].count_documents({}) == 0 and database["blobs.chunks"].count_documents({}) == 0
    assert client.delete(f"/emails/{stored}", headers=auth).status_code == 404


def test_a_retry_after_delete_is_acknowledged_and_not_stored(app, client, auth, sample_payload):
    stored = client.post("/webhook", json=sample_payload).get_json()["email_id"]
    client.delete(f"/emails/{stored}", headers=auth)
    retry = client.post("/webhook", json=sample_payload)
    assert retry.status_code == 200 and retry.get_json()["deleted"] is True
    assert retry.get_json()["email_id"] == stored
    assert app.extensions["database"].emails.count_documents({}) == 0


def test_an_import_of_a_deleted_message_is_not_stored_again(app, client, auth):
    raw = sample_mime()
    imported = client.post("/import", data=raw, content_type="message/rfc822", headers=auth).get_json()
    client.delete(f"/emails/{imported['email_id']}", headers=auth)
    again = client.post("/import", data=raw, content_type="message/rfc822", headers=auth)
    assert again.status_code == 200 and again.get_json()["deleted"] is True
    assert app.extensions["database"].emails.count_documents({}) == 0


def test_the_tombstone_lasts_delete_tombstone_days(make_app, sample_payload, auth):
    app = make_app(RATELIMIT_ENABLED="false", DELETE_TOMBSTONE_DAYS="2")
    client = app.test_client()
    email_id = client.post("/webhook", json=sample_payload).get_json()["email_id"]
    client.delete(f"/emails/{email_id}", headers=auth)
    tombstone = app.extensions["database"].tombstones.find_one({})
    assert tombstone["expires_at"] - tombstone["deleted_at"] == timedelta(days=2)


def test_hold_blocks_delete_until_released(client, auth, stored):
    assert client.patch(f"/emails/{stored}", json={"hold": True}, headers=auth).get_json()["hold"] is True
    refused = client.delete(f"/emails/{stored}", headers=auth)
    assert refused.status_code == 409
    assert refused.get_json() == {"success": False,
                                  "error": 'Email is on hold; release it first with PATCH {"hold": false}'}
    assert client.get(f"/emails/{stored}", headers=auth).get_json()["email"]["hold"] is True
    assert client.patch(f"/emails/{stored}", json={"hold": False}, headers=auth).get_json()["hold"] is False
    assert client.delete(f"/emails/{stored}", headers=auth).status_code == 200


def test_patch_of_an_unknown_message_is_404(client, auth):
    assert client.patch("/emails/0123456789abcdef01234567", json={"hold": True}, headers=auth).status_code == 404


@pytest.mark.parametrize("name,value", [("RETENTION_DAYS", "-1"), ("RETENTION_DAYS", "forever"),
                                        ("DELETE_TOMBSTONE_DAYS", "0"), ("RETENTION_KEEP_UNPROCESSED", "maybe"),
                                        ("RETENTION_INTERVAL", "5")])
def test_lifecycle_settings_are_checked_at_start(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        make_settings(tmp_path, **{name: value})
