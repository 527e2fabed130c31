"""The background sender: one thread per worker, started by maintenance.py while sending is
configured. Each pass hands sends whose sender died back to their next state, stores the
archive copy of sends not yet archived, then claims one due send (a lease: one sender on
one host per message) and runs one SMTP transaction for it.
"""

from __future__ import annotations

import atexit
import logging
import threading

from pymongo.errors import PyMongoError

from .. import metrics
from ..config import SendingSettings
from . import smtp
from .outbox import SENT, LeaseLost, SendOutbox
from .service import archive_copy

log = logging.getLogger(__name__)

PAUSE_AFTER_ERROR_SECONDS = 5.0
RECORD_ATTEMPTS = 6
RECORD_PAUSE_SECONDS = 5.0


class Sender:
    def __init__(self, archive, outbox: SendOutbox, settings: SendingSettings, poll_seconds: float = 2.0):
        self.archive = archive
        self.outbox = outbox
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="improvmx-sender", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause = self.step()
            except PyMongoError as error:
                log.warning("sending postponed: database unavailable (%s)", type(error).__name__)
                pause = PAUSE_AFTER_ERROR_SECONDS
            except Exception as error:  # noqa: BLE001 - one bad pass must not end sending
                log.error("sending pass failed (%s); retrying in %.0f s", type(error).__name__,
                          PAUSE_AFTER_ERROR_SECONDS)
                pause = PAUSE_AFTER_ERROR_SECONDS
            if pause:
                self._stop.wait(pause)

    def step(self) -> float:
        """One pass; returns how long to wait before the next (0: more may be due)."""
        requeued, unknown = self.outbox.expire_stale()
        if requeued or unknown:
            log.warning("sends of a stopped sender: %d requeued (stopped before the body), %d unknown "
                        "(stopped during it; `flask outbox retry` resends them)", requeued, unknown)
            metrics.SENDS.labels(result="unknown").inc(unknown)
        self.archive_pending()
        item = self.outbox.claim()
        if item is None:
            self.outbox.publish_gauges()
            return self.poll_seconds
        self.send(item)
        return 0

    def send(self, item) -> str | None:
        raw = self.outbox.raw_of(item)
        login = self.settings.login_for(item["sender"])
        outcome = smtp.deliver(self.settings, login, item["sender"], item["recipients"], raw,
                               lambda: self.outbox.mark_body(item))
        status = self._record(item, outcome)
        if status is None:
            return None
        metrics.SENDS.labels(result=status).inc()
        level = logging.INFO if status == SENT else logging.WARNING
        log.log(level, "send %s attempt %d: %s (%s)%s", item["_id"], item["attempts"], status, outcome.reply,
                f"; refused {len(outcome.refused)} recipient(s)" if outcome.refused else "")
        if status == SENT:
            self.archive_one({**item, "status": SENT}, raw)
        return status

    def _record(self, item, outcome: smtp.Outcome) -> str | None:
        """Record the outcome, retrying while MongoDB is briefly away: a 250 left unrecorded
        would turn into `unknown` when the lease expires."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return self.outbox.record(item, outcome)
            except LeaseLost:
                log.error("send %s: its lease expired during the attempt (%s); state left to the sweep",
                          item["_id"], outcome.result)
                return None
            except PyMongoError as error:
                log.warning("send %s: outcome %s not recorded yet (%s), attempt %d of %d", item["_id"],
                            outcome.result, type(error).__name__, attempt + 1, RECORD_ATTEMPTS)
                if self._stop.wait(RECORD_PAUSE_SECONDS):
                    break
        log.error("send %s: outcome %s (%s) not recorded; when its lease expires it becomes retrying if the "
                  "body never went out, else unknown", item["_id"], outcome.result, outcome.reply)
        return None

    def archive_pending(self) -> None:
        for item in self.outbox.not_archived():
            self.archive_one(item, self.outbox.raw_of(item))

    def archive_one(self, item, raw: bytes) -> None:
        """Store the sent copy; on failure the next pass tries again (ingest is idempotent)."""
        try:
            stored = self.outbox.sends.find_one({"_id": item["_id"]}, {"sent_at": 1, "copy_pending": 1})
            if stored is None or not stored.get("copy_pending"):
                return
            email_id = archive_copy(self.archive, {**item, "sent_at": stored.get("sent_at")}, raw)
            self.outbox.set_archived(item, email_id)
        except Exception as error:  # noqa: BLE001 - the send is done; its copy is retried next pass
            log.warning("sent copy of %s not archived yet (%s); retried on the next pass", item["_id"],
                        type(error).__name__)
