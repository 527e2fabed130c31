"""The MongoDB connection, the durable write concern and every index the app relies on.

One MongoClient per process (pymongo pools connections and is thread-safe). Timeouts are
seconds, not minutes, so a dead database gives a clean error instead of a hung worker.
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient
from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

from .config import Settings

# Journaled, and on a replica set acknowledged by a majority: survives a crash or failover.
DURABLE = WriteConcern(w="majority", j=True)
# GridFS chunks are written acknowledged but unjournaled; the message document written after
# them with DURABLE flushes the journal (and majority point) past them as well.
ACKNOWLEDGED = WriteConcern(w=1)

LOCKOUT_FAILURE_TTL = 300

EMAIL_INDEXES = [
    IndexModel([("idempotency_key", ASCENDING)], name="idempotency_key_unique", unique=True),
    IndexModel([("received_at", DESCENDING), ("_id", DESCENDING)], name="newest_first"),
    # Each filter's index ends with the listing's full sort key, so no filter needs a SORT.
    IndexModel([("from_email", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)], name="by_sender"),
    IndexModel([("recipients", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)],
               name="by_recipient"),
    # The visibility rule (access/visibility.py): a member's view is one $in on these tags.
    IndexModel([("audience", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)],
               name="by_audience"),
    IndexModel([("processed", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)],
               name="by_processed"),
    IndexModel([("has_attachments", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)],
               name="by_attachments"),
    IndexModel([("subject_trigrams", ASCENDING)], name="by_subject_trigram"),
    # Search (indexer.py): a word of `q` walks its index entries already in page order;
    # the sparse marker finds messages still waiting to be indexed.
    IndexModel([("tokens", ASCENDING), ("received_at", DESCENDING), ("_id", DESCENDING)], name="by_token"),
    IndexModel([("search_pending", ASCENDING)], name="search_pending", sparse=True),
    # Whether anything still references a blob (deletion, orphan collection): blobrefs.py.
    IndexModel([("blob_ids", ASCENDING)], name="by_blob"),
    # Conversations (threads.py, GET /emails/<id>/thread): the Message-IDs tying mail together.
    IndexModel([("thread_refs", ASCENDING)], name="by_thread_ref"),
]
# Replaced by by_blob; dropped so no write pays for an index no query uses.
OBSOLETE_EMAIL_INDEXES = ("attachment_blobs", "inline_blobs", "text_blobs", "html_blobs", "overflow_blobs")


# Notifications of new mail (notify.py): messages not yet fanned out carry NOTIFY_PENDING_FIELD
# (a sparse index holds only those), and the outbox holds one entry per message and receiver.
NOTIFY_PENDING_FIELD = "notify_pending"
OUTBOX = "notification_outbox"
NOTIFICATION_DELIVERED_KEPT_SECONDS = 7 * 86400
OUTBOX_INDEXES = [
    IndexModel([("url_id", ASCENDING), ("status", ASCENDING), ("next_attempt_at", ASCENDING)],
               name="due_by_receiver"),
    IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name="by_status"),
    IndexModel([("delivered_at", ASCENDING)], name="expire_delivered",
               expireAfterSeconds=NOTIFICATION_DELIVERED_KEPT_SECONDS),
]


# Idempotency keys of deleted messages (deletion.py), so a retry or replay is not stored again.
TOMBSTONES = "tombstones"
# One document per retention pass (retention.py): when, which host, how many deleted.
RETENTION_RUNS = "retention_runs"
RETENTION_RUNS_KEPT_SECONDS = 90 * 86400


class DatabaseUnavailable(Exception):
    """MongoDB did not answer within the configured timeout."""


# An operator command (`flask check`, `flask import`, ...) waits at most this long for a
# server: a person at a terminal wants "database down" in seconds, not after every start-up
# step has waited MONGO_TIMEOUT_MS in turn. Rerunning it is their retry.
OPERATOR_SELECTION_MS = 2000


def make_client(settings: Settings, *, operator: bool = False) -> MongoClient:
    timeout = settings.mongo_timeout_ms
    if operator:
        timeout = min(timeout, OPERATOR_SELECTION_MS)
    return MongoClient(
        settings.mongo_uri,
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        socketTimeoutMS=max(30_000, timeout * 6),
        appname="improvmx-webhook",
        tz_aware=True,
    )


def create_indexes(database) -> None:
    """Create every index; safe to run again (MongoDB skips identical existing ones)."""
    database.emails.create_indexes(EMAIL_INDEXES)
    for name in set(OBSOLETE_EMAIL_INDEXES).intersection(database.emails.index_information()):
        database.emails.drop_index(name)
    database["blobs.files"].create_index([("metadata.sha256", ASCENDING)], name="by_sha256")
    database["blobs.files"].create_index([("uploadDate", ASCENDING)], name="by_upload_date")
    database["blobs.chunks"].create_index(
        [("files_id", ASCENDING), ("n", ASCENDING)], name="files_id_1_n_1", unique=True
    )
    database.auth_failures.create_index(
        [("at", ASCENDING)], name="expire_failures", expireAfterSeconds=LOCKOUT_FAILURE_TTL
    )
    database.auth_failures.create_index([("ip", ASCENDING), ("at", ASCENDING)], name="by_ip")
    database.auth_blocks.create_index([("until", ASCENDING)], name="expire_blocks", expireAfterSeconds=0)
    database.ui_sessions.create_index([("expires_at", ASCENDING)], name="expire_sessions", expireAfterSeconds=0)
    database.emails.create_index([(NOTIFY_PENDING_FIELD, ASCENDING)], name="notify_pending", sparse=True)
    database[OUTBOX].create_indexes(OUTBOX_INDEXES)
    database[TOMBSTONES].create_index([("expires_at", ASCENDING)], name="expire_tombstones", expireAfterSeconds=0)
    database[RETENTION_RUNS].create_index([("finished_at", DESCENDING)], name="expire_runs",
                                          expireAfterSeconds=RETENTION_RUNS_KEPT_SECONDS)


def ping(client: MongoClient) -> bool:
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
