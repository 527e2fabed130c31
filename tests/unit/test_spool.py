"""The spool's file handling, the outage path of the webhook, replay and the background task.

Everything here runs on mongomock and the local disk; the same paths over real processes
(gunicorn, SecantusDB killed and restarted) are in tests/integration/test_durability*.py.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mongomock
import pytest
from bson import ObjectId
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ProtocolError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)

from improvmx_archive.archive import IngestResult
from improvmx_archive.config import ConfigError
from improvmx_archive.db import DatabaseUnavailable, create_indexes
from improvmx_archive.lease import Lease
from improvmx_archive.maintenance import (
    Maintenance,
    collect_orphans,
    remove_partial_uploads,
)
from improvmx_archive.parts import INLINE_PART_LIMIT, KEEP_RECEIVED_LIMIT
from improvmx_archive.spool import ABANDONED_AFTER_SECONDS, Spool, SpoolUnavailable
from tests.conftest import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


class RecordingArchive:
    """Stands in for Archive: records what replay ingests, optionally failing or slow."""

    def __init__(self, fail_with: dict[str, Exception] | None = None, delay: float = 0.0,
                 record_to: Path | None = None):
        self.ingested: list[tuple[str, dict]] = []
        self.fail_with = fail_with or {}
        self.delay = delay
        self.record_to = record_to

    def ingest(self, payload, *, email_id: ObjectId, received_at=None):
        if str(email_id) in self.fail_with:
            raise self.fail_with[str(email_id)]
        time.sleep(self.delay)
        self.ingested.append((str(email_id), payload))
        if self.record_to:
            with open(self.record_to, "a") as handle:
                handle.write(f"{email_id}\n")
        return IngestResult(str(email_id), False)


def _unavailable(*args, **kwargs):
    raise DatabaseUnavailable("ServerSelectionTimeoutError")


class Down:
    """An archive whose database is unreachable."""

    def ingest(self, payload, *, email_id, received_at=None):
        _unavailable()


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool")


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# --- writing ------------------------------------------------------------------------------

def test_put_fsyncs_the_file_renames_it_then_fsyncs_the_directory(spool, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(source, target):
        events.append(("rename", Path(source).name, Path(target).name))
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    email_id = spool.put({"subject": "hello"})

    name = f"{email_id}.json"
    assert events == [
        ("fsync", str(spool.directory / f".{name}.tmp")),
        ("rename", f".{name}.tmp", name),
        ("fsync", str(spool.directory)),
    ]
    assert _files(spool.directory) == [name]
    assert stat.S_IMODE((spool.directory / name).stat().st_mode) == 0o600


def test_payload_round_trips_exactly_including_lone_surrogates(spool):
    payload = json.loads(r"""{"subject": "Grüße \ud83d\ude00 and a lone \udc80", "html": "<p>é</p>",
        "n": 1.5, "attachments": [{"name": "a.bin", "content": "AAEC", "type": null}],
        "headers": {"X-A": ["1", "2"]}}""")
    assert "\udc80" in payload["subject"]
    email_id = spool.put(payload)
    archive = RecordingArchive()
    spool.replay(archive)
    assert archive.ingested == [(str(email_id), payload)]
    assert spool.pending() == []


def test_status_reports_depth_bytes_and_oldest_age(spool):
    assert spool.status() == {"depth": 0, "bytes": 0, "oldest_age_seconds": None, "corrupt": 0}
    first = spool.put({"subject": "one"})
    spool.put({"subject": "two"})
    status = spool.status()
    assert status["depth"] == 2
    assert status["bytes"] == sum(p.stat().st_size for p in spool.pending())
    assert 0 <= status["oldest_age_seconds"] < 60
    assert [m.email_id for m in spool.messages()][0] == str(first)


@pytest.mark.parametrize("failing_call", ["mkdir", "open", "fsync", "rename"])
def test_a_disk_that_refuses_the_write_raises_and_leaves_nothing(spool, monkeypatch, caplog, failing_call):
    spool.directory.mkdir(parents=True)
    target = {"mkdir": (Path, "mkdir"), "open": (os, "open"), "fsync": (os, "fsync"),
              "rename": (os, "rename")}[failing_call]

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(*target, refuse)
    with pytest.raises(SpoolUnavailable):
        spool.put({"subject": "secret subject", "text": "secret body"})
    monkeypatch.undo()
    assert _files(spool.directory) == []
    assert "No space left on device" in caplog.text
    assert "secret" not in caplog.text


def test_a_real_write_beyond_the_file_size_limit_is_refused_cleanly(tmp_path):
    """A genuine kernel refusal (RLIMIT_FSIZE: EFBIG) in a child process, as with a full disk."""
    directory = tmp_path / "spool"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from improvmx_archive.spool import Spool, SpoolUnavailable
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            Spool({str(directory)!r}).put({{"subject": "big", "text": "x" * 100_000}})
        except SpoolUnavailable:
            sys.exit(42)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 42, result.stderr
    assert "spool write failed" in result.stderr
    assert _files(directory) == []


# --- replaying ----------------------------------------------------------------------------

def test_an_interrupted_write_is_never_replayed_and_is_cleaned_up_later(spool):
    done = spool.put({"subject": "complete"})
    fresh = spool.directory / f".{ObjectId()}.json.tmp"
    abandoned = spool.directory / f".{ObjectId()}.json.tmp"
    for partial in (fresh, abandoned):
        partial.write_text('{"subject": "cut sh')
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    os.utime(abandoned, (old, old))
    assert spool.status()["depth"] == 1

    archive = RecordingArchive()
    report = spool.replay(archive)
    assert [email_id for email_id, _ in archive.ingested] == [str(done)]
    assert report.stored == [str(done)] and report.corrupt == []
    assert fresh.exists() and not abandoned.exists()


def test_corrupt_files_are_set_aside_with_an_error_and_do_not_block_the_others(spool, caplog):
    first = spool.put({"subject": "first"})
    truncated = spool.directory / f"{ObjectId()}.json"
    truncated.write_text('{"subject": "trunc')
    not_an_object = spool.directory / f"{ObjectId()}.json"
    not_an_object.write_text("[1, 2, 3]")
    bad_utf8 = spool.directory / f"{ObjectId()}.json"
    bad_utf8.write_bytes(b'{"subject": "\xff\xfe"}')
    last = spool.put({"subject": "last"})

    archive = RecordingArchive()
    with caplog.at_level(logging.ERROR):
        report = spool.replay(archive)

    assert [email_id for email_id, _ in archive.ingested] == [str(first), str(last)]
    assert sorted(report.corrupt) == sorted(p.stem for p in (truncated, not_an_object, bad_utf8))
    assert sorted(_files(spool.corrupt_dir)) == sorted(p.name for p in (truncated, not_an_object, bad_utf8))
    assert spool.pending() == []
    assert spool.status()["corrupt"] == 3
    assert caplog.text.count("corrupt spool file moved to") == 3


def test_replay_stops_while_the_database_is_down_and_keeps_every_file(spool):
    ids = [str(spool.put({"subject": f"m{i}"})) for i in range(3)]
    report = spool.replay(Down())
    assert report.stopped_by_outage and report.moved == 0
    assert [p.stem for p in spool.pending()] == ids

    archive = RecordingArchive()
    report = spool.replay(archive)
    assert report.stored == ids and not report.stopped_by_outage
    assert spool.pending() == []


def test_a_message_that_fails_for_another_reason_stays_and_does_not_block_the_rest(spool, caplog):
    ids = [str(spool.put({"subject": f"m{i}", "text": "private words"})) for i in range(3)]
    archive = RecordingArchive(fail_with={ids[1]: WriteError("document failed validation", 121, {})})
    report = spool.replay(archive)
    assert report.stored == [ids[0], ids[2]] and report.failed == [ids[1]]
    assert [p.stem for p in spool.pending()] == [ids[1]]
    assert f"replay of spooled email_id={ids[1]} failed (WriteError)" in caplog.text
    assert "private words" not in caplog.text


def test_a_file_is_removed_only_after_its_message_is_stored(spool):
    email_id = str(spool.put({"subject": "x"}))
    seen_on_disk = []

    class Checking(RecordingArchive):
        def ingest(self, payload, *, email_id, received_at=None):
            seen_on_disk.append((spool.directory / f"{email_id}.json").exists())
            return super().ingest(payload, email_id=email_id)

    spool.replay(Checking())
    assert seen_on_disk == [True]
    assert not (spool.directory / f"{email_id}.json").exists()


def test_a_replayed_message_keeps_the_time_it_was_spooled_not_the_replay_time(spool, app, sample_payload):
    """Listings and retention must see mail that waited out an outage as received then."""
    spooled_at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=5)
    email_id = ObjectId.from_datetime(spooled_at)
    (spool.directory).mkdir(parents=True)
    (spool.directory / f"{email_id}.json").write_text(json.dumps(sample_payload))
    archive = app.extensions["archive"]
    report = spool.replay(archive)
    assert report.stored == [str(email_id)]
    stored = archive.emails.find_one({"_id": email_id})
    assert stored["received_at"].replace(tzinfo=timezone.utc) == spooled_at


def test_should_stop_ends_replay_between_files(spool):
    for i in range(3):
        spool.put({"subject": f"m{i}"})
    archive = RecordingArchive()
    report = spool.replay(archive, should_stop=lambda: len(archive.ingested) >= 1)
    assert report.moved == 1 and len(spool.pending()) == 2


@pytest.mark.parametrize("content", ['{"subject": "valid"}', "{corrupt"])
def test_a_file_another_replayer_finished_while_we_waited_is_skipped(spool, monkeypatch, content):
    """We opened the file, the other replayer stored it (or set it aside) before our lock."""
    path = spool.directory / f"{ObjectId()}.json"
    spool.directory.mkdir(parents=True)
    path.write_text(content)
    other_archive, real_flock, other_ran = RecordingArchive(), fcntl.flock, []

    def flock_after_the_other_replayer(fd, operation):
        if not other_ran:
            other_ran.append(True)
            Spool(spool.directory).replay(other_archive)
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_other_replayer)
    ours = RecordingArchive()
    report = spool.replay(ours)
    assert report.skipped == 1 and report.moved == 0 and report.corrupt == [] and report.failed == []
    assert ours.ingested == [] and len(other_archive.ingested) == (1 if content.startswith('{"') else 0)
    assert spool.pending() == []


def _replay_in_child(directory: str, record_to: str) -> None:
    Spool(Path(directory)).replay(RecordingArchive(delay=0.002, record_to=Path(record_to)))


def test_concurrent_replayers_in_threads_and_processes_ingest_each_file_once(spool, tmp_path, caplog):
    ids = {str(spool.put({"subject": f"m{i}"})) for i in range(120)}
    corrupt = {f"{ObjectId()}.json" for _ in range(5)}
    for name in corrupt:
        (spool.directory / name).write_text("{not json")
    record = tmp_path / "ingested.txt"
    record.touch()
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_replay_in_child, args=(str(spool.directory), str(record)))
                 for _ in range(2)]
    threads = [threading.Thread(target=_replay_in_child, args=(str(spool.directory), str(record)))
               for _ in range(3)]
    for worker in processes + threads:
        worker.start()
    for worker in processes + threads:
        worker.join(60)
    assert all(p.exitcode == 0 for p in processes)

    ingested = record.read_text().split()
    assert sorted(ingested) == sorted(ids)
    assert spool.pending() == []
    assert set(_files(spool.corrupt_dir)) == corrupt
    assert "failed" not in caplog.text


def test_the_replay_lock_admits_one_holder_at_a_time(spool):
    with spool.replay_lock() as first:
        with spool.replay_lock() as second:
            assert first is True and second is False
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_exit_with_lock_state, args=(str(spool.directory),))
        child.start()
        child.join(30)
        assert child.exitcode == 1
    with spool.replay_lock() as again:
        assert again is True


def _exit_with_lock_state(directory: str) -> None:
    with Spool(Path(directory)).replay_lock() as taken:
        os._exit(0 if taken else 1)


# --- with the real archive (mongomock) ----------------------------------------------------

def test_a_message_spooled_twice_and_stored_directly_ends_up_stored_once(app, client, sample_payload, auth):
    spool, archive = app.extensions["spool"], app.extensions["archive"]
    spooled_first = spool.put(sample_payload)
    spool.put({**sample_payload, "timestamp": 1_700_000_000})  # ImprovMX's retry, spooled too
    report = spool.replay(archive)
    assert report.stored == [str(spooled_first)] and len(report.duplicates) == 1
    direct = client.post("/webhook", json=sample_payload).get_json()
    assert direct["duplicate"] is True and direct["email_id"] == str(spooled_first)
    listed = client.get("/emails", headers=auth).get_json()
    assert listed["total"] == 1 and listed["emails"][0]["id"] == str(spooled_first)


# --- every way MongoDB fails during ingest reaches the spool ------------------------------

TRANSIENT_ERRORS = {
    "server selection timeout": ServerSelectionTimeoutError("No servers found yet"),
    "connection reset": AutoReconnect("connection reset by peer"),
    "network timeout": NetworkTimeout("timed out"),
    "not primary": NotPrimaryError("not primary", {"ok": 0, "code": 10107, "errmsg": "not primary"}),
    "write concern": WriteConcernError("waiting for replication timed out", 64, {}),
    "write concern timeout": WTimeoutError("wtimeout", 64, {}),
    "shutting down": OperationFailure("interrupted at shutdown", 11600),
    "host unreachable": OperationFailure("host unreachable", 6),
    "not writable primary as write error": WriteError("not writable primary", 10107, {}),
    "overloaded": OperationFailure("overloaded", 462, {"errorLabels": ["SystemOverloadedError", "RetryableError"]}),
    "retryable label": OperationFailure("retry me", 999_999, {"errorLabels": ["RetryableWriteError"]}),
    "corrupt reply": ProtocolError("message length is larger than the server max"),
}
FAILURE_POINTS = {
    "idempotency lookup": ("find_one", "emails"),
    "GridFS chunks": ("insert_many", "blobs.chunks"),
    "GridFS file entry": ("insert_one", "blobs.files"),
    "GridFS file entries, batched": ("insert_many", "blobs.files"),
    "message document": ("insert_one", "emails"),
}


@pytest.fixture
def gridfs_payload(sample_payload):
    """The sample with parts too large to ride in the message document, so that every write
    of an ingest happens: idempotency lookup, GridFS chunks, the file entry of the large PDF
    (too large to keep decoded: streamed) and the batched one of the image just over the
    inline limit, then the message."""
    sample_payload["attachments"][0]["content"] = base64.b64encode(os.urandom(KEEP_RECEIVED_LIMIT)).decode()
    sample_payload["inlines"][0]["content"] = base64.b64encode(os.urandom(INLINE_PART_LIMIT + 1)).decode()
    return sample_payload


def _fail_at(monkeypatch, method: str, collection: str, error: Exception) -> None:
    original = getattr(mongomock.collection.Collection, method)

    def failing(self, *args, **kwargs):
        if self.name == collection:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, method, failing)


@pytest.mark.parametrize("point", FAILURE_POINTS)
@pytest.mark.parametrize("error", TRANSIENT_ERRORS)
def test_every_transient_mongodb_failure_is_spooled_and_answered_202(app, client, auth, gridfs_payload,
                                                                      monkeypatch, point, error):
    _fail_at(monkeypatch, *FAILURE_POINTS[point], TRANSIENT_ERRORS[error])
    response = client.post("/webhook", json=gridfs_payload)
    assert response.status_code == 202, response.get_json()
    email_id = response.get_json()["email_id"]
    assert [p.stem for p in app.extensions["spool"].pending()] == [email_id]

    monkeypatch.undo()
    assert app.extensions["spool"].replay(app.extensions["archive"]).stored == [email_id]
    stored = client.get(f"/emails/{email_id}", headers=auth).get_json()["email"]
    assert len(stored["attachments"]) + len(stored["inlines"]) == 2
    for part in stored["attachments"] + stored["inlines"]:
        assert client.get(part["url"], headers=auth).status_code == 200


def test_a_gridfs_chunk_batch_failing_on_write_concern_is_spooled(app, client, gridfs_payload, monkeypatch):
    """GridFS turns a failed insert_many of chunks into a WriteConcernError of its own."""
    bulk = BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "timed out"}],
                           "nInserted": 1, "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0,
                           "upserted": []})
    _fail_at(monkeypatch, "insert_many", "blobs.chunks", bulk)
    assert client.post("/webhook", json=gridfs_payload).status_code == 202


# --- background task ----------------------------------------------------------------------

def test_background_tasks_do_not_start_in_tests_or_commands_unless_asked(make_app, monkeypatch):
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    assert "maintenance" not in make_app().extensions
    assert "maintenance" not in make_app(BACKGROUND_TASKS="false").extensions
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/27.0.1")
    assert "maintenance" not in make_app(BACKGROUND_TASKS="false").extensions
    app = make_app()
    try:
        assert app.extensions["maintenance"]._thread.is_alive()
    finally:
        app.extensions["maintenance"].stop()


def test_background_task_replays_the_spool_and_stops_cleanly(make_app, sample_payload, auth):
    app = make_app(BACKGROUND_TASKS="true", SPOOL_REPLAY_INTERVAL="1", RATELIMIT_ENABLED="false")
    maintenance = app.extensions["maintenance"]
    try:
        email_id = app.extensions["spool"].put(sample_payload)
        deadline = time.monotonic() + 15
        while app.extensions["spool"].pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.extensions["spool"].pending() == []
        assert app.test_client().get(f"/emails/{email_id}", headers=auth).status_code == 200
    finally:
        maintenance.stop()
    assert not maintenance._thread.is_alive()


def test_only_one_process_replays_a_spool_at_a_time(spool):
    spool.put({"subject": "waiting"})
    archive = RecordingArchive()
    maintenance = Maintenance(_ArchiveOnMongomock(archive), spool, replay_interval=1, gc_interval=0)
    with spool.replay_lock():
        maintenance.run_once()
    assert archive.ingested == []
    maintenance.run_once()
    assert len(archive.ingested) == 1


def test_replay_waits_until_the_unique_indexes_exist(spool, monkeypatch):
    """Started while MongoDB was down, the app has no idempotency index yet: create it first."""
    def database_down():
        raise ServerSelectionTimeoutError("No servers found yet")

    spool.put({"subject": "waiting"})
    archive = RecordingArchive()
    maintenance = Maintenance(_ArchiveOnMongomock(archive), spool, replay_interval=1, gc_interval=0)
    monkeypatch.setattr(maintenance.archive, "ensure_indexes", database_down)
    maintenance.run_once()
    assert archive.ingested == [] and len(spool.pending()) == 1
    monkeypatch.undo()
    maintenance.run_once()
    assert len(archive.ingested) == 1
    assert "idempotency_key_unique" in maintenance.archive.database.emails.index_information()


def test_background_pass_clears_abandoned_partial_files_even_with_nothing_waiting(spool):
    spool.directory.mkdir(parents=True)
    abandoned = spool.directory / f".{ObjectId()}.json.tmp"
    abandoned.write_text('{"subject": "cut sh')
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    os.utime(abandoned, (old, old))
    Maintenance(_ArchiveOnMongomock(RecordingArchive()), spool, replay_interval=1, gc_interval=0).run_once()
    assert not abandoned.exists()


class _ArchiveOnMongomock:
    """A RecordingArchive with the database and index set-up Maintenance needs."""

    def __init__(self, archive: RecordingArchive):
        self.ingest = archive.ingest
        self.database = mongomock.MongoClient().db
        self.gc_runs = 0

    def ensure_indexes(self):
        create_indexes(self.database)

    def migrate_blob_refs(self):
        return 0

    def migrate_audience(self):
        return 0

    def migrate_delivered_to(self):
        return 0

    def gc_blobs(self, grace):
        self.gc_runs += 1
        return 0


def test_the_lease_has_one_holder_until_it_expires():
    database = mongomock.MongoClient(tz_aware=True).db
    first, second = Lease(database, "job"), Lease(database, "job")
    assert first.acquire(timedelta(hours=1)) is True
    assert second.acquire(timedelta(hours=1)) is False
    database.maintenance_leases.update_one({"_id": "job"}, {"$set": {
        "expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    assert second.acquire(timedelta(hours=1)) is True
    assert Lease(database, "another job").acquire(timedelta(hours=1)) is True


def test_orphan_collection_runs_once_per_interval_across_workers(spool):
    shared = _ArchiveOnMongomock(RecordingArchive())
    workers = [Maintenance(shared, spool, replay_interval=1, gc_interval=3600) for _ in range(3)]
    for worker in workers:
        worker.run_once()
        worker.run_once()
    assert shared.gc_runs == 1


def _upload(database, data: bytes, age: timedelta, *, with_file_entry: bool) -> ObjectId:
    file_id = ObjectId(ObjectId.from_datetime(datetime.now(timezone.utc) - age).binary[:4] + ObjectId().binary[4:])
    database["blobs.chunks"].insert_many(
        [{"files_id": file_id, "n": n, "data": data[n * 4:(n + 1) * 4]} for n in range((len(data) + 3) // 4)])
    if with_file_entry:
        database["blobs.files"].insert_one({"_id": file_id, "length": len(data), "chunkSize": 4,
                                            "uploadDate": datetime.now(timezone.utc) - age})
    return file_id


def test_partial_uploads_older_than_the_grace_period_are_removed():
    database = mongomock.MongoClient(tz_aware=True).db
    old, new = timedelta(days=2), timedelta(minutes=5)
    complete = _upload(database, b"complete blob", old, with_file_entry=True)
    crashed = _upload(database, b"cut short by a crash", old, with_file_entry=False)
    in_flight = _upload(database, b"still uploading", new, with_file_entry=False)
    later_complete = _upload(database, b"another complete", old, with_file_entry=True)

    assert remove_partial_uploads(database, timedelta(hours=24)) == 1
    owners = set(database["blobs.chunks"].distinct("files_id"))
    assert owners == {complete, in_flight, later_complete}


def test_collect_orphans_removes_unreferenced_blobs_and_partial_uploads(app, client, sample_payload):
    archive = app.extensions["archive"]
    client.post("/webhook", json=sample_payload)
    orphan = archive.blobs.put(iter([b"left by a crash"]), "ab" * 32, 15, "text/plain")
    crashed = _upload(archive.database, b"partial", timedelta(days=2), with_file_entry=False)
    files = archive.database["blobs.files"]
    files.update_many({}, {"$set": {"uploadDate": datetime.now(timezone.utc) - timedelta(days=2)}})
    referenced = {f["_id"] for f in files.find()} - {orphan}

    assert collect_orphans(archive, grace=timedelta(hours=1)) == (1, 1)
    assert {f["_id"] for f in archive.database["blobs.files"].find()} == referenced
    assert set(archive.database["blobs.chunks"].distinct("files_id")) == referenced
    assert crashed not in archive.database["blobs.chunks"].distinct("files_id")


# --- operator commands --------------------------------------------------------------------

def test_spool_status_lists_each_waiting_message_and_where_it_is(app):
    spool = app.extensions["spool"]
    ids = [str(spool.put({"subject": f"m{i}"})) for i in range(25)]
    output = app.test_cli_runner().invoke(args=["spool", "status"]).output
    assert f"spool directory: {spool.directory.resolve()} (writable)" in output
    assert "MongoDB: reachable" in output
    assert "waiting: 25 message(s)" in output
    assert f"{ids[0]}  spooled " in output and str((spool.directory / f"{ids[0]}.json").resolve()) in output
    assert ids[24] not in output and "... and 5 more (--all lists every one)" in output
    assert ids[24] in app.test_cli_runner().invoke(args=["spool", "status", "--all"]).output


def test_spool_status_when_nothing_waits(app):
    output = app.test_cli_runner().invoke(args=["spool", "status"]).output
    assert "waiting: none; every acknowledged message is in MongoDB" in output


def test_spool_replay_command_moves_messages_and_reports_outages(app, sample_payload, monkeypatch):
    spool, archive = app.extensions["spool"], app.extensions["archive"]
    spool.put(sample_payload)
    monkeypatch.setattr(archive, "_ingest", _unavailable)
    down = app.test_cli_runner().invoke(args=["spool", "replay"])
    assert down.exit_code == 3 and len(spool.pending()) == 1
    monkeypatch.undo()
    up = app.test_cli_runner().invoke(args=["spool", "replay"])
    assert up.exit_code == 0 and "stored 1, already stored 0" in up.output
    assert spool.pending() == []


@pytest.mark.parametrize("raw, mode", [("", "auto"), ("auto", "auto"), ("true", "on"), ("off", "off")])
def test_background_tasks_setting(tmp_path, raw, mode):
    assert make_settings(tmp_path, BACKGROUND_TASKS=raw).background_tasks == mode


@pytest.mark.parametrize("name, raw", [("BACKGROUND_TASKS", "sometimes"), ("BLOB_GC_INTERVAL", "-1"),
                                       ("BLOB_GC_INTERVAL", "hourly")])
def test_background_task_settings_are_validated(tmp_path, name, raw):
    with pytest.raises(ConfigError, match=name):
        make_settings(tmp_path, **{name: raw})
