"""Prometheus metrics, one consistent answer whichever gunicorn worker serves the scrape.

Under gunicorn, gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a directory emptied at
each service start, so prometheus_client keeps every worker's values in files there and a
scrape sums them (counters, histograms) or takes the newest (gauges read from MongoDB).
Without it (flask commands, tests) the values are this process's own.

Archive-wide gauges are read from MongoDB at most every 30 s per worker: the message count
from metadata, bytes by kind from the snapshot usage.py recomputes every 5 minutes; each
worker publishes what it read as a 'mostrecent' gauge, so a scrape on any worker reports the
newest value any worker read. Spool gauges are read from
the host's spool directory on every scrape (a directory listing).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from flask import Flask, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from .usage import current_usage

log = logging.getLogger(__name__)

ARCHIVE_REFRESH_SECONDS = 30.0
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
WEBHOOK_ENDPOINT = "webhook.receive"
# Seconds: a small message is stored in milliseconds, a 50 MB one in seconds.
INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

DELIVERIES = Counter("improvmx_webhook_deliveries", "Webhook deliveries by outcome.", ["result"])
INGEST_SECONDS = Histogram("improvmx_webhook_ingest_seconds",
                           "Time to store one webhook delivery in MongoDB (or find it stored).",
                           buckets=INGEST_BUCKETS)
HTTP_REQUESTS = Counter("improvmx_http_requests", "HTTP requests by route template, method and status.",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("improvmx_http_request_seconds", "HTTP request duration by route template.",
                         ["route"], buckets=INGEST_BUCKETS)
RETENTION_DELETED = Counter("improvmx_retention_deleted", "Messages deleted by retention.")
NOTIFICATIONS = Counter("improvmx_notifications", "Notification delivery attempts by outcome.", ["result"])

ARCHIVE_MESSAGES = Gauge("improvmx_archive_messages", "Messages in the archive (MongoDB's count).",
                         multiprocess_mode="mostrecent")
ARCHIVE_BYTES = Gauge("improvmx_archive_bytes", "Bytes as received: body = message text, HTML and headers, "
                      "attachments = attachments and inlines (before deduplication).", ["kind"],
                      multiprocess_mode="mostrecent")
NOTIFICATIONS_PENDING = Gauge("improvmx_notifications_pending",
                              "Notifications not yet delivered (waiting or being retried).",
                              multiprocess_mode="mostrecent")
NOTIFICATIONS_FAILED = Gauge("improvmx_notifications_failed",
                             "Notifications given up after NOTIFY_MAX_HOURS (see `improvmx-archive notify status`).",
                             multiprocess_mode="mostrecent")
RETENTION_LAST_RUN = Gauge("improvmx_retention_last_run_timestamp_seconds",
                           "When a retention pass last finished (Unix time, any host).",
                           multiprocess_mode="mostrecent")
RETENTION_LAST_REMOVED = Gauge("improvmx_retention_last_run_deleted",
                               "Messages the last retention pass deleted.", multiprocess_mode="mostrecent")
# Sending (outbound/): attempts by the state they left the send in, and the outbox by state.
SENDS = Counter("improvmx_sends", "Send attempts by result (sent, retrying, failed, unknown).", ["result"])
SEND_QUEUE = Gauge("improvmx_send_queue", "Sends in the outbox by status (queued, sending, retrying, "
                   "unknown, failed).", ["status"], multiprocess_mode="mostrecent")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def count_delivery(result: str) -> None:
    """One webhook delivery: stored, duplicate, spooled, deleted (refused is counted by the
    request hook, which sees every refusal, the limiter's and the body-size cap's too)."""
    DELIVERIES.labels(result=result).inc()


def ingest_timer():
    """A context manager timing one ingest into improvmx_webhook_ingest_seconds."""
    return INGEST_SECONDS.time()


class SpoolCollector:
    """The host's spool depth and age, read at scrape time from the directory every worker
    of the host shares."""

    def __init__(self, spool):
        self.spool = spool

    def collect(self):
        status = self.spool.status()
        yield GaugeMetricFamily("improvmx_spool_messages", "Messages waiting in this host's spool for MongoDB.",
                                value=status["depth"])
        yield GaugeMetricFamily("improvmx_spool_bytes", "Bytes waiting in this host's spool.", value=status["bytes"])
        yield GaugeMetricFamily("improvmx_spool_oldest_age_seconds",
                                "Age of the oldest spooled message (0 when the spool is empty).",
                                value=status["oldest_age_seconds"] or 0)
        yield GaugeMetricFamily("improvmx_spool_corrupt_files", "Spool files set aside as unreadable.",
                                value=status["corrupt"])


class ArchiveGauges:
    """Refresh the MongoDB-derived gauges when this worker's copy is older than 30 s."""

    def __init__(self, database, readers: list[Callable[[], None]] | None = None,
                 interval: float = ARCHIVE_REFRESH_SECONDS):
        self.database = database
        self.readers = readers or []
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()

    def refresh_if_due(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + self.interval  # also after a failure: an outage must not slow every scrape
            try:
                ARCHIVE_MESSAGES.set(self.database.emails.estimated_document_count())
                usage = current_usage(self.database)
                ARCHIVE_BYTES.labels(kind="body").set(usage["bodies"])
                ARCHIVE_BYTES.labels(kind="attachments").set(usage["attachments"])
                for read in self.readers:
                    read()
            except Exception as error:  # noqa: BLE001 - a failed read (outage, a role without collStats,
                # a server lacking the command) must not fail the scrape: the last values stay
                log.warning("archive metrics not refreshed (%s); serving the last values", type(error).__name__)


def render(spool) -> bytes:
    """The whole exposition: every worker's values (or this process's) plus the spool."""
    local = CollectorRegistry(auto_describe=False)
    local.register(SpoolCollector(spool))
    if multiprocess_dir():
        shared = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(shared)
        return generate_latest(shared) + generate_latest(local)
    return generate_latest(REGISTRY) + generate_latest(local)


def _route_label() -> str:
    """The URL rule, never the raw path (a path may carry the webhook secret or an id)."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response):
    route = _route_label()
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    HTTP_REQUESTS.labels(route=route, method=method, status=str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        HTTP_SECONDS.labels(route=route).observe(time.perf_counter() - started)
    if request.endpoint == WEBHOOK_ENDPOINT and response.status_code >= 400:
        count_delivery("refused")
    return response


def register_metrics(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)
