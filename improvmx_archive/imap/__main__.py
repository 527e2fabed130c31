"""improvmx-imap: `python -m improvmx_archive.imap` serves the archive over IMAP (read-only).

Reads the same settings (.env) and MongoDB as the web service; any number of these
processes may run on any number of hosts (UIDs come from MongoDB, the numbering pass runs
under a lease). SIGHUP reloads the TLS certificate; SIGTERM stops.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

# One process, one registry: never the gunicorn workers' multiprocess directory.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("prometheus_multiproc_dir", None)

from pymongo.errors import PyMongoError  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from ..access.audit import AuditTrail  # noqa: E402
from ..access.authn import Authenticator  # noqa: E402
from ..access.keys import Keys  # noqa: E402
from ..access.people import People  # noqa: E402
from ..archive import Archive  # noqa: E402
from ..config import EXIT_CONFIG_ERROR, ConfigError, ImapSettings, Settings, error_line  # noqa: E402
from ..db import make_client  # noqa: E402
from ..requestlog import configure_logging  # noqa: E402
from ..security import Lockout  # noqa: E402
from . import metrics  # noqa: E402
from .mailboxes import ensure_seen_indexes  # noqa: E402
from .numbering import Numbering, ensure_indexes  # noqa: E402
from .server import ImapService  # noqa: E402
from .tls import ReloadingContextFactory  # noqa: E402

log = logging.getLogger("improvmx_archive.imap")
THREADS = 20


class NumberingLoop:
    """The numbering pass every few seconds, in a thread, never two at once in a process."""

    def __init__(self, numbering: Numbering):
        self.numbering = numbering
        self.running = False
        self.indexes_ready = False
        self._postponed = False

    def tick(self):
        if self.running:
            return None
        self.running = True
        deferred = deferToThread(self._pass)
        deferred.addErrback(self._failed)
        deferred.addBoth(self._done)
        return None

    def _pass(self) -> int:
        if not self.indexes_ready:
            ensure_indexes(self.numbering.database)
            ensure_seen_indexes(self.numbering.database)
            self.indexes_ready = True
        numbered = self.numbering.run()
        if numbered:
            metrics.NUMBERED.inc(numbered)
            log.info("imap: numbered %d new message(s)", numbered)
        self._postponed = False
        return numbered

    def _failed(self, failure):
        if failure.check(PyMongoError):
            if not self._postponed:
                log.warning("imap: numbering postponed, MongoDB unavailable (%s)", failure.type.__name__)
            self._postponed = True
        else:
            log.error("imap: numbering pass failed (%s)", failure.getErrorMessage())

    def _done(self, _):
        self.running = False


def notify_ready() -> None:
    """Tell systemd (Type=notify) the ports are open, so `systemctl start` returns then."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(address)
        notify.sendall(b"READY=1")


def main() -> int:
    try:
        settings = Settings.from_env()
        imap = ImapSettings.from_env()
    except ConfigError as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_CONFIG_ERROR
    configure_logging(settings)
    if not imap.enabled:
        print("improvmx-imap: IMAP_ENABLED is not true; nothing to serve", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        tls = ReloadingContextFactory(imap.tls_cert, imap.tls_key)
    except Exception as error:  # noqa: BLE001 - any load failure stops start-up with one line
        print(f"improvmx-imap: cannot load IMAP_TLS_CERT/IMAP_TLS_KEY ({type(error).__name__})", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    client = make_client(settings)
    database = client[settings.mongo_db]
    archive = Archive(database)
    people, keys = People(database), Keys(database)
    service = ImapService(archive, Authenticator(settings.api_keys, people, keys), Lockout(database),
                          AuditTrail(database), context_factory=tls, poll_interval=imap.poll_interval)

    reactor.suggestThreadPoolSize(THREADS)
    reactor.listenSSL(imap.port, service, tls, interface=imap.host)
    log.info("imap: listening on %s:%d (TLS)", imap.host, imap.port)
    if imap.starttls_port:
        reactor.listenTCP(imap.starttls_port, service, interface=imap.host)
        log.info("imap: listening on %s:%d (STARTTLS)", imap.host, imap.starttls_port)
    if imap.metrics_port:
        metrics.serve(imap.metrics_port)
    numbering = NumberingLoop(Numbering(archive, settings.domains))
    LoopingCall(numbering.tick).start(imap.number_interval, now=True)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(tls.reload))
    reactor.callWhenRunning(notify_ready)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
