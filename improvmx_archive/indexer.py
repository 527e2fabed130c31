"""Search indexing off the webhook's path: what a message is searchable by, and the background
pass that writes it.

Ingest only marks a new message `search_pending` (a sparse index finds the marked few; spool
replays store old ObjectIds hours late, so id ranges cannot find pending work). The pass, run
from the Maintenance thread of one worker at a time (a lease), indexes pending messages in
batches until none is left, so a burst or an outage is caught up by the next passes. A
message is searchable by `q` once its pass has run, seconds after arrival (`subject=` finds
it at once: see pending_marker).

Per message it writes:
- `tokens`: distinct words (tokens.words) of the subject, sender and recipient names and
  addresses, attachment and inline file names, and the first BODY_CHARS characters of the
  text body (or of the HTML body's text when there is no text part), at most MAX_TOKENS,
  plus one `mid:` token for the Message-ID. Indexed with (received_at, _id) after it.
- `search`: the same words in order per field, for phrase and field checks on candidates.
- `subject_trigrams`: for the `subject=` substring parameter.
- `search_terms` (a collection, _id = word): the vocabulary `prefix*` terms expand through.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from .payload import parse_address_list
from .tokens import LONG_SUBJECT, message_id_token, subject_index_terms, words

log = logging.getLogger(__name__)

SEARCH_VERSION = 1
BODY_CHARS = 4096
MAX_TOKENS = 600
FIELD_CHARS = 8192  # each field's stored word sequence is cut here
VALUE_SEPARATOR = " | "
BATCH_SIZE = 100
VOCABULARY = "search_terms"
# What search_fields() adds to a message: only queries read it, so reads of whole messages leave it out.
SEARCH_ONLY_FIELDS = ("tokens", "search", "subject_trigrams", "search_version")
PENDING = "search_pending"
SEARCH_STATE = "search_state"
REINDEX_STATE = "reindex"
KNOWN_TERMS_CACHED = 200_000
_HTML_CHARS = BODY_CHARS * 16
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.S | re.I)
# What the pass reads of each message: never headers, overflow or part bytes.
PROJECTION = {"subject": 1, "from": 1, "to": 1, "cc": 1, "bcc": 1, "recipients": 1, "text": 1, "html": 1,
              "bodies": 1, "attachments.name": 1, "inlines.name": 1, "message-id": 1, "subject_lower": 1,
              PENDING: 1}


def pending_marker() -> dict[str, Any]:
    """What ingest adds to every new message: 'index me', with the time it was stored, and
    the one trigram every `subject=` search also looks at, so the parameter finds a message
    at once, as before, while its real trigrams wait for the indexer."""
    return {PENDING: datetime.now(timezone.utc), "subject_trigrams": [LONG_SUBJECT]}


def _addresses(value: Any) -> list[str]:
    found, _ = parse_address_list(value)
    return [" ".join(filter(None, (address.get("name"), address["email"]))) for address in found]


def _sequence(values: Iterable[str]) -> list[str]:
    """Words of several values, ' | ' between values so no phrase matches across two."""
    sequence: list[str] = []
    for value in values:
        found = words(value) if isinstance(value, str) else []
        if found:
            if sequence:
                sequence.append("|")
            sequence.extend(found)
    return sequence


def _html_text(html: str) -> str:
    return html_lib.unescape(_TAGS.sub(" ", html[:_HTML_CHARS]))


def body_text(document: dict[str, Any], read_spilled: Callable[[], dict[str, Any] | None]) -> str:
    """The text the body is searchable by: the text part, or the HTML's text without one.
    Bodies over the inline limit live in GridFS; read_spilled() gives the whole message."""
    if document.get("bodies"):
        document = read_spilled() or document
    text, html = document.get("text"), document.get("html")
    if isinstance(text, str) and text.strip():
        return text[:BODY_CHARS]
    if isinstance(html, str) and html.strip():
        return _html_text(html)[:BODY_CHARS]
    return ""


def search_fields(document: dict[str, Any], body: str) -> dict[str, Any]:
    """The `$set` that makes one message searchable (tokens, per-field words, trigrams)."""
    names = [part.get("name") for kind in ("attachments", "inlines") for part in document.get(kind) or []
             if isinstance(part, dict)]
    subject = document.get("subject") if isinstance(document.get("subject"), str) else ""
    to_values = _addresses(document.get("to")) + _addresses(document.get("cc")) + _addresses(document.get("bcc"))
    listed = set(words(" ".join(to_values)))
    extra_recipients = [a for a in document.get("recipients") or [] if not set(words(a)) <= listed]
    fields = {
        "s": _sequence([subject]),
        "f": _sequence(_addresses(document.get("from"))),
        "t": _sequence(to_values + extra_recipients),
        "c": _sequence(_addresses(document.get("cc"))),
        "n": _sequence(names),
        "b": _sequence([body]),
    }
    tokens: dict[str, None] = {}
    message_id = document.get("message-id")
    if isinstance(message_id, str) and message_id.strip("<> "):
        tokens[message_id_token(message_id)] = None
    for key in ("s", "f", "t", "n", "b"):
        for position, word in enumerate(fields[key]):
            if word != "|" and word not in tokens:
                if len(tokens) >= MAX_TOKENS:
                    fields[key] = fields[key][:position]  # words past the cap are not searchable
                    break
                tokens[word] = None
    return {
        "tokens": list(tokens),
        "search": {key: " ".join(sequence)[:FIELD_CHARS] for key, sequence in fields.items() if sequence},
        "subject_trigrams": subject_index_terms(document.get("subject_lower") or subject.lower()),
        "search_version": SEARCH_VERSION,
    }


class Vocabulary:
    """Every word any message was indexed with (`search_terms`, _id = word), so a prefix
    expands through an _id range on a collection without arrays, never a range on `tokens`."""

    def __init__(self, database):
        self.terms = database[VOCABULARY]
        self._known: set[str] = set()

    def add(self, tokens: Iterable[str]) -> None:
        """Record new words; an insert racing another host's is a harmless duplicate."""
        new = sorted({t for t in tokens if not t.startswith("mid:")} - self._known)
        if not new:
            return
        try:
            self.terms.insert_many([{"_id": token} for token in new], ordered=False)
        except BulkWriteError as error:
            if any(failure.get("code") != 11000 for failure in error.details.get("writeErrors", [])):
                raise
        if len(self._known) > KNOWN_TERMS_CACHED:
            self._known.clear()
        self._known.update(new)

    def expand(self, prefix: str, limit: int) -> list[str] | None:
        """Words starting with prefix, or None when there are more than limit of them."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        found = [entry["_id"] for entry in self.terms.find({"_id": {"$gte": prefix, "$lt": upper}}, {"_id": 1})
                 .sort("_id", ASCENDING).limit(limit + 1)]
        return None if len(found) > limit else found


@dataclass
class Backlog:
    """How far search indexing is behind: messages waiting, and how long the oldest has."""

    pending: int
    oldest_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        oldest = None if self.oldest_seconds is None else round(self.oldest_seconds, 1)
        return {"pending": self.pending, "oldest_pending_seconds": oldest}


def backlog(database) -> Backlog:
    """The indexer's lag, for health and metrics; two index-only reads of the sparse index."""
    emails = database.emails
    waiting = {PENDING: {"$exists": True}}
    pending = emails.count_documents(waiting, hint="search_pending")
    oldest = next(iter(emails.find(waiting, {PENDING: 1}).sort(PENDING, ASCENDING).hint("search_pending")
                       .limit(1)), None)
    if oldest is None:
        return Backlog(pending, None)
    age = (datetime.now(timezone.utc) - oldest[PENDING]).total_seconds()
    return Backlog(pending, max(age, 0.0))


class SearchIndexer:
    """Writes search fields for messages, pending ones (the background pass) or any (reindex)."""

    def __init__(self, archive, batch_size: int = BATCH_SIZE):
        self.archive = archive
        self.emails = archive.emails
        self.vocabulary = Vocabulary(archive.database)
        self.batch_size = batch_size

    def index(self, documents: list[dict[str, Any]]) -> int:
        """Index documents read with PROJECTION; returns how many were written (a message
        deleted meanwhile is skipped). One that cannot be indexed is set aside with
        `search_error` instead of blocking the queue behind it forever."""
        prepared: list[tuple[dict, dict | None, str]] = []
        for document in documents:
            try:
                body = body_text(document, partial(self.archive.find, str(document["_id"])))
                prepared.append((document, search_fields(document, body), ""))
            except Exception as error:  # noqa: BLE001 - one malformed message must not stall the rest
                prepared.append((document, None, type(error).__name__))
        # Vocabulary first: a word is never findable by prefix later than by itself.
        self.vocabulary.add(token for _, fields, _ in prepared if fields for token in fields["tokens"])
        indexable = [(document, fields) for document, fields, _ in prepared if fields is not None]
        written, refused = self._write_all(indexable)
        refused += [(document, reason) for document, fields, reason in prepared if fields is None]
        return written + sum(self._set_aside(document, reason) for document, reason in refused)

    def _write_all(self, indexable: list[tuple[dict, dict]]) -> tuple[int, list[tuple[dict, str]]]:
        """Every message's search fields in one unordered bulk write (by _id alone: the marker
        is only ever set at insert, and SecantusDB looks up nothing but a bare _id without a
        collection scan). One round trip per batch instead of per message: the worker's and
        the database's per-command costs were most of indexing a small message. Returns how
        many matched and the messages the database refused, with the reason."""
        if not indexable:
            return 0, []
        updates = [UpdateOne({"_id": document["_id"]}, {"$set": fields, "$unset": {PENDING: "", "search_error": ""}})
                   for document, fields in indexable]
        try:
            return self.emails.bulk_write(updates, ordered=False).matched_count, []
        except BulkWriteError as error:
            failures = error.details.get("writeErrors", [])
            refused = [(indexable[f["index"]][0], f"write error {f.get('code')}") for f in failures]
            return error.details.get("nMatched", 0), refused

    def _set_aside(self, document: dict[str, Any], reason: str) -> int:
        log.error("message %s cannot be indexed for search (%s); q will not find it until `improvmx-archive reindex`",
                  document["_id"], reason)
        return self.emails.update_one({"_id": document["_id"]}, {"$set": {"search_error": reason},
                                                                 "$unset": {PENDING: ""}}).matched_count

    def index_pending(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Index pending messages a batch at a time until none is left or should_stop()."""
        done = 0
        while not should_stop():
            batch = list(self.emails.find({PENDING: {"$exists": True}}, PROJECTION).hint("search_pending")
                         .limit(self.batch_size))
            if not batch:
                break
            written = self.index(batch)
            done += written
            if len(batch) < self.batch_size or not written:
                break
        return done


@dataclass
class ReindexReport:
    indexed: int = 0
    current: int = 0  # already indexed by these rules, left alone
    resumed_after: Any = None


class Reindex:
    """`flask reindex`: give every stored message its search fields, walking _id upwards in
    batches and saving the position after each, so an interrupted run resumes where it
    stopped. Safe while mail arrives: new messages are pending and the writes are idempotent."""

    def __init__(self, archive, *, everything: bool = False, restart: bool = False,
                 batch_size: int = BATCH_SIZE):
        self.indexer = SearchIndexer(archive, batch_size)
        self.emails = archive.emails
        self.state = archive.database[SEARCH_STATE]
        self.everything = everything
        self.batch_size = batch_size
        if restart:
            self.state.delete_one({"_id": REINDEX_STATE})
        saved = self.state.find_one({"_id": REINDEX_STATE}) or {}
        self.report = ReindexReport(resumed_after=saved.get("position"))

    def remaining(self) -> int:
        after = self.report.resumed_after
        return self.emails.count_documents({"_id": {"$gt": after}} if after is not None else {})

    def batches(self):
        """Index one batch per step, yielding how many messages it covered."""
        position = self.report.resumed_after
        while True:
            condition = {"_id": {"$gt": position}} if position is not None else {}
            batch = list(self.emails.find(condition, {**PROJECTION, "search_version": 1})
                         .sort("_id", ASCENDING).limit(self.batch_size))
            if not batch:
                break
            stale = [d for d in batch if self.everything or d.get("search_version") != SEARCH_VERSION]
            self.report.indexed += self.indexer.index(stale)
            self.report.current += len(batch) - len(stale)
            position = batch[-1]["_id"]
            self.state.update_one({"_id": REINDEX_STATE}, {"$set": {"position": position}}, upsert=True)
            yield len(batch)
        self.state.delete_one({"_id": REINDEX_STATE})
