"""The audit trail: who read, downloaded, changed or was refused which message, hash-chained
in MongoDB so that editing, removing or reordering an entry is detected.

Entries (collection `audit_trail`) are numbered: `_id` is the sequence number, unique by
construction, and each entry holds `prev`, the hash of the entry before it, and `hash`, a
SHA-256 over its own canonical content (sequence number and `prev` included). Appending reads
the head record, inserts the next number and, when another worker or host took that number
first (DuplicateKeyError), re-chains after the newest entry written meanwhile and tries again.
One insert is the whole append, so the chain never forks and no entry is lost to a race. The
threads of one process appending at the same moment share that insert (group commit).

Two small records in `audit_state` complete the chain:
- `head`: the newest sequence number and hash, advanced after each insert (never backwards),
  unacknowledged (w=0): it is a hint that may lag, so it costs no second durable write per
  entry. Verification uses it to notice that the newest entries were removed.
- `floor`: where a trim cut the chain (the first kept number and the hash it follows), written
  before the trimmed entries are deleted, so a trimmed head is told apart from a removed one.

Failure cases (each leaves a chain that verifies):
- A crash before the insert: no entry; an audited read is not served (the entry is written
  before the answer), a change already made stays unrecorded (documented in docs/security.md).
- A crash between the insert and the head update: the head lags; the next append steps over
  the entries the head does not know yet, and verification accepts a head behind the last entry.
- Two appenders on one number: one insert wins, the other re-chains after it and retries (in
  a batch, the entries before the taken number stay and the rest are re-chained).
- A crash during a trim after the floor moved: the entries below it wait (verification skips
  and counts them); the next trim deletes them.

What verification cannot detect: someone with write access to MongoDB who rewrites an entry
and every entry after it, recomputing the hashes and the head, leaves a valid chain; removing
the newest entries together with moving the head back is likewise invisible. Anchors kept
outside the database close that gap: `flask audit verify` prints the head (number and hash),
and `--anchor SEQ:HASH` checks that an entry noted earlier is still the same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from flask import current_app, g, has_request_context, request
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from ..db import DURABLE
from ..errors import ApiError
from ..listing import CursorCodec, int_param
from ..query import QueryError
from ..security import client_ip
from ..times import api_time, as_utc
from .principal import OPERATOR_NAME, Principal

log = logging.getLogger(__name__)

ENTRIES = "audit_trail"
STATE = "audit_state"
HEAD = "head"
FLOOR = "floor"
GENESIS = "0" * 64  # what the very first entry follows
ANONYMOUS = {"name": "anonymous", "person_id": None, "key_id": None, "via": None}  # nobody signed in yet
VERSION = 1
INDEXES = [
    IndexModel([("actor.person_id", ASCENDING), ("_id", DESCENDING)], name="by_person"),
    IndexModel([("action", ASCENDING), ("_id", DESCENDING)], name="by_action"),
    IndexModel([("email_ids", ASCENDING), ("_id", DESCENDING)], name="by_email"),
    IndexModel([("at", ASCENDING)], name="by_time"),
]
# Appenders racing for one number step forward; this many lost races in a row is a fault.
MAX_ATTEMPTS = 200
MAX_BATCH = 100  # entries one group commit writes at most
MAX_ID_LENGTH = 100
MAX_DETAIL_TEXT = 500
_ACTION = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")
_CURSOR_FORMAT = ">q"
MAX_PAGE = 100
DEFAULT_PAGE = 50


class AuditUnavailable(ApiError):
    """The entry could not be written; the audited read or change answers 503 instead."""

    def __init__(self):
        super().__init__(503, "Service temporarily unavailable", {"Retry-After": "30"})


def _millisecond(moment: datetime) -> datetime:
    """MongoDB keeps milliseconds; the hash covers exactly what is stored."""
    moment = as_utc(moment)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _plain(value: Any) -> Any:
    """JSON-native data (what BSON gives back unchanged), so the hash is stable on re-read."""
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers: every field but the hash itself, in a fixed form."""
    at = as_utc(entry["at"]).astimezone(timezone.utc)
    content = {
        "v": entry.get("v"), "seq": entry["_id"],
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "actor": entry.get("actor"), "ip": entry.get("ip"), "route": entry.get("route"),
        "action": entry.get("action"), "outcome": entry.get("outcome"), "email_ids": entry.get("email_ids"),
        "count": entry.get("count"), "details": entry.get("details"), "prev": entry.get("prev"),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first entry verification found wrong, and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.reason}"


@dataclass
class Verification:
    """What `verify` found: how many entries it checked, the range, and the first problem."""

    checked: int = 0
    first: int | None = None
    last: int | None = None
    awaiting_trim: int = 0
    head: dict[str, Any] | None = None
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(eq=False)
class _Ticket:
    """One entry waiting to be written, and how its thread learns the outcome."""

    body: dict[str, Any]
    entry: dict[str, Any] | None = None
    error: BaseException | None = None
    lead: bool = False
    woken: threading.Event = field(default_factory=threading.Event)


class TrimRefused(Exception):
    """The entries a trim would delete do not verify; they are kept as evidence."""


class AuditTrail:
    """Append, verify, trim and page the trail; one per app, shared by threads."""

    def __init__(self, database):
        self.database = database
        self.entries = database.get_collection(ENTRIES, write_concern=DURABLE)
        self.state = database.get_collection(STATE, write_concern=DURABLE)
        self.head_hint = database.get_collection(STATE, write_concern=WriteConcern(w=0))
        self._cursors: CursorCodec | None = None
        self._last: tuple[int, str] | None = None  # the newest entry this process wrote or met
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._writing = False

    def ensure_indexes(self) -> None:
        self.entries.create_indexes(INDEXES)

    # --- appending -------------------------------------------------------------------------

    def _start(self) -> tuple[int, str]:
        """The number and prev hash to try first: after the head record, else after the
        floor (everything trimmed), else the very first entry."""
        head = self.state.find_one({"_id": HEAD})
        last = self._last
        if head and (last is None or int(head["seq"]) >= last[0]):
            return int(head["seq"]) + 1, head["hash"]
        if last is not None:  # the head record lags behind what this process already saw
            return last[0] + 1, last[1]
        floor = self.state.find_one({"_id": FLOOR})
        if floor:
            return int(floor["seq"]), floor["prev"]
        return 1, GENESIS

    def append(self, *, actor: dict[str, Any], action: str, outcome: str = "ok", ip: str | None = None,
               route: str | None = None, email_ids: Iterable[str] = (), count: int | None = None,
               details: Mapping[str, Any] | None = None, at: datetime | None = None) -> dict[str, Any]:
        """Add one entry at the end of the chain and return it once it is durably stored;
        PyMongoError propagates (the entry may or may not be stored then: never less).

        Group commit: the threads of one process that append at the same time share one
        insert_many. The first to arrive writes a batch (its own entry first), then hands the
        lead to the oldest waiting entry's thread; every thread returns only when its own
        entry is stored, so nothing is answered before it is recorded."""
        if not _ACTION.match(action):
            raise ValueError(f"audit action {action!r} is not a short lower-case name")
        ticket = _Ticket({"v": VERSION, "at": _millisecond(at or datetime.now(timezone.utc)), "actor": _plain(actor),
                          "ip": ip, "route": route, "action": action, "outcome": outcome,
                          "email_ids": [str(item)[:MAX_ID_LENGTH] for item in email_ids],
                          "count": int(count) if count is not None else None,
                          "details": _plain(dict(details)) if details else None})
        with self._lock:
            self._queue.append(ticket)
            ticket.lead = not self._writing
            self._writing = True
        if not ticket.lead:
            ticket.woken.wait()
        if ticket.lead and ticket.entry is None and ticket.error is None:
            self._lead()
        if ticket.error is not None:
            raise ticket.error
        if ticket.entry is None:  # never answer as if recorded when it was not
            raise RuntimeError("audit entry not written")
        return ticket.entry

    def _lead(self) -> None:
        """Write the batch at the head of the queue, then pass the lead on (or put it down)."""
        with self._lock:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        try:
            self._write(batch)
        except Exception as error:  # noqa: BLE001 - every waiting thread must hear of it
            for ticket in batch:
                if ticket.entry is None:
                    ticket.error = error
        finally:
            for ticket in batch:
                if ticket.entry is None and ticket.error is None:  # interrupted (BaseException)
                    ticket.error = RuntimeError("audit write interrupted")
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].woken.set()
                else:
                    self._writing = False
            for ticket in batch:
                ticket.woken.set()

    def _write(self, batch: list["_Ticket"]) -> None:
        """Chain and insert the batch's entries; when another writer took a number first
        (DuplicateKeyError), the entries not yet stored are re-chained after its newest one."""
        seq, prev = self._start()
        pending = list(batch)
        for attempt in range(MAX_ATTEMPTS):
            documents, link = [], prev
            for offset, ticket in enumerate(pending):
                entry = {"_id": seq + offset, **ticket.body, "prev": link}
                entry["hash"] = link = entry_hash(entry)
                documents.append(entry)
            try:
                self.entries.insert_many(documents, ordered=True)
                written = len(documents)
            except BulkWriteError as error:
                if any(problem.get("code") != 11000 for problem in error.details.get("writeErrors", [])):
                    raise
                written = error.details.get("nInserted", 0)
            for ticket, entry in zip(pending[:written], documents[:written]):
                ticket.entry = entry
            if written:
                self._last = (documents[written - 1]["_id"], documents[written - 1]["hash"])
            pending = pending[written:]
            if not pending:
                self._advance_head(*self._last)
                return
            # Another writer holds that number: follow the newest entry from there (one index
            # range over what was written meanwhile), not one number at a time, or a writer
            # stepping singly could fall behind one that writes whole batches.
            newer = list(self.entries.find({"_id": {"$gte": seq + written}}, {"hash": 1}).sort("_id", ASCENDING))
            if newer:
                self._last = (newer[-1]["_id"], newer[-1]["hash"])
                seq, prev = newer[-1]["_id"] + 1, newer[-1]["hash"]
            else:  # trimmed away meanwhile (never the newest): start again from the records
                seq, prev = self._start()
            if attempt > 3:
                time.sleep(random.uniform(0, 0.002 * min(attempt, 20)))
        raise RuntimeError(f"audit append lost {MAX_ATTEMPTS} races in a row")

    def _advance_head(self, seq: int, digest: str) -> None:
        """Move the head record forward to seq (never back: a slower appender's update of an
        older number collides with the existing record and is dropped). Unacknowledged: a
        lost update only leaves the head behind, which the next append and verify accept."""
        try:
            self.head_hint.update_one({"_id": HEAD, "seq": {"$lt": seq}}, {"$set": {"seq": seq, "hash": digest}},
                                  upsert=True)
        except DuplicateKeyError:
            pass

    # --- verifying -------------------------------------------------------------------------

    def verify(self, progress: Callable[[int], None] | None = None,
               anchors: Iterable[tuple[int, str]] = ()) -> Verification:
        """Walk the chain oldest first and stop at the first entry edited, removed or
        reordered. `anchors` are (number, hash) pairs noted outside the database earlier."""
        report = Verification()
        floor = self.state.find_one({"_id": FLOOR})
        head = self.state.find_one({"_id": HEAD})
        report.head = {"seq": head["seq"], "hash": head["hash"]} if head else None
        start = int(floor["seq"]) if floor else 1
        expected_prev = floor["prev"] if floor else GENESIS
        report.awaiting_trim = self.entries.count_documents({"_id": {"$lt": start}}) if floor else 0
        wanted = {int(seq): digest for seq, digest in anchors}
        expected = start
        previous: int | None = None

        def fail(seq: int, reason: str) -> Verification:
            report.problem = Problem(seq, reason)
            return report

        for entry in self.entries.find({"_id": {"$gte": start}}).sort("_id", ASCENDING):
            seq = entry["_id"]
            if progress:
                progress(1)
            if not isinstance(seq, int):
                return fail(expected, f"missing: an entry numbered {str(seq)[:40]!r} stands where it should be")
            if seq != expected:
                if previous is None and floor is None:
                    return fail(expected, f"missing: entries {expected} to {seq - 1} were removed from the start "
                                          "of the trail without a trim")
                gone = f"entries {expected} to {seq - 1} were" if seq - 1 > expected else "it was"
                return fail(expected, f"missing: {gone} removed")
            if entry.get("hash") != entry_hash(entry):
                return fail(seq, "edited: its content no longer matches its hash")
            if entry.get("prev") != expected_prev:
                if previous is None:
                    return fail(seq, "does not follow the trim record: it was replaced, or entries before it "
                                     "were removed")
                return fail(previous, f"replaced or reordered: entry {seq} was chained to a different entry "
                                      f"{previous} (it, or entry {seq}, was rewritten with a recomputed hash)")
            if seq in wanted and wanted.pop(seq) != entry["hash"]:
                return fail(seq, "differs from the anchor noted earlier: it was rewritten")
            if head and seq == head["seq"] and head["hash"] != entry["hash"]:
                return fail(seq, "differs from the head record: it was rewritten")
            report.checked += 1
            report.first = start if report.first is None else report.first
            report.last = seq
            expected_prev, previous, expected = entry["hash"], seq, seq + 1
        if head and head["seq"] >= expected:
            gone = f"entries {expected} to {head['seq']} were" if head["seq"] > expected else "it was"
            return fail(expected, f"missing: {gone} removed from the end (the head record names entry {head['seq']})")
        if wanted:
            seq = min(wanted)
            return fail(seq, "the anchor's entry is no longer in the trail" if seq >= start
                        else "the anchor's entry was trimmed; use a newer anchor")
        if head is None and report.checked:
            report.warnings.append("no head record: removal of the newest entries cannot be detected "
                                   "(the next entry writes one)")
        return report

    # --- trimming --------------------------------------------------------------------------

    def trim(self, older_than: datetime, progress: Callable[[int], None] | None = None) -> int:
        """Delete the entries at the start of the trail recorded before `older_than`, never
        the newest one. The kept part still verifies: the floor record, written first, names
        the first kept entry and the hash it follows. Refuses (TrimRefused) to delete
        entries that do not verify. Returns how many entries were deleted."""
        floor = self.state.find_one({"_id": FLOOR})
        start = int(floor["seq"]) if floor else 1
        removed = self.entries.delete_many({"_id": {"$lt": start}}).deleted_count if floor else 0
        newest = self.entries.find_one({}, {"_id": 1}, sort=[("_id", DESCENDING)])
        if newest is None:
            return removed
        # Walk the numbers from the start (the old entries come first), not the time index:
        # that would sort every young entry to find the lowest number.
        young = next(iter(self.entries.find({"_id": {"$gte": start}, "at": {"$gte": _millisecond(older_than)}},
                                            {"_id": 1}).sort("_id", ASCENDING).hint([("_id", ASCENDING)]).limit(1)),
                     None)
        keep_from = min(young["_id"] if young else newest["_id"], newest["_id"])
        if keep_from <= start:
            return removed
        expected_prev = floor["prev"] if floor else GENESIS
        expected = start
        for entry in self.entries.find({"_id": {"$gte": start, "$lt": keep_from}}).sort("_id", ASCENDING):
            if (entry["_id"] != expected or entry.get("hash") != entry_hash(entry)
                    or entry.get("prev") != expected_prev):
                raise TrimRefused(f"entry {expected} does not verify; run `improvmx-archive audit verify`")
            expected_prev, expected = entry["hash"], expected + 1
            if progress:
                progress(1)
        if expected != keep_from:
            raise TrimRefused(f"entry {expected} is missing; run `improvmx-archive audit verify`")
        try:
            self.state.update_one({"_id": FLOOR, "seq": {"$lt": keep_from}},
                                  {"$set": {"seq": keep_from, "prev": expected_prev,
                                            "trimmed_at": datetime.now(timezone.utc), "older_than": older_than}},
                                  upsert=True)
        except DuplicateKeyError:
            pass  # another trim moved the floor at least as far
        floor = self.state.find_one({"_id": FLOOR})
        return removed + self.entries.delete_many({"_id": {"$lt": int(floor["seq"])}}).deleted_count

    # --- reading ---------------------------------------------------------------------------

    def cursors(self) -> CursorCodec:
        """The listing's cursor signer under a key of the trail's own (derived from the
        deployment's cursor key), so a mail-list cursor is never an audit one."""
        if self._cursors is None:
            key = hmac.new(CursorCodec.from_database(self.database).key, b"audit cursor v1", hashlib.sha256).digest()
            self._cursors = CursorCodec(key)
        return self._cursors

    def encode_cursor(self, fingerprint: str, seq: int) -> str:
        return self.cursors().seal(fingerprint, struct.pack(_CURSOR_FORMAT, seq))

    def decode_cursor(self, fingerprint: str, cursor: str) -> int:
        position = self.cursors().unseal(fingerprint, cursor, struct.calcsize(_CURSOR_FORMAT),
                                         "'cursor' is invalid: it was altered, or belongs to other filters or "
                                         "another reader; start again without it")
        return struct.unpack(_CURSOR_FORMAT, position)[0]

    def page(self, query: "AuditQuery", cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Entries matching query, newest first, after the cursor's position."""
        selector = dict(query.selector)
        if cursor:
            selector["_id"] = {"$lt": self.decode_cursor(query.fingerprint, cursor)}
        found = list(self.entries.find(selector).sort("_id", DESCENDING).limit(limit + 1))
        following = None
        if len(found) > limit:
            found = found[:limit]
            following = self.encode_cursor(query.fingerprint, found[-1]["_id"])
        return found, following


def present(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as GET /audit shows it."""
    return {"seq": entry["_id"], "at": api_time(entry["at"]), "actor": entry.get("actor"), "ip": entry.get("ip"),
            "route": entry.get("route"), "action": entry.get("action"), "outcome": entry.get("outcome"),
            "email_ids": entry.get("email_ids") or [], "count": entry.get("count"),
            "details": entry.get("details"), "prev": entry.get("prev"), "hash": entry.get("hash")}


@dataclass(frozen=True)
class AuditQuery:
    """What a reader asked for, already narrowed to what they may read."""

    selector: dict[str, Any]
    fingerprint: str
    shown: dict[str, str]  # the filters as given, for links and forms


def _date(args: Mapping[str, str], name: str) -> datetime | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"'{name}' must be an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


FILTER_NAMES = ("person", "action", "email_id", "since", "until")


def parse_query(args: Mapping[str, str], principal: Principal, people) -> AuditQuery:
    """The filters of GET /audit and the Audit page (400 naming a bad one). A member reads
    only their own entries whatever they ask; an admin reads everyone's."""
    selector: dict[str, Any] = {}
    shown = {name: args[name].strip() for name in FILTER_NAMES if (args.get(name) or "").strip()}
    if not principal.is_admin:
        selector["actor.person_id"] = principal.person_id
    person = shown.get("person")
    if person:
        if len(person) > 200:
            raise QueryError("'person' is too long")
        found = people.by_name(person)
        if found is None and ObjectId.is_valid(person):
            found = people.by_id(person)
        if found is not None:
            wanted = str(found["_id"])
        elif person in (OPERATOR_NAME, ANONYMOUS["name"]):
            wanted = None
            if principal.is_admin:
                selector["actor.name"] = person
        else:
            raise QueryError("'person' names no one: give a person's name or id, 'operator' or 'anonymous'")
        if principal.is_admin:
            selector["actor.person_id"] = wanted
        elif wanted != principal.person_id:
            selector["actor.person_id"] = "\x00nobody"  # a member asking for someone else: nothing
    action = shown.get("action")
    if action:
        if not _ACTION.match(action):
            raise QueryError("'action' must be an action name such as view, list, download or delete")
        selector["action"] = action
    email_id = shown.get("email_id")
    if email_id:
        if not ObjectId.is_valid(email_id):
            raise QueryError("'email_id' must be a message id (24 hexadecimal characters)")
        selector["email_ids"] = email_id
    since, until = _date(shown, "since"), _date(shown, "until")
    if since and until and since > until:
        raise QueryError("'since' must not be after 'until'")
    if since or until:
        selector["at"] = {key: value for key, value in (("$gte", since), ("$lte", until)) if value}
    fingerprint = hashlib.sha256(json.dumps(
        {"selector": selector, "reader": principal.person_id or "operator"}, sort_keys=True, default=str,
    ).encode()).hexdigest()
    return AuditQuery(selector, fingerprint, shown)


def parse_limit(args: Mapping[str, str]) -> int:
    return int_param(args, "limit", DEFAULT_PAGE, 1, MAX_PAGE)


# --- the one call the rest of the app makes ---------------------------------------------------

def record(action: str, outcome: str = "ok", *, principal: Principal | None = None, email_ids: Iterable[str] = (),
           count: int | None = None, details: Mapping[str, Any] | None = None, ip: str | None = None) -> dict[str, Any]:
    """Write one entry. In a request, principal defaults to g.principal (no one signed in yet,
    e.g. a failed sign-in: the `anonymous` actor) and ip to the client's address; elsewhere
    (CLI) the caller passes the principal. Raises AuditUnavailable (503) when MongoDB does not
    take it, so an audited read is never served unrecorded."""
    in_request = has_request_context()
    if principal is None and not in_request:
        raise ValueError("record() outside a request needs a principal")
    if principal is None:
        principal = g.get("principal")
    actor = principal.actor() if principal is not None else dict(ANONYMOUS)
    if ip is None and in_request:
        ip = client_ip()
    trail: AuditTrail = current_app.extensions["audit_trail"]
    try:
        return trail.append(actor=actor, action=action, outcome=outcome, ip=ip,
                            route=request.endpoint if in_request else None, email_ids=email_ids,
                            count=count, details=details)
    except (PyMongoError, RuntimeError) as error:
        log.error("audit entry not written (%s): action=%s refused", type(error).__name__, action)
        raise AuditUnavailable() from None


def record_done(action: str, outcome: str = "ok", **fields: Any) -> None:
    """An entry for something that has already happened or been refused (a send, a refused
    key): if the trail cannot take it, what happened stands (undoing or failing it could
    invite a repeat) and the gap is logged by record()."""
    try:
        record(action, outcome, **fields)
    except AuditUnavailable:
        pass


class AuditRetention:
    """Trims entries older than AUDIT_RETENTION_DAYS, on one worker of one host at a time
    (a lease), from the maintenance thread."""

    def __init__(self, trail: AuditTrail, lease, days: float, interval: timedelta = timedelta(hours=1)):
        self.trail = trail
        self.lease = lease
        self.days = days
        self.interval = interval

    def run_if_due(self) -> int:
        try:
            if not self.lease.acquire(self.interval):
                return 0
            removed = self.trail.trim(datetime.now(timezone.utc) - timedelta(days=self.days))
        except TrimRefused as refused:
            log.error("audit trim refused: %s", refused)
            return 0
        except PyMongoError as error:
            log.warning("audit trim postponed (%s)", type(error).__name__)
            return 0
        if removed:
            log.info("audit trim: removed %d entr%s older than %g day(s)", removed, "y" if removed == 1 else "ies",
                     self.days)
        return removed
