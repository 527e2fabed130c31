"""The send outbox in MongoDB (`send_outbox`): every send's MIME bytes, its state and its
attempts, written durably before the API answers 202.

States (status):
  queued    recorded, waiting for a sender
  sending   leased by one sender on one host (lease_until); `phase` says how far it got:
            "connecting" until the server answered DATA with 354, "body" from then on
  sent      the server took it (250 after the body); refused recipients are listed
  retrying  a temporary failure (4xx, network, TLS) before the body went out; due again at
            next_attempt_at (SEND_RETRY_SECONDS, then doubling up to an hour) until give_up_at
  failed    a permanent refusal (5xx), or still temporary at give_up_at; the reply is kept
  unknown   the connection was lost after the body went out, or a sender died in phase
            "body": the server may or may not have it, so nothing resends it on its own
  cancelled stopped by a person before it was sent

A lease that expires in phase "connecting" (the sender died before any of the message was
sent) puts the send back to retrying; one that expires in phase "body" makes it unknown.
Only POST /outbox/<id>/retry (a person) moves failed or unknown back to queued.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import Binary, ObjectId
from gridfs import GridFSBucket
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from .. import metrics
from ..db import DURABLE
from ..times import as_utc
from .smtp import RETRY, SENT as SMTP_SENT, UNKNOWN as SMTP_UNKNOWN, Outcome

COLLECTION = "send_outbox"
QUOTA = "send_quota"
BUCKET = "outgoing"
QUEUED, SENDING, SENT, RETRYING, FAILED, UNKNOWN, CANCELLED = (
    "queued", "sending", "sent", "retrying", "failed", "unknown", "cancelled")
STATES = (QUEUED, SENDING, SENT, RETRYING, FAILED, UNKNOWN, CANCELLED)
RETRYABLE = (FAILED, UNKNOWN, RETRYING)  # a person may ask for these to go (again) now
CANCELLABLE = (QUEUED, RETRYING, UNKNOWN)
CONNECTING, BODY = "connecting", "body"
INLINE_RAW_LIMIT = 1024 * 1024  # larger MIME goes to GridFS
BACKOFF_CAP = timedelta(hours=1)
DIED_IN_BODY = ("the sender stopped while the message was being transmitted; it may or may not "
                "have been delivered")
INDEXES = [
    IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="due"),
    IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="leases"),
    IndexModel([("person_id", ASCENDING), ("created_at", DESCENDING)], name="by_person"),
    IndexModel([("created_at", DESCENDING)], name="newest_first"),
    IndexModel([("copy_pending", ASCENDING)], name="copy_pending", sparse=True),
]
SUMMARY = {"raw": 0, "claim": 0}


class LeaseLost(Exception):
    """This sender no longer holds the send (its lease expired and the sweep took it)."""


class QuotaReached(Exception):
    """SEND_DAILY_LIMIT sends were already queued this UTC day."""


def holder() -> str:
    """Which process holds a lease (host:pid), for operators and `flask outbox status`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def utc_day(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d")


def backoff(attempts: int, first_seconds: float) -> timedelta:
    """SEND_RETRY_SECONDS after the first failure, then doubling, at most an hour apart."""
    return min(timedelta(seconds=first_seconds * 2 ** max(attempts - 1, 0)), BACKOFF_CAP)


class SendOutbox:
    def __init__(self, database, *, retry_seconds: float = 60, max_hours: float = 48,
                 lease: timedelta = timedelta(minutes=10)):
        self.database = database
        self.sends = database.get_collection(COLLECTION, write_concern=DURABLE)
        self.quota = database.get_collection(QUOTA, write_concern=DURABLE)
        self.bucket = GridFSBucket(database, BUCKET, write_concern=DURABLE)
        self.retry_seconds = retry_seconds
        self.max_age = timedelta(hours=max_hours)
        self.lease = lease

    def ensure_indexes(self) -> None:
        self.sends.create_indexes(INDEXES)

    # -- queuing ------------------------------------------------------------------------------

    def take_quota(self, limit: int, now: datetime) -> str:
        """Count one send against today's limit (ImprovMX's day ends at 00:00 UTC), atomically
        across workers; raises QuotaReached. A full day's document makes the upsert collide."""
        day = utc_day(now)
        if limit <= 0:
            raise QuotaReached()
        try:
            self.quota.update_one({"_id": day, "count": {"$lt": limit}}, {"$inc": {"count": 1}}, upsert=True)
        except DuplicateKeyError:
            raise QuotaReached() from None
        return day

    def give_back_quota(self, day: str) -> None:
        self.quota.update_one({"_id": day, "count": {"$gt": 0}}, {"$inc": {"count": -1}})

    def used_today(self, now: datetime | None = None) -> int:
        found = self.quota.find_one({"_id": utc_day(now or datetime.now(timezone.utc))})
        return int(found["count"]) if found else 0

    def enqueue(self, record: dict[str, Any], raw: bytes, now: datetime) -> ObjectId:
        """Store one send durably (large MIME in GridFS first); returns its id. A failure
        leaves nothing queued (a GridFS file written before is removed again)."""
        send_id = ObjectId()
        document = {"_id": send_id, **record, "status": QUEUED, "attempts": 0, "size": len(raw),
                    "created_at": now, "next_attempt_at": now, "give_up_at": now + self.max_age}
        blob_id = None
        if len(raw) > INLINE_RAW_LIMIT:
            blob_id = self.bucket.upload_from_stream(f"{send_id}.eml", raw)
            document["raw_blob"] = blob_id
        else:
            document["raw"] = Binary(raw)
        try:
            self.sends.insert_one(document)
        except Exception:
            if blob_id is not None:
                try:
                    self.bucket.delete(blob_id)
                except Exception:  # noqa: BLE001 - an orphan file is harmless; the refusal matters
                    pass
            raise
        return send_id

    def raw_of(self, item: dict[str, Any]) -> bytes:
        if item.get("raw") is not None:
            return bytes(item["raw"])
        return self.bucket.open_download_stream(item["raw_blob"]).read()

    # -- the sender's side -------------------------------------------------------------------

    def claim(self) -> dict[str, Any] | None:
        """The next due send, now leased to the caller (status sending, phase connecting)."""
        now = datetime.now(timezone.utc)
        return self.sends.find_one_and_update(
            {"status": {"$in": [QUEUED, RETRYING]}, "next_attempt_at": {"$lte": now}},
            {"$set": {"status": SENDING, "phase": CONNECTING, "lease_until": now + self.lease,
                      "claim": uuid.uuid4().hex, "holder": holder(), "last_attempt_at": now},
             "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", ASCENDING)], return_document=ReturnDocument.AFTER)

    def mark_body(self, item: dict[str, Any]) -> None:
        """Record that the body is about to go out; raises LeaseLost if the send is no longer ours."""
        now = datetime.now(timezone.utc)
        if not self.sends.update_one({"_id": item["_id"], "claim": item["claim"], "status": SENDING},
                                     {"$set": {"phase": BODY, "lease_until": now + self.lease}}).matched_count:
            raise LeaseLost()

    def record(self, item: dict[str, Any], outcome: Outcome) -> str:
        """Store an attempt's outcome (if the lease is still ours); returns the new status."""
        now = datetime.now(timezone.utc)
        update: dict[str, Any] = {"last_reply": outcome.reply, "refused": outcome.refused, "phase": None}
        if outcome.result == SMTP_SENT:
            status = SENT
            update.update(sent_at=now, copy_pending=True)
        elif outcome.result == SMTP_UNKNOWN:
            status = UNKNOWN
        elif outcome.result == RETRY and now + backoff(item["attempts"], self.retry_seconds) < as_utc(item["give_up_at"]):
            status = RETRYING
            update["next_attempt_at"] = now + backoff(item["attempts"], self.retry_seconds)
        else:
            status = FAILED
            if outcome.result == RETRY:
                update["last_reply"] = (f"gave up after {item['attempts']} attempt(s): {outcome.reply}")
        update["status"] = status
        found = self.sends.update_one({"_id": item["_id"], "claim": item["claim"], "status": SENDING},
                                      {"$set": update, "$unset": {"claim": "", "lease_until": ""}})
        if not found.matched_count:
            if status == SENT and self.sends.update_one(
                    {"_id": item["_id"], "status": UNKNOWN}, {"$set": update}).matched_count:
                return SENT  # the sweep had given it up as unknown, but the server's 250 came
            raise LeaseLost()
        return status

    def expire_stale(self) -> tuple[int, int]:
        """Sends whose sender died: back to retrying if it died before the body, unknown after.
        Returns (requeued, unknown)."""
        now = datetime.now(timezone.utc)
        expired = {"status": SENDING, "lease_until": {"$lt": now}}
        unknown = self.sends.update_many({**expired, "phase": BODY}, {
            "$set": {"status": UNKNOWN, "last_reply": DIED_IN_BODY, "phase": None},
            "$unset": {"claim": "", "lease_until": ""}}).modified_count
        requeued = self.sends.update_many({**expired, "phase": {"$ne": BODY}}, {
            "$set": {"status": RETRYING, "next_attempt_at": now, "phase": None,
                     "last_reply": "the sender stopped before the message was sent; it goes again"},
            "$unset": {"claim": "", "lease_until": ""}}).modified_count
        return requeued, unknown

    def not_archived(self, limit: int = 20) -> list[dict[str, Any]]:
        """Sent messages whose copy is not in the archive yet (a sparse marker finds them)."""
        return list(self.sends.find({"copy_pending": True}).limit(limit))

    def set_archived(self, item: dict[str, Any], email_id: str) -> None:
        """The copy is stored: its MIME now lives in the archive, so the outbox lets go of it
        (nothing resends a sent message)."""
        self.sends.update_one({"_id": item["_id"]}, {"$set": {"archived_email_id": email_id},
                                                      "$unset": {"copy_pending": "", "raw": "", "raw_blob": ""}})
        if item.get("raw_blob") is not None:
            try:
                self.bucket.delete(item["raw_blob"])
            except Exception:  # noqa: BLE001 - an orphaned file costs space, not correctness
                pass

    # -- people's side -----------------------------------------------------------------------

    def find(self, send_id: str, owner: dict[str, Any]) -> dict[str, Any] | None:
        if not ObjectId.is_valid(send_id):
            return None
        return self.sends.find_one({"_id": ObjectId(send_id), **owner}, SUMMARY)

    def listing(self, owner: dict[str, Any], status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = {**owner, **({"status": status} if status else {})}
        return list(self.sends.find(query, SUMMARY).sort("created_at", DESCENDING).limit(limit))

    def retry(self, send_id: ObjectId, owner: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any] | None:
        """A person's decision to send again now (failed, unknown) or sooner (retrying)."""
        now = datetime.now(timezone.utc)
        return self.sends.find_one_and_update(
            {"_id": send_id, "status": {"$in": list(RETRYABLE)}, **owner},
            {"$set": {"status": QUEUED, "next_attempt_at": now, "give_up_at": now + self.max_age,
                      "retried_by": actor, "retried_at": now, "phase": None}},
            projection=SUMMARY, return_document=ReturnDocument.AFTER)

    def cancel(self, send_id: ObjectId, owner: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any] | None:
        now = datetime.now(timezone.utc)
        return self.sends.find_one_and_update(
            {"_id": send_id, "status": {"$in": list(CANCELLABLE)}, **owner},
            {"$set": {"status": CANCELLED, "cancelled_by": actor, "cancelled_at": now}},
            projection=SUMMARY, return_document=ReturnDocument.AFTER)

    def publish_gauges(self) -> None:
        """improvmx_send_queue{status}: what waits (queued, sending, retrying) or needs a person."""
        counts = self.counts()
        for status in (QUEUED, SENDING, RETRYING, UNKNOWN, FAILED):
            metrics.SEND_QUEUE.labels(status=status).set(counts[status])

    def counts(self) -> dict[str, int]:
        counted = {state: 0 for state in STATES}
        for row in self.sends.aggregate([{"$group": {"_id": "$status", "count": {"$sum": 1}}}]):
            if row["_id"] in counted:
                counted[row["_id"]] = row["count"]
        return counted
