"""The IMAP protocol: Twisted's IMAP4Server, taught what a read-only archive view needs.

Twisted parses commands and arguments; this subclass answers them. What it had to learn:
- every command that reads MongoDB runs in a thread (deferToThread) and later commands of
  the same connection wait for it (pipelined FETCHes never interleave), so one slow query
  never stalls other connections;
- SELECT/EXAMINE answer UIDNEXT, PERMANENTFLAGS and UNSEEN (Twisted sends neither);
- LIST/LSUB carry mailbox attributes (\\Sent), not message flags; LSUB lists everything;
- SEARCH is one MongoDB query (ISearchableMailbox's idea, without its str/bytes bugs), and
  its terms may come as literals (non-ASCII with CHARSET UTF-8);
- FETCH streams batches built in a thread, paced by the transport (memory stays flat),
  with sections and partial ranges as RFC 3501 names them (`BODY[]<0>`, not `<0.100>`);
- every write (STORE of flags other than \\Seen, COPY, MOVE, APPEND, EXPUNGE, CREATE,
  DELETE, RENAME) is a tagged NO saying the archive is read-only, never BAD;
- LOGIN and AUTHENTICATE PLAIN only over TLS; no exception text ever reaches a client;
- NAMESPACE, CLOSE/UNSELECT without expunging, IDLE and NOOP that report new and vanished
  mail, pipelined UID FETCHes answered together (mbsync sends dozens at once).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import PyMongoError
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.mail.imap4 import (
    DontQuoteMe, IllegalClientResponse, IllegalIdentifierError, IMAP4Server, _parseMbox, collapseNestedLists,
    parseIdList, parseNestedParens, wildcardToRegexp,
)
from zope.interface import implementer

from . import login as logins
from .mailboxes import DELIMITER, INBOX, MailboxSpec, Reader
from .message import fetch_items, needs_body
from .metrics import COMMANDS, CONNECTIONS, CONNECTIONS_OPEN, LOGINS
from .search import SearchCompiler, SearchError

log = logging.getLogger(__name__)

READ_ONLY = b"[CANNOT] The archive is read-only: messages cannot be changed, copied, moved, added or deleted"
READ_ONLY_MAILBOXES = b"[CANNOT] The archive is read-only: its mailboxes cannot be created, deleted or renamed"
UNAVAILABLE = b"[UNAVAILABLE] The archive is unavailable; try again shortly"
SERVER_ERROR = b"[SERVERBUG] The command failed on the server"
SEEN_FLAG = "\\Seen"
FLAGS_LINE = b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
FETCH_BATCH = 100
FETCH_BATCH_BYTES = 4 * 1024 * 1024
BODY_BATCH = 100
POSTAUTH_TIMEOUT = 30 * 60
TRAILING_LITERAL = re.compile(rb"\{(\d{1,6})\}$")
PIPELINED_FETCH = re.compile(rb"^(\S+) UID FETCH (\S+) (.+)$", re.I)
KNOWN_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "SELECT", "EXAMINE", "CREATE", "DELETE",
    "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "UNSELECT",
    "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "IDLE", "NAMESPACE"})


def _quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def byte_runs(entries: list[tuple], sizes: dict[int, int], limit: int = FETCH_BATCH_BYTES) -> list[list[tuple]]:
    """Entries (index, uid, command) cut, in order, into runs of at most `limit` bytes of
    messages (a larger message alone), so a batch of big messages never sits in memory at once."""
    runs: list[list[tuple]] = [[]]
    total = 0
    for entry in entries:
        size = sizes.get(entry[1], 0)
        if runs[-1] and size and total + size > limit:
            runs.append([])
            total = 0
        runs[-1].append(entry)
        total += size
    return runs


@implementer(IPushProducer)
class ArchiveIMAPServer(IMAP4Server):
    """One IMAP connection onto the archive."""

    IDENT = b"improvmx-archive IMAP4rev1 ready (read-only)"
    POSTAUTH_TIMEOUT = POSTAUTH_TIMEOUT

    def __init__(self, service: "ImapService", context_factory=None):
        super().__init__(contextFactory=context_factory)
        self.service = service
        self.principal = None
        self.reader: Reader | None = None
        self.box: MailboxSpec | None = None
        self.uids: list[int] = []
        self.through = 0
        self.readonly = True
        self.seen: set[int] = set()  # this reader's \Seen UIDs, as of SELECT or the last NOOP
        self._paused: defer.Deferred | None = None
        self._idle: LoopingCall | None = None
        self._idle_tag: bytes | None = None
        self._fetch_items: bytes | None = None  # a UID FETCH's item list as sent

    # -- connection -----------------------------------------------------------------------

    @property
    def peer_ip(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        return getattr(peer, "host", "unknown")

    @property
    def secure(self) -> bool:
        return self.startedTLS or ISSLTransport(self.transport, None) is not None

    def connectionMade(self):
        CONNECTIONS.inc()
        CONNECTIONS_OPEN.inc()
        super().connectionMade()

    def connectionLost(self, reason):
        CONNECTIONS_OPEN.dec()
        self._stop_idle()
        if self._paused is not None:
            paused, self._paused = self._paused, None
            paused.callback(None)
        super().connectionLost(reason)

    def capabilities(self):
        caps = {b"AUTH": [b"PLAIN"] if self.secure else []}
        if not self.secure:
            caps[b"LOGINDISABLED"] = None
            if self.ctx and self.canStartTLS:
                caps[b"STARTTLS"] = None
        caps[b"NAMESPACE"] = None
        caps[b"IDLE"] = None
        caps[b"UNSELECT"] = None
        return caps

    def lineReceived(self, line):
        if self.blocked is not None:
            self.blocked.append(line)
            return
        self.resetTimeout()
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:  # noqa: BLE001 - the client sees a generic BAD, never the exception
            log.exception("imap: command failed")
            self.sendBadResponse(None, SERVER_ERROR)

    def _IMAP4Server__ebDispatch(self, failure, tag):  # Twisted's argument-parsing errback
        if failure.check(IllegalClientResponse):
            self.sendBadResponse(tag, b"Illegal syntax: " + str(failure.value).encode("ascii", "replace"))
        else:
            log.error("imap: command failed: %s", failure.getErrorMessage())
            self.sendBadResponse(tag, SERVER_ERROR)

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        name = cmd.decode("ascii", "replace").upper()
        COMMANDS.labels(command=name if name in KNOWN_COMMANDS else "OTHER").inc()
        log.debug("imap: %s %s", name, (rest or b"")[:200] if name not in ("LOGIN", "AUTHENTICATE") else b"...")
        return super().dispatchCommand(tag, cmd, rest, uid)

    # -- running work off the reactor -----------------------------------------------------

    def _work(self, tag: bytes, work: Callable[[], Any], done: Callable[[Any], Any]) -> None:
        """Run work in a thread with this connection's later commands held back; done(result)
        answers in the reactor. A MongoDB outage answers NO [UNAVAILABLE]."""
        if self.blocked is None:
            self.blocked = []

        def failed(failure):
            if failure.check(PyMongoError):
                log.warning("imap: MongoDB unavailable (%s)", failure.type.__name__)
                self.sendNegativeResponse(tag, UNAVAILABLE)
            else:
                log.error("imap: command failed", exc_info=(failure.type, failure.value, failure.tb))
                self.sendBadResponse(tag, SERVER_ERROR)

        def finished(_):
            if self.transport is not None and self.transport.connected:
                self._unblock()

        deferred = deferToThread(work)
        deferred.addCallback(done).addErrback(failed).addBoth(finished)

    # -- IPushProducer: FETCH waits while the client reads slower than we write ------------

    def pauseProducing(self):
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self):
        if self._paused is not None:
            paused, self._paused = self._paused, None
            paused.callback(None)

    def stopProducing(self):
        self.resumeProducing()

    # -- not authenticated ----------------------------------------------------------------

    def do_LOGIN(self, tag, user, passwd):
        if not self.secure:
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] LOGIN only over TLS; use STARTTLS first")
            return
        self._login(tag, user.decode("utf-8", "replace"), passwd.decode("utf-8", "replace"), b"LOGIN")

    def do_AUTHENTICATE(self, tag, mechanism):
        if not self.secure:
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] AUTHENTICATE only over TLS; use STARTTLS first")
            return
        if mechanism.upper() != b"PLAIN":
            self.sendNegativeResponse(tag, b"AUTHENTICATE method unsupported (PLAIN is)")
            return
        self.parseState = "pending"
        self._pendingLiteral = defer.Deferred()
        self.sendContinuationRequest(None)
        self._pendingLiteral.addCallback(self._plain_response, tag)

    def _plain_response(self, line: bytes, tag: bytes) -> None:
        if line.strip() == b"*":
            self.sendBadResponse(tag, b"AUTHENTICATE cancelled")
            return
        try:
            _, user, password = base64.b64decode(line.strip(), validate=True).split(b"\0", 2)
        except (binascii.Error, ValueError):
            self.sendBadResponse(tag, b"AUTHENTICATE PLAIN needs base64 of authzid NUL user NUL password")
            return
        self._login(tag, user.decode("utf-8", "replace"), password.decode("utf-8", "replace"), b"AUTHENTICATE")

    def _login(self, tag: bytes, user: str, password: str, command: bytes) -> None:
        ip = self.peer_ip
        service = self.service

        def work():
            try:
                principal = logins.check_login(service.authenticator, service.lockout, user, password, ip)
            except logins.LoginRefused as refusal:
                _record_refusal(refusal)
                raise
            try:
                logins.record(service.audit_trail, "login", "ok", principal=principal, ip=ip)
            except PyMongoError:
                raise logins.LoginRefused(logins.UNAVAILABLE, "unavailable") from None
            return principal

        def _record_refusal(refusal):
            try:
                logins.record(service.audit_trail, "login", "refused", ip=ip, detail=refusal.reason)
            except PyMongoError:
                log.error("imap: refused login not recorded (MongoDB unavailable)")

        def refused(failure):
            failure.trap(logins.LoginRefused)
            LOGINS.labels(result=failure.value.reason).inc()
            self.sendNegativeResponse(tag, failure.value.text.encode())

        def accepted(principal):
            LOGINS.labels(result="ok").inc()
            self.principal = principal
            self.reader = Reader(service.archive, principal)
            self.state = "auth"
            self.setTimeout(self.POSTAUTH_TIMEOUT)
            self.sendPositiveResponse(tag, b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] "
                                      + command + b" completed")

        if self.blocked is None:
            self.blocked = []
        deferred = deferToThread(work)
        deferred.addCallbacks(accepted, refused)
        deferred.addErrback(lambda failure: (log.error("imap: login failed: %s", failure.getErrorMessage()),
                                             self.sendNegativeResponse(tag, UNAVAILABLE)))
        deferred.addBoth(lambda _: self._unblock() if self.transport and self.transport.connected else None)

    unauth_LOGIN = (do_LOGIN, IMAP4Server.arg_astring, IMAP4Server.arg_finalastring)
    unauth_AUTHENTICATE = (do_AUTHENTICATE, IMAP4Server.arg_atom)

    # -- authenticated --------------------------------------------------------------------

    def do_NAMESPACE(self, tag):
        self.sendUntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)

    def do_LIST(self, tag, reference, pattern, command):
        reference = _parseMbox(reference)
        pattern = _parseMbox(pattern)

        def done(boxes):
            if not pattern:
                self.sendUntaggedResponse(command + b' (\\Noselect) "/" ""')
            else:
                matcher = wildcardToRegexp(reference + pattern, DELIMITER)
                for box in boxes:
                    if matcher.fullmatch(box.name) or (box.name == INBOX and matcher.fullmatch("inbox")):
                        attributes = ("\\HasNoChildren", *box.attributes)
                        self.sendUntaggedResponse(collapseNestedLists([
                            DontQuoteMe(command), [DontQuoteMe(a.encode()) for a in attributes], DELIMITER.encode(),
                            box.name.encode("imap4-utf-7")]))
            self.sendPositiveResponse(tag, command + b" completed")

        self._work(tag, self.reader.mailboxes, done)

    auth_LIST = select_LIST = (do_LIST, IMAP4Server.arg_astring, IMAP4Server.arg_astring, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, IMAP4Server.arg_astring, IMAP4Server.arg_astring, b"LSUB")

    def do_SUBSCRIBE(self, tag, name):
        self.sendPositiveResponse(tag, b"SUBSCRIBE completed (every mailbox is subscribed)")

    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, IMAP4Server.arg_finalastring)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_SUBSCRIBE, IMAP4Server.arg_finalastring)

    def do_STATUS(self, tag, name, names):
        name = _parseMbox(name)
        wanted = [item.decode("ascii", "replace").upper() for item in names]
        reader = self.reader

        def work():
            box = reader.mailbox(name)
            return None if box is None else (box, reader.status(box))

        def done(found):
            if found is None:
                self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
                return
            box, status = found
            items = " ".join(f"{item} {status[item]}" for item in wanted if item in status)
            self.sendUntaggedResponse(b"STATUS " + collapseNestedLists([box.name.encode("imap4-utf-7")])
                                      + b" (" + items.encode() + b")")
            self.sendPositiveResponse(tag, b"STATUS completed")

        self._work(tag, work, done)

    auth_STATUS = select_STATUS = (do_STATUS, IMAP4Server.arg_astring, IMAP4Server.arg_plist)

    def do_SELECT(self, tag, name, readonly, command):
        name = _parseMbox(name)
        reader = self.reader
        self._close_mailbox()

        def work():
            box = reader.mailbox(name)
            if box is None:
                return None
            validity, through = reader.uidvalidity()
            uids = reader.uids(box, through)
            seen = set(reader.seen_uids())
            first_unseen = next((number for number, uid in enumerate(uids, 1) if uid not in seen), None)
            return box, validity, through, uids, first_unseen, seen

        def done(found):
            if found is None:
                self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
                return
            box, validity, through, uids, first_unseen, seen = found
            self.box, self.through, self.uids, self.readonly, self.seen = box, through, list(uids), readonly, seen
            self.sendUntaggedResponse(FLAGS_LINE)
            self.sendUntaggedResponse(b"%d EXISTS" % len(self.uids))
            self.sendUntaggedResponse(b"0 RECENT")
            if first_unseen:
                self.sendPositiveResponse(None, b"[UNSEEN %d] First unseen" % first_unseen)
            self.sendPositiveResponse(None, b"[UIDVALIDITY %d] UIDs valid" % validity)
            self.sendPositiveResponse(None, b"[UIDNEXT %d] Predicted next UID" % (through + 1))
            permanent = b"()" if readonly else b"(\\Seen)"
            self.sendPositiveResponse(None, b"[PERMANENTFLAGS " + permanent + b"] Only \\Seen can change")
            self.state = "select"
            self.sendPositiveResponse(tag, (b"[READ-ONLY] " if readonly else b"[READ-WRITE] ") + command
                                      + b" completed")

        self._work(tag, work, done)

    auth_SELECT = select_SELECT = (do_SELECT, IMAP4Server.arg_astring, False, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (do_SELECT, IMAP4Server.arg_astring, True, b"EXAMINE")

    def _close_mailbox(self):
        self._stop_idle()
        self.box, self.uids, self.through = None, [], 0
        if self.state == "select":
            self.state = "auth"

    def do_CLOSE(self, tag):
        self._close_mailbox()
        self.sendPositiveResponse(tag, b"CLOSE completed (nothing is expunged: the archive is read-only)")

    select_CLOSE = select_UNSELECT = (do_CLOSE,)

    def do_read_only(self, tag, *args, **kwargs):
        self.sendNegativeResponse(tag, READ_ONLY)

    def do_mailboxes_read_only(self, tag, *args):
        self.sendNegativeResponse(tag, READ_ONLY_MAILBOXES)

    auth_CREATE = select_CREATE = (do_mailboxes_read_only, IMAP4Server.arg_finalastring)
    auth_DELETE = select_DELETE = (do_mailboxes_read_only, IMAP4Server.arg_finalastring)
    auth_RENAME = select_RENAME = (do_mailboxes_read_only, IMAP4Server.arg_astring, IMAP4Server.arg_finalastring)
    auth_APPEND = select_APPEND = (do_read_only, IMAP4Server.arg_astring, IMAP4Server.opt_plist,
                                   IMAP4Server.opt_datetime, IMAP4Server.arg_literal)
    select_COPY = select_MOVE = (do_read_only, IMAP4Server.arg_seqset, IMAP4Server.arg_finalastring)
    select_EXPUNGE = (do_read_only,)

    # -- selected: changes since SELECT ---------------------------------------------------

    def _poll(self) -> Callable[[], Any]:
        """A thread function: the mailbox's new and vanished UIDs since the snapshot."""
        reader, box, through, known = self.reader, self.box, self.through, list(self.uids)

        def work():
            _, now_through = reader.uidvalidity()
            gone: set[int] = set()
            if known and reader.count(box, through) < len(known):
                gone = set(known) - set(reader.uids(box, through))
            new = list(reader.uids(box, now_through, low=through + 1)) if now_through > through else []
            return box, now_through, gone, new, set(reader.seen_uids())

        return work

    def _apply_poll(self, result) -> None:
        box, now_through, gone, new, seen = result
        if box is not self.box:
            return  # the mailbox changed meanwhile
        self.seen = seen
        for number in sorted((i for i, uid in enumerate(self.uids, 1) if uid in gone), reverse=True):
            del self.uids[number - 1]
            self.sendUntaggedResponse(b"%d EXPUNGE" % number)
        self.through = max(self.through, now_through)
        if new:
            self.uids.extend(uid for uid in new if not self.uids or uid > self.uids[-1])
        if new or gone:
            self.sendUntaggedResponse(b"%d EXISTS" % len(self.uids))

    def do_NOOP(self, tag):
        if self.state != "select" or self.box is None:
            self.sendPositiveResponse(tag, b"NOOP completed")
            return
        if self.blocked is None:
            self.blocked = []

        def polled(result):
            self._apply_poll(result)
            self.sendPositiveResponse(tag, b"NOOP completed")

        def unavailable(failure):
            # NOOP cannot fail: without the database there is just nothing new to report.
            log.warning("imap: NOOP without updates, MongoDB unavailable (%s)", failure.type.__name__)
            self.sendPositiveResponse(tag, b"NOOP completed (the archive is unavailable; no updates)")

        deferred = deferToThread(self._poll())
        deferred.addCallbacks(polled, unavailable)
        deferred.addBoth(lambda _: self._unblock() if self.transport and self.transport.connected else None)

    unauth_NOOP = auth_NOOP = select_NOOP = (do_NOOP,)
    select_CHECK = (do_NOOP,)

    def do_IDLE(self, tag):
        self._idle_tag = tag
        self.lastState = self.parseState
        self.parseState = "idle"
        self.sendContinuationRequest(b"idling")
        if self.state == "select" and self.box is not None:
            self._idle = LoopingCall(self._idle_poll)
            self._idle.start(self.service.poll_interval, now=False)

    auth_IDLE = select_IDLE = (do_IDLE,)

    def _idle_poll(self):
        if self._idle is None:
            return None
        deferred = deferToThread(self._poll())
        deferred.addCallback(lambda result: self._apply_poll(result) if self._idle is not None else None)
        deferred.addErrback(lambda failure: log.warning("imap: IDLE poll failed (%s)", failure.type.__name__))
        return deferred

    def _stop_idle(self):
        if self._idle is not None:
            idle, self._idle = self._idle, None
            if idle.running:
                idle.stop()

    def parse_idle(self, line):
        self._stop_idle()
        self.parseState = self.lastState
        del self.lastState
        tag, self._idle_tag = self._idle_tag, None
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(tag, b"IDLE terminated")
        else:
            self.sendBadResponse(tag, b"IDLE ended without DONE")

    # -- selected: message sets -----------------------------------------------------------

    def _uids_of(self, message_set, uid: bool) -> list[int]:
        """The snapshot's UIDs a sequence set (or UID set) names, ascending."""
        uids = self.uids
        if not uids:
            return []
        chosen: set[int] = set()
        for low, high in message_set.ranges:
            if uid:
                low = uids[-1] if low is None else low
                high = uids[-1] if high is None else high
                low, high = min(low, high), max(low, high)
                chosen.update(uids[bisect.bisect_left(uids, low):bisect.bisect_right(uids, high)])
            else:
                low = len(uids) if low is None else low
                high = len(uids) if high is None else high
                low, high = min(low, high), max(low, high)
                chosen.update(uids[max(low, 1) - 1:min(high, len(uids))])
        return sorted(chosen)

    def _number_of(self, uid: int) -> int:
        return bisect.bisect_left(self.uids, uid) + 1

    # -- FETCH ----------------------------------------------------------------------------

    def do_FETCH(self, tag, messages, query, uid=0):
        if not query:
            self.sendPositiveResponse(tag, b"FETCH completed")
            return
        if self.blocked is None:
            self.blocked = []
        self.setTimeout(None)
        self.transport.registerProducer(self, True)
        commands = [(tag, self._uids_of(messages, bool(uid)))]
        items, self._fetch_items = self._fetch_items, None
        # Let the rest of what the client already sent be queued first: pipelined UID FETCHes
        # of the same items (mbsync sends dozens) are then answered from shared queries.
        reactor.callLater(0, self._fetch_group, commands, query, uid, items)

    def _gather_pipelined(self, commands: list, items: bytes | None) -> None:
        """Move queued `UID FETCH <set> <same items>` commands into this group, in order."""
        while items and self.blocked:
            found = PIPELINED_FETCH.match(self.blocked[0])
            if not found or found.group(3) != items:
                return
            try:
                message_set = parseIdList(found.group(2))
            except IllegalIdentifierError:
                return
            self.blocked.pop(0)
            COMMANDS.labels(command="UID").inc()
            commands.append((found.group(1), self._uids_of(message_set, True)))

    def _fetch_group(self, commands: list, query, uid, items: bytes | None) -> None:
        if self.transport is None or not self.transport.connected:
            return
        if uid:
            self._gather_pipelined(commands, items)
        reader, box, through, readonly = self.reader, self.box, self.through, self.readonly
        body = needs_body(query)
        marks_seen = not readonly and any(item.type in ("rfc822", "rfc822text") or
                                          (item.type == "body" and not item.peek and
                                           (item.empty or item.header or item.text or item.mime or item.part))
                                          for item in query)
        step = BODY_BATCH if body else FETCH_BATCH
        # (command, uid) in answer order; a command without messages still gets its OK.
        entries = [(number, value) for number, (_, wanted) in enumerate(commands) for value in (wanted or [None])]
        last_of = {number: index for index, (number, _) in enumerate(entries)}
        seen = set(self.seen)
        answered = [0]  # how many commands of the group have their tagged OK

        def build(batch: list[int]) -> tuple[dict[int, list[bytes]], list[Any]]:
            if body:
                found = reader.messages(batch, box, through)
                metadata = {value: meta for value, (meta, _) in found.items()}
            else:
                found, metadata = {}, reader.metadata(batch, box, through)
            if marks_seen:
                reader.mark_seen({value: meta["_id"] for value, meta in metadata.items()}, True)
                seen.update(metadata)
            answers = {}
            for value, meta in metadata.items():
                flags = [SEEN_FLAG] if value in seen else []
                raw = found[value][1] if body else None
                answers[value] = [b"* %d FETCH " % self._number_of(value),
                                  *fetch_items(query, value, flags, meta["size"], meta["received_at"], raw,
                                               bool(uid), with_flags=marks_seen), b"\r\n"]
            fetched = [meta["_id"] for meta in metadata.values()] if body else []
            if fetched:  # recorded before the bytes go out; a failure answers NO instead
                logins.record(self.service.audit_trail, "fetch", "ok", principal=self.principal,
                              email_ids=fetched, ip=self.peer_ip)
            return answers, fetched

        @defer.inlineCallbacks
        def send(run_entries: list[tuple], building: defer.Deferred):
            """Write one run's answers, in order, once built; False when the client is gone."""
            answers, _ = yield building
            if self.transport is None or not self.transport.connected:
                return False
            for index, value, number in run_entries:
                if value in answers:
                    self.transport.writeSequence(answers[value])
                if last_of[number] == index:
                    self.sendPositiveResponse(commands[number][0], b"FETCH completed")
                    answered[0] = number + 1
            if self._paused is not None:
                yield self._paused
            return True

        @defer.inlineCallbacks
        def run():
            # Each run is built (database reads, rebuild, audit entry) in a thread while the one
            # before it is written, so the database and this process work side by side: at most
            # two runs (2 x FETCH_BATCH_BYTES) are held at once. A client that leaves may leave
            # one run audited as fetched but unsent: the trail over-reports, never under-reports.
            ahead = None
            try:
                for start in range(0, len(entries), step):
                    chunk = list(enumerate(entries[start:start + step], start))
                    values = sorted({value for _, (_, value) in chunk if value is not None})
                    sizes = {}
                    if body and values:
                        found = yield deferToThread(reader.metadata, values, box, through)
                        sizes = {value: meta["size"] for value, meta in found.items()}
                    for run_entries in byte_runs([(index, value, number) for index, (number, value) in chunk],
                                                 sizes):
                        wanted_now = sorted({value for _, value, _ in run_entries if value is not None})
                        previous, ahead = ahead, (run_entries, deferToThread(build, wanted_now) if wanted_now
                                                  else defer.succeed(({}, [])))
                        if previous is not None and not (yield send(*previous)):
                            return
                if ahead is not None:
                    yield send(*ahead)
                    ahead = None
            finally:
                if ahead is not None:  # stopped early: the run built ahead is never sent
                    ahead[1].addErrback(lambda _: None)

        def failed(failure):
            # Commands of the group not yet answered get the same NO (their messages unsent).
            text = UNAVAILABLE if failure.check(PyMongoError) else SERVER_ERROR
            if failure.check(PyMongoError):
                log.warning("imap: FETCH stopped, MongoDB unavailable (%s)", failure.type.__name__)
            else:
                log.error("imap: FETCH failed", exc_info=(failure.type, failure.value, failure.tb))
            for tag, _ in commands[answered[0]:]:
                self.sendNegativeResponse(tag, text)

        def cleanup(_):
            if marks_seen:
                self.seen |= seen
            if self.transport is not None and self.transport.connected:
                self.transport.unregisterProducer()
                self.setTimeout(self.POSTAUTH_TIMEOUT)
                self._unblock()

        run().addErrback(failed).addBoth(cleanup)

    select_FETCH = (do_FETCH, IMAP4Server.arg_seqset, IMAP4Server.arg_fetchatt)

    # -- STORE: \Seen only ----------------------------------------------------------------

    def do_STORE(self, tag, messages, mode, flags, uid=0):
        mode = mode.upper()
        silent = mode.endswith(b".SILENT")
        names = {flag.decode("ascii", "replace").lower() if isinstance(flag, bytes) else str(flag).lower()
                 for flag in flags}
        if names - {SEEN_FLAG.lower()} or self.readonly:
            self.sendNegativeResponse(tag, READ_ONLY if not self.readonly else
                                      b"[READ-ONLY] The mailbox was opened with EXAMINE")
            return
        if mode.startswith(b"-"):
            seen = False
        else:
            seen = bool(names)
        wanted = self._uids_of(messages, bool(uid))
        reader, box, through = self.reader, self.box, self.through

        def work():
            metadata = reader.metadata(wanted, box, through)
            reader.mark_seen({value: meta["_id"] for value, meta in metadata.items()}, seen)
            return sorted(metadata)

        def done(changed):
            if seen:
                self.seen.update(changed)
            else:
                self.seen.difference_update(changed)
            if not silent:
                flag = b"\\Seen" if seen else b""
                for value in changed:
                    extra = b" UID %d" % value if uid else b""
                    self.sendUntaggedResponse(b"%d FETCH (FLAGS (%s)%s)" % (self._number_of(value), flag, extra))
            self.sendPositiveResponse(tag, b"STORE completed")

        self._work(tag, work, done)

    select_STORE = (do_STORE, IMAP4Server.arg_seqset, IMAP4Server.arg_atom, IMAP4Server.arg_flaglist)

    # -- SEARCH ---------------------------------------------------------------------------

    def do_SEARCH(self, tag, charset, keys, uid=0):
        if charset and charset.upper() not in (b"UTF-8", b"US-ASCII"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return
        reader, box, through, snapshot = self.reader, self.box, self.through, set(self.uids)
        compiler = SearchCompiler(reader.scoped.filter_for, self._uids_of, reader.seen_uids)

        def work():
            try:
                condition = compiler.compile(keys)
            except SearchError as error:
                return error
            found = reader.uids_matching(box, through, condition)
            return [value for value in found if value in snapshot]

        def done(found):
            if isinstance(found, SearchError):
                self.sendBadResponse(tag, str(found).encode("utf-8", "replace"))
                return
            shown = found if uid else [self._number_of(value) for value in found]
            self.sendUntaggedResponse(b"SEARCH" + b"".join(b" %d" % value for value in shown))
            self.sendPositiveResponse(tag, b"SEARCH completed")

        self._work(tag, work, done)

    def arg_searchkeys(self, line):
        """Search keys; a literal (how clients send non-ASCII terms: `TEXT {6}`) is read and
        put back as a quoted string (Twisted's own parser takes the line as it came)."""
        found = TRAILING_LITERAL.search(line)
        if not found:
            return parseNestedParens(line), b""
        head = line[:found.start()]
        literal = self._stringLiteral(int(found.group(1)))
        literal.addCallback(lambda result: self.arg_searchkeys(head + _quoted(result[0]) + result[1]))
        return literal

    select_SEARCH = (do_SEARCH, IMAP4Server.opt_charset, arg_searchkeys)

    def do_UID(self, tag, command, line):
        command = command.upper()
        if command in (b"COPY", b"MOVE", b"EXPUNGE"):
            self.sendNegativeResponse(tag, READ_ONLY)
            return
        if command not in (b"FETCH", b"STORE", b"SEARCH"):
            raise IllegalClientResponse(command)
        if command == b"FETCH":  # the items as sent, to recognise pipelined repeats
            self._fetch_items = line.split(b" ", 1)[1] if b" " in line else None
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, IMAP4Server.arg_atom, IMAP4Server.arg_line)


class ImapService(protocol.ServerFactory):
    """What every connection shares: the archive, the authenticator and the lockout."""

    def __init__(self, archive, authenticator, lockout, audit_trail, context_factory=None, poll_interval: float = 10.0):
        self.archive = archive
        self.authenticator = authenticator
        self.lockout = lockout
        self.audit_trail = audit_trail
        self.context_factory = context_factory
        self.poll_interval = poll_interval
        self.started = time.monotonic()

    def buildProtocol(self, addr):
        server = ArchiveIMAPServer(self, self.context_factory)
        server.factory = self
        return server


