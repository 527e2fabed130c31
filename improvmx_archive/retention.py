"""Retention: delete mail older than RETENTION_DAYS, never mail on hold.

A pass runs on one host at a time under a lease (lease.Lease, handed in), deletes in
bounded batches through the same Deleter as DELETE /emails/<id> (shared blobs stay for the
messages still using them), stops after PASS_SECONDS, and records when it ran and what it
removed in `retention_runs`, where GET / and the metrics read it. A pass that did not
finish releases the lease, so the backlog of a first run drains pass after pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import PyMongoError

from . import metrics
from .audience import UNRESTRICTED
from .db import DURABLE, RETENTION_RUNS
from .deletion import DELETION_FIELDS, NOT_HELD
from .times import api_time

log = logging.getLogger(__name__)

BATCH = 500
PASS_SECONDS = 120.0
# The lease outlasts a pass (PASS_SECONDS plus one slow batch) even with a short interval.
MIN_LEASE = timedelta(minutes=10)


def set_hold(archive, email_id: str, hold: bool, within: Mapping[str, Any] = UNRESTRICTED) -> dict[str, Any] | None:
    """Put a message on hold (retention and purge skip it, DELETE refuses it) or release it;
    None for a message that does not exist or is outside `within` (a visibility filter)."""
    if not ObjectId.is_valid(email_id):
        return None
    return archive.durable_emails.find_one_and_update(
        {"_id": ObjectId(email_id), **within}, {"$set": {"hold": hold}},
        projection={"_id": 1, "processed": 1, "processed_at": 1, "hold": 1}, return_document=ReturnDocument.AFTER)


def expired_query(days: float, keep_unprocessed: bool, now: datetime) -> dict[str, Any]:
    query: dict[str, Any] = {"received_at": {"$lt": now - timedelta(days=days)}, **NOT_HELD}
    if keep_unprocessed:
        query["processed"] = True
    return query


class Retention:
    """One host's retention passes, called from the worker's maintenance thread."""

    def __init__(self, archive, lease, days: float, keep_unprocessed: bool, interval: float):
        self.archive = archive
        self.lease = lease
        self.runs = archive.database.get_collection(RETENTION_RUNS, write_concern=DURABLE)
        self.days = days
        self.keep_unprocessed = keep_unprocessed
        self.interval = timedelta(seconds=interval)

    def run_if_due(self, should_stop: Callable[[], bool]) -> None:
        """Run a pass unless another worker (any host) ran one within the interval."""
        try:
            if not self.lease.acquire(max(self.interval, MIN_LEASE)):
                return
            started = datetime.now(timezone.utc)
            deleted, complete = self.run_pass(should_stop)
            finished = datetime.now(timezone.utc)
            self.runs.insert_one({"started_at": started, "finished_at": finished, "deleted": deleted,
                                  "complete": complete, "holder": self.lease.holder, "days": self.days})
            if not complete:
                self.lease.release()  # the next maintenance pass (any host) goes on with the backlog
        except PyMongoError as error:
            log.warning("retention pass postponed (%s)", type(error).__name__)
            return
        log.info("retention pass: deleted %d message(s) received more than %g day(s) ago%s; %s", deleted,
                 self.days, " (unprocessed kept)" if self.keep_unprocessed else "",
                 "done" if complete else "more left for the next pass")

    def run_pass(self, should_stop: Callable[[], bool]) -> tuple[int, bool]:
        """Delete expired mail in batches for at most PASS_SECONDS; returns how many and
        whether nothing expired is left."""
        query = expired_query(self.days, self.keep_unprocessed, datetime.now(timezone.utc))
        deadline = time.monotonic() + PASS_SECONDS
        deleted = 0
        while time.monotonic() < deadline and not should_stop():
            batch = list(self.archive.emails.find(query, DELETION_FIELDS).sort("received_at", ASCENDING).limit(BATCH))
            if not batch:
                return deleted, True
            removed = len(self.archive.deleter.delete_documents(batch, tombstones=False))
            metrics.RETENTION_DELETED.inc(removed)
            deleted += removed
            if len(batch) < BATCH:
                return deleted, True
        return deleted, False


def last_run(database) -> dict[str, Any] | None:
    """The latest retention pass (any host), or None if none ran."""
    return database[RETENTION_RUNS].find_one({}, sort=[("finished_at", -1)])


def status(database, settings) -> dict[str, Any]:
    """Retention as GET / shows it."""
    ran = last_run(database) if settings.retention_days else None
    return {
        "days": settings.retention_days or None,
        "keep_unprocessed": settings.retention_keep_unprocessed,
        "last_run_at": api_time(ran["finished_at"]) if ran else None,
        "last_deleted": ran["deleted"] if ran else None,
    }


def gauge_reader(database) -> Callable[[], None]:
    """Refresh the retention gauges from the latest pass (for metrics.ArchiveGauges)."""

    def read() -> None:
        ran = last_run(database)
        if ran:
            metrics.RETENTION_LAST_RUN.set(ran["finished_at"].timestamp())
            metrics.RETENTION_LAST_REMOVED.set(ran["deleted"])

    return read
