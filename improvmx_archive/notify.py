"""Notifications of new mail: at least once to every NOTIFY_URL, never lost, never blocking.

The outbox starts inside the message document: ingest writes `notify_pending: true` in the
same insert that stores the message (no extra round trip; a sparse index holds only the
pending ones), so a message is never stored without its notification, whether it came
from the webhook or a spool replay, and a duplicate (no insert) never notifies.

Each worker runs one fan-out thread and one sender thread per receiver:
- fan-out turns each marked message into one outbox document per receiver, with a
  deterministic _id (so two workers doing it at once make one), then clears the marker;
- a sender claims its receiver's next due notification atomically with a lease computed
  here (never $$NOW), POSTs it without following redirects and with short timeouts, and
  records the outcome: a 2xx ends it, anything else retries with exponential backoff and
  jitter until NOTIFY_MAX_HOURS have passed, then it stays as `failed` for the operator.
A crash or outage at any step leaves either the marker or an unexpired-then-expired lease,
so the work is picked up again: a receiver may see a notification twice (same
X-Archive-Delivery id, to deduplicate on), never zero times. One slow or dead receiver
only holds its own thread.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from . import metrics
from .db import DURABLE, NOTIFY_PENDING_FIELD, OUTBOX
from .times import api_time, as_utc

if TYPE_CHECKING:  # requests (~5 MiB) is imported by the sender threads, not by every worker
    import requests

log = logging.getLogger(__name__)

PENDING_FIELD = NOTIFY_PENDING_FIELD
EVENT = "message.stored"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# A claim outlives one attempt (connect + read timeouts) with room to spare; a sender that
# dies mid-attempt leaves it to expire, and another sender takes the notification over.
CLAIM_LEASE = timedelta(seconds=60)
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 3600.0
IDLE_POLL_SECONDS = 5.0
FANOUT_BATCH = 100
FAILURE_PAUSE_CAP_SECONDS = 60.0

def mark_for_notification(document: dict[str, Any]) -> None:
    """Called by ingest on the document it is about to insert."""
    document[PENDING_FIELD] = True


def receiver_id(url: str) -> str:
    """A stable short id for a URL that reveals nothing of it."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def masked(url: str) -> str:
    """What a log may say about a receiver: scheme, host and port, plus its id. Userinfo,
    path and query may all carry credentials (many webhook URLs hold a token in the path)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/… (#{receiver_id(url)})"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """X-Archive-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">, as Stripe's scheme."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_body(message: dict[str, Any], public_url: str) -> bytes:
    """The JSON POSTed for one stored message, fixed at fan-out so every retry sends it unchanged."""
    email_id = str(message["_id"])
    subject = message.get("subject")
    return json.dumps({
        "event": EVENT,
        "email_id": email_id,
        "received_at": api_time(message["received_at"]),
        "from": message.get("from_email"),
        "to": message.get("to_emails") or [],
        "subject": subject if isinstance(subject, str) else None,
        "size": message.get("size", 0),
        "has_attachments": bool(message.get("has_attachments")),
        "url": f"{public_url}/emails/{email_id}",
    }, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def backoff(attempts: int) -> timedelta:
    """Exponential from BACKOFF_BASE_SECONDS, capped, with full jitter in its upper half so
    workers retrying one dead receiver do not stampede it when it returns."""
    delay = min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_CAP_SECONDS)
    return timedelta(seconds=delay * random.uniform(0.5, 1.0))


@dataclass
class Attempt:
    delivered: bool
    detail: str  # "HTTP 503", "timeout", "connection failed", ...


class Outbox:
    """The notification documents in MongoDB: fan-out, claims and outcomes."""

    def __init__(self, database, urls: tuple[str, ...], public_url: str, max_age: timedelta):
        self.database = database
        self.emails = database.emails
        self.outbox = database.get_collection(OUTBOX, write_concern=DURABLE)
        self.urls = urls
        self.public_url = public_url
        self.max_age = max_age

    def fan_out(self) -> int:
        """Give each marked message one outbox entry per receiver; returns how many messages."""
        projection = {"received_at": 1, "from_email": 1, "to_emails": 1, "subject": 1, "size": 1,
                      "has_attachments": 1}
        done = 0
        for message in self.emails.find({PENDING_FIELD: True}, projection).limit(FANOUT_BATCH):
            now = datetime.now(timezone.utc)
            body = event_body(message, self.public_url)
            for url in self.urls:
                self._enqueue(message["_id"], receiver_id(url), masked(url), body, now)
            self.emails.update_one({"_id": message["_id"]}, {"$unset": {PENDING_FIELD: ""}})
            done += 1
        return done

    def _enqueue(self, email_id, url_id: str, receiver: str, body: bytes, now: datetime) -> None:
        try:
            self.outbox.update_one({"_id": f"{email_id}.{url_id}"}, {"$setOnInsert": {
                "email_id": email_id, "url_id": url_id, "receiver": receiver, "body": body,
                "status": PENDING, "attempts": 0, "created_at": now, "next_attempt_at": now,
                "give_up_at": now + self.max_age}}, upsert=True)
        except DuplicateKeyError:
            pass  # another worker's fan-out inserted it first: the same entry

    def claim(self, url_id: str) -> dict[str, Any] | None:
        """The receiver's next due notification, now leased to this caller, or None."""
        now = datetime.now(timezone.utc)
        return self.outbox.find_one_and_update(
            {"url_id": url_id, "status": PENDING, "next_attempt_at": {"$lte": now}},
            {"$set": {"next_attempt_at": now + CLAIM_LEASE, "claim": uuid.uuid4().hex}, "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", ASCENDING)], return_document=ReturnDocument.AFTER,
        )

    def record(self, item: dict[str, Any], attempt: Attempt) -> str:
        """Store an attempt's outcome unless the lease was lost meanwhile; returns the result
        label (delivered, retry, failed)."""
        now = datetime.now(timezone.utc)
        if attempt.delivered:
            result, update = DELIVERED, {"status": DELIVERED, "delivered_at": now}
        elif now >= as_utc(item["give_up_at"]):
            result, update = FAILED, {"status": FAILED, "failed_at": now}
        else:
            result, update = "retry", {"next_attempt_at": now + backoff(item["attempts"])}
        update.update(last_attempt_at=now, last_result=attempt.detail)
        self.outbox.update_one({"_id": item["_id"], "claim": item["claim"]}, {"$set": update})
        return result

    def retry_failed(self) -> int:
        """Give every failed notification a fresh NOTIFY_MAX_HOURS window (flask notify retry)."""
        now = datetime.now(timezone.utc)
        return self.outbox.update_many({"status": FAILED}, {"$set": {
            "status": PENDING, "next_attempt_at": now, "give_up_at": now + self.max_age}}).modified_count

    def _configured(self) -> dict[str, Any]:
        return {"url_id": {"$in": [receiver_id(url) for url in self.urls]}}

    def counts(self) -> dict[str, int]:
        """Notifications by state for the receivers in NOTIFY_URL; `unsent` are stored
        messages not yet fanned out. Entries of a receiver since removed are `orphaned`:
        nothing will send them, so they must not hold the backlog gauge (and its alert) up."""
        return {
            "unsent": self.emails.count_documents({PENDING_FIELD: True}),
            PENDING: self.outbox.count_documents({"status": PENDING, **self._configured()}),
            FAILED: self.outbox.count_documents({"status": FAILED, **self._configured()}),
        }

    def orphaned(self) -> int:
        """Queued or failed notifications of receivers no longer in NOTIFY_URL."""
        return self.outbox.count_documents({"status": {"$in": [PENDING, FAILED]},
                                            "url_id": {"$nin": [receiver_id(url) for url in self.urls]}})

    def backlog(self) -> list[dict[str, Any]]:
        """Queued and failed notifications per receiver, with the oldest's creation time."""
        return list(self.outbox.aggregate([
            {"$match": {"status": {"$in": [PENDING, FAILED]}}},
            {"$group": {"_id": {"receiver": "$receiver", "status": "$status"}, "count": {"$sum": 1},
                        "oldest": {"$min": "$created_at"}}},
            {"$project": {"_id": 0, "receiver": "$_id.receiver", "status": "$_id.status", "count": 1, "oldest": 1}},
            {"$sort": {"receiver": 1, "status": 1}},
        ]))

    def failed(self, limit: int | None) -> list[dict[str, Any]]:
        """Failed notifications, latest first (without their bodies)."""
        cursor = self.outbox.find({"status": FAILED}, {"body": 0}).sort("created_at", -1)
        return list(cursor.limit(limit) if limit else cursor)

    def publish_gauges(self) -> None:
        counts = self.counts()
        metrics.NOTIFICATIONS_PENDING.set(counts["unsent"] + counts[PENDING])
        metrics.NOTIFICATIONS_FAILED.set(counts[FAILED])



def deliver(session: requests.Session, url: str, secret: str, item: dict[str, Any]) -> Attempt:
    """One POST; redirects are not followed (a 3xx is a failed attempt, never a new host)."""
    import requests

    body = bytes(item["body"])
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "improvmx-webhook-archive",
        "X-Archive-Event": EVENT,
        "X-Archive-Delivery": item["_id"],
        "X-Archive-Signature": signature(secret, int(time.time()), body),
    }
    try:
        response = session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
        response.close()
    except requests.Timeout:
        return Attempt(False, "timeout")
    except requests.ConnectionError:
        return Attempt(False, "connection failed")
    except requests.RequestException as error:
        return Attempt(False, type(error).__name__)
    return Attempt(200 <= response.status_code < 300, f"HTTP {response.status_code}")


class Notifier:
    """This worker's fan-out thread and one sender thread per receiver."""

    def __init__(self, outbox: Outbox, secret: str):
        self.outbox = outbox
        self.secret = secret
        self._stop = threading.Event()
        self._due = {receiver_id(url): threading.Event() for url in outbox.urls}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        loops = [(self._fan_out, "fanout")] + [(_Sender(self, url).step, receiver_id(url)) for url in self.outbox.urls]
        for step, name in loops:
            thread = threading.Thread(target=self._forever, args=(step,), name=f"improvmx-notify-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for event in self._due.values():
            event.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _forever(self, step) -> None:
        """Run step until stopped; it returns how long to wait before its next run."""
        while not self._stop.is_set():
            try:
                pause = step()
            except Exception as error:  # noqa: BLE001 - a bug in one pass must not end notifications
                log.error("notification pass failed (%s); retrying in %.0f s", type(error).__name__, IDLE_POLL_SECONDS)
                pause = IDLE_POLL_SECONDS
            if pause:
                self._stop.wait(pause)

    def _fan_out(self) -> float:
        try:
            if not self.outbox.fan_out():
                return IDLE_POLL_SECONDS
        except PyMongoError as error:
            log.warning("notification fan-out postponed (%s)", type(error).__name__)
            return IDLE_POLL_SECONDS
        for event in self._due.values():
            event.set()
        return 0

    def wait_for_work(self, url_id: str, seconds: float) -> None:
        self._due[url_id].wait(seconds)
        self._due[url_id].clear()


class _Sender:
    """Delivers one receiver's notifications, one at a time; pauses after failures so a
    dead receiver is probed now and then rather than hammered with its whole backlog."""

    def __init__(self, notifier: Notifier, url: str):
        self.notifier = notifier
        self.outbox = notifier.outbox
        self.url = url
        self.url_id = receiver_id(url)
        self.receiver = masked(url)
        import requests  # here, not at module level: only a worker that notifies pays for it

        self.session = requests.Session()
        self.session.trust_env = False  # no proxy or .netrc credentials from the environment
        self.failures_in_a_row = 0

    def step(self) -> float:
        try:
            item = self.outbox.claim(self.url_id)
        except PyMongoError as error:
            log.warning("notifications to %s postponed (%s)", self.receiver, type(error).__name__)
            return IDLE_POLL_SECONDS
        if item is None:
            self.notifier.wait_for_work(self.url_id, IDLE_POLL_SECONDS)
            return 0
        attempt = deliver(self.session, self.url, self.notifier.secret, item)
        try:
            result = self.outbox.record(item, attempt)
        except PyMongoError as error:
            log.warning("outcome of notification %s not recorded (%s); it is sent again once its lease "
                        "expires", item["_id"], type(error).__name__)
            return IDLE_POLL_SECONDS
        metrics.NOTIFICATIONS.labels(result=result).inc()
        if result == DELIVERED:
            self.failures_in_a_row = 0
            return 0
        self.failures_in_a_row += 1
        if result == FAILED:
            log.error("notification %s to %s failed for good after %d attempts (%s); `improvmx-archive notify retry` "
                      "requeues it", item["_id"], self.receiver, item["attempts"], attempt.detail)
        else:
            log.warning("notification %s to %s: %s (attempt %d); retrying later", item["_id"], self.receiver,
                        attempt.detail, item["attempts"])
        pause = min(2.0 ** self.failures_in_a_row, FAILURE_PAUSE_CAP_SECONDS)
        return pause * random.uniform(0.5, 1.0)
