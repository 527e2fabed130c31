"""Background upkeep in each gunicorn worker: index new mail for search every few seconds,
replay the spool once MongoDB answers again, and now and then remove what a crash mid-ingest
left behind in GridFS.

One daemon thread per worker, started when the app is built inside the worker (after the
fork: preload_app stays off) and stopped at exit. A spool directory is replayed by one
process at a time (a lock file beside it, which the kernel releases if its holder dies);
each host replays only its own spool, and the idempotency key makes hosts replaying at once
harmless once the unique indexes exist, so each process confirms them before its first
replay. Orphan collection runs about once per BLOB_GC_INTERVAL across all hosts, under a
lease document in MongoDB whose expiry is computed here (never with $$NOW).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone

from bson import ObjectId
from flask import Flask
from pymongo.errors import PyMongoError

from .changes import note_change
from .indexer import SearchIndexer
from .lease import Lease
from .notify import Notifier
from .retention import Retention

log = logging.getLogger(__name__)

ORPHAN_GC_LEASE = "orphan-gc"
RETENTION_LEASE = "retention"
# Unreferenced blobs younger than this are kept: an ingest may be about to reference them,
# and a spool replay after a long outage reuses the blobs its first attempt wrote.
ORPHAN_GRACE = timedelta(hours=24)
STOP_TIMEOUT_SECONDS = 10.0
SEARCH_INDEX_LEASE = "search-index"
# One search-indexing pass works at most this long, then gives the lease back; the lease
# outlasts a pass by far, so only a holder that died leaves indexing stalled (until expiry).
SEARCH_PASS_SECONDS = 5.0
SEARCH_LEASE_DURATION = timedelta(seconds=60)


def remove_partial_uploads(database, grace: timedelta, bucket: str = "blobs") -> int:
    """Delete GridFS chunks whose file entry was never written (GridFS writes it last, so
    these are uploads cut short by a crash). Returns how many uploads were removed.

    Walks the chunk owners and the file entries older than the grace period side by side,
    both sorted by id, instead of one query per chunk.
    """
    older = {"$lt": ObjectId.from_datetime(datetime.now(timezone.utc) - grace)}
    chunks, files = database[f"{bucket}.chunks"], database[f"{bucket}.files"]
    entries = files.find({"_id": older}, {"_id": 1}).sort("_id", 1)
    entry = next(entries, None)
    removed, previous_owner = 0, None
    for chunk in chunks.find({"files_id": older}, {"files_id": 1, "_id": 0}).sort([("files_id", 1), ("n", 1)]):
        owner = chunk["files_id"]
        if owner == previous_owner:
            continue
        previous_owner = owner
        while entry is not None and entry["_id"] < owner:
            entry = next(entries, None)
        if entry is None or entry["_id"] != owner:
            chunks.delete_many({"files_id": owner})
            removed += 1
    return removed


def collect_orphans(archive, grace: timedelta = ORPHAN_GRACE) -> tuple[int, int]:
    """Remove unreferenced blobs and partial uploads older than grace; returns both counts."""
    blobs = archive.gc_blobs(grace)
    uploads = remove_partial_uploads(archive.database, grace)
    return blobs, uploads


class Maintenance:
    """The worker's background thread and the work it does on each pass."""

    def __init__(self, archive, spool, replay_interval: float, gc_interval: float, index_interval: float = 0,
                 retention: Retention | None = None):
        self.archive = archive
        self.spool = spool
        self.retention = retention
        self.replay_interval = replay_interval
        self.gc_interval = gc_interval
        self.index_interval = index_interval  # 0: this thread never indexes for search
        self.lease = Lease(archive.database, ORPHAN_GC_LEASE)
        self.search_lease = Lease(archive.database, SEARCH_INDEX_LEASE)
        self.indexer = SearchIndexer(archive) if index_interval else None
        self._search_postponed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_gc = time.monotonic()
        self._blob_refs_migrated = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="improvmx-maintenance", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Ask the thread to finish after the spool file it is on; a file left half-replayed
        is replayed again later (ingest is idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        if not self.spool.writable():
            log.error("spool directory %s is not writable: during a MongoDB outage webhooks will be "
                      "refused (503) instead of spooled", self.spool.directory)
        next_pass = time.monotonic() + self._replay_pause()
        while not self._stop.wait(self._pause_until(next_pass)):
            if self.index_interval:
                self._guarded(self.index_search, "search indexing")
            if time.monotonic() >= next_pass:
                self._guarded(self.run_once, "background maintenance")
                next_pass = time.monotonic() + self._replay_pause()

    def _replay_pause(self) -> float:
        return self.replay_interval * random.uniform(0.75, 1.25)

    def _pause_until(self, next_pass: float) -> float:
        """Sleep until the next replay pass, or the next indexing tick if that comes first."""
        pause = max(0.0, next_pass - time.monotonic())
        return min(pause, self.index_interval) if self.index_interval else pause

    @staticmethod
    def _guarded(work, name: str) -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - the thread must outlive one bad pass
            log.error("%s pass failed (%s); it runs again on the next pass", name, type(error).__name__)

    def run_once(self) -> None:
        if not self.ensure_indexes():
            return
        self.migrate_blob_refs()
        self.replay_spool()
        if self.gc_interval and time.monotonic() >= self._next_gc and not self._stop.is_set():
            self.collect_orphans()
        if self.retention and not self._stop.is_set():
            self.retention.run_if_due(self._stop.is_set)

    def ensure_indexes(self) -> bool:
        """Confirm the indexes before replaying: without the unique idempotency key two
        hosts replaying the same message at once could both store it."""
        try:
            self.archive.ensure_indexes()
        except PyMongoError as error:
            log.warning("indexes not confirmed yet (%s); spool replay waits for them "
                        "(`flask create-indexes` shows why)", type(error).__name__)
            return False
        return True

    def migrate_blob_refs(self) -> None:
        """Give messages stored before blob_ids, audience and delivered_to existed those fields, once per
        process (here, not at start-up, so a large archive never holds a booting worker
        past its timeout)."""
        if self._blob_refs_migrated:
            return
        migrated = self.archive.migrate_blob_refs()
        if migrated:
            log.info("gave %d older message(s) their blob_ids", migrated)
        tagged = self.archive.migrate_audience()
        if tagged:
            log.info("gave %d older message(s) their audience tags (the visibility rule)", tagged)
        delivered = self.archive.migrate_delivered_to()
        if delivered:
            log.info("gave %d older message(s) their delivered_to addresses (the UI's aliases)", delivered)
        if tagged or delivered:
            note_change(self.archive.database)  # cached alias lists and per-view figures are stale
        self._blob_refs_migrated = True

    def index_search(self) -> None:
        """Make newly stored messages searchable, one worker across all hosts at a time,
        until none waits or the pass has run SEARCH_PASS_SECONDS (the next tick goes on)."""
        if self.indexer is None:
            return
        try:
            self.archive.ensure_indexes()
            if not self.search_lease.acquire(SEARCH_LEASE_DURATION):
                return
            try:
                deadline = time.monotonic() + SEARCH_PASS_SECONDS
                self.indexer.index_pending(lambda: self._stop.is_set() or time.monotonic() >= deadline)
            finally:
                self.search_lease.release()
        except PyMongoError as error:
            if not self._search_postponed:  # once per outage, not every tick
                log.warning("search indexing postponed (%s); new mail is not searchable until MongoDB "
                            "answers again", type(error).__name__)
            self._search_postponed = True
            return
        self._search_postponed = False

    def replay_spool(self) -> None:
        """Replay this host's spool unless another process is already doing it (a pass over
        an empty spool only clears abandoned partial files)."""
        with self.spool.replay_lock() as ours:
            if not ours:
                return
            report = self.spool.replay(self.archive, should_stop=self._stop.is_set)
        if report.moved or report.corrupt or report.failed:
            log.info("spool replay: stored %d, already stored %d, corrupt %d, failed %d",
                     len(report.stored), len(report.duplicates), len(report.corrupt), len(report.failed))
        if report.stopped_by_outage:
            log.warning("spool replay paused: MongoDB unavailable; %d message(s) wait in %s",
                        len(self.spool.pending()), self.spool.directory)

    def collect_orphans(self) -> None:
        """Collect orphans if no worker on any host did within the last interval."""
        now = time.monotonic()
        try:
            if not self.lease.acquire(timedelta(seconds=self.gc_interval)):
                self._next_gc = now + self.gc_interval
                return
            blobs, uploads = collect_orphans(self.archive)
        except PyMongoError as error:
            log.warning("orphan collection postponed (%s)", type(error).__name__)
            self._next_gc = now + self.replay_interval
            return
        self._next_gc = now + self.gc_interval
        if blobs or uploads:
            log.info("orphan collection: removed %d unreferenced blob(s) and %d partial upload(s)",
                     blobs, uploads)


def _enabled(mode: str) -> bool:
    if mode == "auto":
        return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")
    return mode == "on"


def start_background_tasks(app: Flask) -> Maintenance | None:
    """Start this process's maintenance thread if BACKGROUND_TASKS allows it (auto: only in
    a gunicorn worker, so `flask` commands and tests never start one unless asked)."""
    settings = app.config["SETTINGS"]
    if not _enabled(settings.background_tasks):
        return None
    archive = app.extensions["archive"]
    retention = Retention(archive, Lease(archive.database, RETENTION_LEASE), settings.retention_days,
                          settings.retention_keep_unprocessed, settings.retention_interval) \
        if settings.retention_days else None
    maintenance = Maintenance(archive, app.extensions["spool"], settings.spool_replay_interval,
                              settings.blob_gc_interval, settings.search_index_interval, retention)
    maintenance.start()
    app.extensions["maintenance"] = maintenance
    if settings.notify_urls:
        notifier = Notifier(app.extensions["outbox"], settings.notify_secret)
        notifier.start()
        app.extensions["notifier"] = notifier
    return maintenance
