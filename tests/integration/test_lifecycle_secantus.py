"""Delete, tombstones, hold, purge and retention on a real MongoDB-protocol server (SecantusDB).

Shared attachments must survive for the messages still using them, concurrent deletes and
an ingest racing a delete must never leave a message without its bytes, and a deleted
message must not come back through a retry or a spool replay.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from improvmx_archive import metrics
from improvmx_archive.archive import Archive
from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.lease import Lease
from improvmx_archive.maintenance import collect_orphans
from improvmx_archive.retention import Retention
from tests.payloads import message_with_attachment

pytestmark = pytest.mark.slow

# Parts over parts.INLINE_PART_LIMIT (256 KiB) live in GridFS, where sharing and release matter.
GRIDFS_SIZE = 300_000
SHARED = os.urandom(GRIDFS_SIZE)


@pytest.fixture
def archive(secantus_app) -> Archive:
    return secantus_app.extensions["archive"]


@pytest.fixture
def client(secantus_app):
    return secantus_app.test_client()


def store(client, subject: str, data: bytes = SHARED) -> str:
    response = client.post("/webhook", json=message_with_attachment(data, subject=subject))
    assert response.status_code == 200 and response.get_json()["duplicate"] is False
    return response.get_json()["email_id"]


def blob_count(archive) -> int:
    return archive.database["blobs.files"].count_documents({})


def chunk_owners(archive) -> set:
    return set(archive.database["blobs.chunks"].distinct("files_id"))


def downloads(client, auth, email_id: str, data: bytes = SHARED) -> bool:
    response = client.get(f"/emails/{email_id}/attachments/0", headers=auth)
    return response.status_code == 200 and response.data == data


def test_delete_keeps_shared_blobs_for_the_messages_still_using_them(archive, client, auth):
    first, second = store(client, "first"), store(client, "second")
    own = store(client, "own", os.urandom(GRIDFS_SIZE))
    blobs = blob_count(archive)

    assert client.delete(f"/emails/{first}", headers=auth).get_json() == {"success": True, "id": first,
                                                                          "deleted": True}
    assert client.get(f"/emails/{first}", headers=auth).status_code == 404
    assert downloads(client, auth, second)
    assert blob_count(archive) == blobs

    assert client.delete(f"/emails/{own}", headers=auth).status_code == 200
    assert blob_count(archive) == blobs - 1  # its attachment was its own: gone at once
    assert archive.database["blobs.files"].count_documents({}) == len(chunk_owners(archive))

    assert client.delete(f"/emails/{second}", headers=auth).status_code == 200
    # the shared blob was reused by an ingest within the grace period: the orphan sweep takes it
    collect_orphans(archive, grace=timedelta(0))
    assert blob_count(archive) == 0 and chunk_owners(archive) == set()


@pytest.mark.parametrize("email_id", ["0123456789abcdef01234567", "not-an-id", "6b0e" * 5])
def test_unknown_or_malformed_id_is_404(client, auth, email_id):
    response = client.delete(f"/emails/{email_id}", headers=auth)
    assert (response.status_code, response.get_json()) == (404, {"success": False, "error": "Email not found"})


def test_delete_needs_the_key(client):
    assert client.delete("/emails/0123456789abcdef01234567").status_code == 401


def test_two_deletes_at_once_delete_once_and_break_nothing(secantus_app, archive, auth):
    client = secantus_app.test_client()
    target, keeper = store(client, "target"), store(client, "keeper")
    barrier, statuses = threading.Barrier(4), []

    def delete():
        own = secantus_app.test_client()
        barrier.wait()
        statuses.append(own.delete(f"/emails/{target}", headers=auth).status_code)

    threads = [threading.Thread(target=delete) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 404, 404, 404]
    assert downloads(client, auth, keeper)


def test_deleting_the_last_two_users_of_a_blob_at_once_leaves_no_dangling_reference(secantus_app, archive, auth):
    client = secantus_app.test_client()
    other_data = os.urandom(GRIDFS_SIZE)
    other = store(client, "other", other_data)
    data = os.urandom(GRIDFS_SIZE)
    pair = [store(client, "p1", data), store(client, "p2", data)]
    barrier = threading.Barrier(2)

    def delete(email_id):
        barrier.wait()
        assert archive.deleter.delete(email_id)

    threads = [threading.Thread(target=delete, args=(email_id,)) for email_id in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    collect_orphans(archive, grace=timedelta(0))
    assert downloads(client, auth, other, other_data)
    referenced = {blob for doc in archive.emails.find({}, {"blob_ids": 1}) for blob in doc["blob_ids"]}
    stored = {doc["_id"] for doc in archive.database["blobs.files"].find({}, {"_id": 1})}
    assert referenced <= stored and stored == referenced


def test_an_ingest_reusing_a_blob_while_its_last_user_is_deleted_keeps_its_bytes(archive, client, auth, monkeypatch):
    victim = store(client, "victim")
    real_document = Archive._document

    def delete_mid_ingest(self, *args, **kwargs):
        # the reusing ingest has stamped the blob (BlobStore.reuse) but not inserted yet
        assert self.deleter.delete(victim)
        return real_document(self, *args, **kwargs)

    monkeypatch.setattr(Archive, "_document", delete_mid_ingest)
    survivor = store(client, "survivor")
    monkeypatch.undo()
    assert client.get(f"/emails/{victim}", headers=auth).status_code == 404
    assert downloads(client, auth, survivor)
    collect_orphans(archive, grace=timedelta(0))
    assert downloads(client, auth, survivor)


def test_a_retry_or_replay_of_a_deleted_message_is_acknowledged_and_not_stored(secantus_app, archive, client, auth):
    payload = message_with_attachment(SHARED, subject="comes back?")
    email_id = client.post("/webhook", json=payload).get_json()["email_id"]
    assert client.delete(f"/emails/{email_id}", headers=auth).status_code == 200

    retry = client.post("/webhook", json=payload)
    assert retry.status_code == 200
    assert retry.get_json() == {"success": True, "message": "Email was deleted; not stored again",
                                "email_id": email_id, "duplicate": False, "deleted": True}
    text_only = {"subject": "no parts", "text": "hi", "to": [{"email": "x@archive.test"}]}
    plain_id = client.post("/webhook", json=text_only).get_json()["email_id"]
    assert client.delete(f"/emails/{plain_id}", headers=auth).status_code == 200
    assert client.post("/webhook", json=text_only).get_json()["deleted"] is True

    spool = secantus_app.extensions["spool"]
    spool.put(payload)
    report = spool.replay(archive)
    assert report.duplicates and not report.stored
    assert archive.emails.count_documents({}) == 0
    assert blob_count(archive) == len(chunk_owners(archive))

    archive.database.tombstones.update_many({}, {"$set": {"expires_at": datetime.now(timezone.utc)}})
    again = client.post("/webhook", json=payload).get_json()
    assert again["duplicate"] is False and "deleted" not in again  # tombstone expired: stored anew
    assert downloads(client, auth, again["email_id"])


def test_a_held_message_cannot_be_deleted_until_released(client, auth):
    email_id = store(client, "keep me")
    held = client.patch(f"/emails/{email_id}", json={"hold": True}, headers=auth).get_json()
    assert held == {"success": True, "id": email_id, "processed": False, "processed_at": None, "hold": True}
    refused = client.delete(f"/emails/{email_id}", headers=auth)
    assert refused.status_code == 409 and "on hold" in refused.get_json()["error"]
    both = client.patch(f"/emails/{email_id}", json={"processed": True, "hold": False}, headers=auth).get_json()
    assert both["processed"] is True and both["hold"] is False
    assert client.delete(f"/emails/{email_id}", headers=auth).status_code == 200


def _aged(archive, subject: str, days: float, *, processed: bool = False, hold: bool = False) -> str:
    payload = message_with_attachment(os.urandom(GRIDFS_SIZE), subject=subject)
    result = archive.ingest(payload, received_at=datetime.now(timezone.utc) - timedelta(days=days))
    archive.durable_emails.update_one({"_id": ObjectId(result.email_id)}, {"$set": {"processed": processed,
                                                                                   "hold": hold}})
    return result.email_id


def test_purge_reports_without_yes_and_deletes_with_it(secantus_app, archive):
    old = [_aged(archive, f"old {n}", 100) for n in range(3)]
    held = _aged(archive, "old but held", 100, hold=True)
    recent = _aged(archive, "recent", 1)
    runner = secantus_app.test_cli_runner()
    cutoff = (datetime.now(timezone.utc) - timedelta(days=30)).strftime("%Y-%m-%d")

    for dry in (["--before", cutoff], ["--before", cutoff, "--dry-run", "--yes"]):
        report = runner.invoke(args=["purge", *dry])
        assert report.exit_code == 0, report.output
        assert "3 message(s) to delete; 1 on hold kept" in report.output
        assert report.output.count("would delete") == 3 and "nothing deleted" in report.output
        assert archive.emails.count_documents({}) == 5

    done = runner.invoke(args=["purge", "--before", cutoff, "--yes"])
    assert done.exit_code == 0, done.output
    assert sorted(line.split()[1] for line in done.output.splitlines() if line.startswith("deleted ")) == sorted(old)
    assert "ok: deleted 3 message(s); 1 on hold kept" in done.output
    assert {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})} == {held, recent}
    assert archive.database.tombstones.count_documents({}) == 3
    assert runner.invoke(args=["purge", "--before", cutoff, "--yes"]).output.startswith("0 message(s)")
    assert runner.invoke(args=["purge"]).exit_code == 2


def test_purge_by_search_deletes_only_what_the_search_finds(secantus_app, archive):
    doomed = [_aged(archive, f"newsletter issue {n}", 2) for n in range(2)]
    kept = _aged(archive, "invoice 42", 2)
    old_newsletter = _aged(archive, "newsletter from long ago", 90)
    SearchIndexer(archive).index_pending()  # the background indexer is off here
    runner = secantus_app.test_cli_runner()
    cutoff = (datetime.now(timezone.utc) - timedelta(days=30)).strftime("%Y-%m-%d")
    assert "1 message(s) to delete" in runner.invoke(args=["purge", "--q", "newsletter", "--before", cutoff]).output
    done = runner.invoke(args=["purge", "--q", "subject:newsletter", "--yes"])
    assert done.exit_code == 0, done.output
    assert "ok: deleted 3 message(s)" in done.output
    assert {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})} == {kept}
    assert not set(doomed + [old_newsletter]) & {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})}
    bad = runner.invoke(args=["purge", "--q", "before:notadate"])
    assert bad.exit_code == 2 and "--q:" in bad.output


def test_retention_deletes_old_mail_but_not_held_or_unprocessed_when_asked(secantus_app, archive, auth,
                                                                           make_secantus_app):
    old_done = _aged(archive, "old processed", 40, processed=True)
    old_open = _aged(archive, "old unprocessed", 40)
    old_held = _aged(archive, "old held", 40, processed=True, hold=True)
    young = _aged(archive, "young", 5, processed=True)
    before = metrics.RETENTION_DELETED._value.get()

    keep_open = Retention(archive, Lease(archive.database, "retention"), 30, True, 3600)
    keep_open.run_if_due(lambda: False)
    assert {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})} == {old_open, old_held, young}
    assert old_done not in {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})}
    keep_open.run_if_due(lambda: False)  # within the interval: no second pass
    assert archive.database.retention_runs.count_documents({}) == 1

    archive.database.maintenance_leases.delete_many({})
    Retention(archive, Lease(archive.database, "retention"), 30, False, 3600).run_if_due(lambda: False)
    assert {str(d["_id"]) for d in archive.emails.find({}, {"_id": 1})} == {old_held, young}
    assert metrics.RETENTION_DELETED._value.get() - before == 2
    assert archive.database.tombstones.count_documents({}) == 0
    assert archive.database["blobs.files"].count_documents({}) == 2

    assert secantus_app.test_client().get("/", headers=auth).get_json()["retention"]["days"] is None
    with_retention = make_secantus_app(RATELIMIT_ENABLED="false", RETENTION_DAYS="30")
    health = with_retention.test_client().get("/", headers=auth).get_json()["retention"]
    assert health["days"] == 30 and health["last_deleted"] == 1  # the second pass: old_open
    assert datetime.fromisoformat(health["last_run_at"]) > datetime.now(timezone.utc) - timedelta(minutes=1)
