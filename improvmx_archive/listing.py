"""Which messages a listing shows, from request-style arguments, and cursors between its pages.

`parse_filters(args)` and `parse_page(args)` take any Mapping of strings (Flask's
request.args, a dict in a CLI or test) and raise QueryError (an ApiError, 400) naming a bad
value; the API, the UI and the mbox export all list through them and Archive.list_page, so
one request means the same messages everywhere.

A cursor is the sort key of the last message shown, (received_at, _id), signed with HMAC
together with a fingerprint of the filters, so a changed cursor or one reused with other
filters is refused instead of silently paging something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .indexer import SEARCH_STATE
from .query import QueryError, Search, normalised_text, parse
from .tokens import LONG_SUBJECT, trigrams

MAX_LIMIT = 100
MAX_SKIP = 10_000_000
MAX_SUBJECT_LENGTH = 500
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_LETTER_FREQUENCY = " etaoinshrdlcumwfgypbvkjxqz"
_CURSOR_FORMAT = ">q12s"  # received_at in ms since the epoch, then the ObjectId's 12 bytes
_MAC_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)

# Every query parameter of the mail API in one place: what a listing filters on (GET /emails,
# GET /export.mbox) and how it pages (GET /emails only). Anything else is refused, so a typo
# (`form_email`) or an injected operator (`from_email[$ne]`) never silently widens a listing.
FILTER_PARAMETERS = ("q", "from_email", "to", "subject", "since", "until", "processed", "has_attachments")
PAGE_PARAMETERS = ("limit", "skip", "cursor", "count")
LIST_PARAMETERS = FILTER_PARAMETERS + PAGE_PARAMETERS
_NAME_SHOWN = 60  # characters of an unknown parameter's name echoed in the error


@dataclass(frozen=True)
class Filters:
    """What to list: the plain parameters as a MongoDB filter, plus the parsed `q`."""

    query: dict[str, Any] = field(default_factory=dict)
    search: Search | None = None
    fingerprint: str = ""


@dataclass(frozen=True)
class PageRequest:
    limit: int = 10
    skip: int = 0
    cursor: str | None = None
    count: bool = True


@dataclass
class Page:
    """One page: summaries newest first, the cursor of the next page (None on the last),
    and the number of matches (None when count=false was asked for)."""

    emails: list[dict[str, Any]]
    next: str | None
    total: int | None


def _text(args: Mapping[str, str], name: str) -> str | None:
    raw = args.get(name)
    return raw if raw else None


def int_param(args: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = _text(args, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"'{name}' must be an integer") from None
    if not minimum <= value <= maximum:
        raise QueryError(f"'{name}' must be between {minimum} and {maximum}")
    return value


def bool_param(args: Mapping[str, str], name: str) -> bool | None:
    raw = _text(args, name)
    if raw is None:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise QueryError(f"'{name}' must be true or false")


def _date_param(args: Mapping[str, str], name: str) -> datetime | None:
    raw = _text(args, name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        raise QueryError(f"'{name}' must be an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _address_param(args: Mapping[str, str], name: str) -> str | None:
    raw = _text(args, name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if "@" not in value or len(value) > 320:
        raise QueryError(f"'{name}' must be an email address")
    return value


def _rarity(gram: str) -> int:
    """Higher for trigrams of uncommon characters: a cheap guess at index selectivity."""
    return sum(_LETTER_FREQUENCY.find(ch) if ch in _LETTER_FREQUENCY else len(_LETTER_FREQUENCY)
               for ch in gram)


def subject_query(term: str) -> dict[str, Any]:
    """Substring match on the subject, narrowed through the trigram index by the term's
    rarest trigram (terms under three characters scan the newest-first index instead)."""
    query: dict[str, Any] = {"subject_lower": {"$regex": re.escape(term)}}
    grams = trigrams(term)
    if grams:
        query["subject_trigrams"] = {"$in": [max(grams, key=_rarity), LONG_SUBJECT]}
    return query


def reject_unknown_parameters(args: Mapping[str, str], known: tuple[str, ...]) -> None:
    """QueryError (400) naming the first parameter that is not one of `known`. The API calls
    this; the UI, whose pages carry their own parameters next to the filters, does not."""
    for name in args:
        if name not in known:
            shown = name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "…"
            raise QueryError(f"unknown query parameter '{shown}'; this endpoint takes "
                             f"{', '.join(known) if known else 'none'}")


def parse_filters(args: Mapping[str, str]) -> Filters:
    """The filters of a listing from from_email, to, subject, since, until, processed,
    has_attachments and q; raises QueryError (400) on any invalid value."""
    query: dict[str, Any] = {}
    canonical: dict[str, Any] = {}
    sender = _address_param(args, "from_email")
    if sender:
        query["from_email"] = canonical["from_email"] = sender
    recipient = _address_param(args, "to")
    if recipient:
        query["recipients"] = canonical["to"] = recipient
    subject = _text(args, "subject")
    if subject:
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise QueryError(f"'subject' must be at most {MAX_SUBJECT_LENGTH} characters")
        query.update(subject_query(subject.lower()))
        canonical["subject"] = subject.lower()
    since, until = _date_param(args, "since"), _date_param(args, "until")
    if since and until and since > until:
        raise QueryError("'since' must not be after 'until'")
    if since or until:
        query["received_at"] = {k: v for k, v in (("$gte", since), ("$lte", until)) if v}
        canonical["received_at"] = [str(since), str(until)]
    for name in ("processed", "has_attachments"):
        value = bool_param(args, name)
        if value is not None:
            query[name] = canonical[name] = value
    search = None
    q = _text(args, "q")
    if q and q.strip():
        search = parse(q)
        canonical["q"] = normalised_text(search)
    fingerprint = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return Filters(query, search, fingerprint)


def parse_page(args: Mapping[str, str], default_limit: int = 10) -> PageRequest:
    """limit, skip, cursor and count of a listing; skip and cursor do not mix."""
    limit = int_param(args, "limit", default_limit, 1, MAX_LIMIT)
    skip = int_param(args, "skip", 0, 0, MAX_SKIP)
    cursor = _text(args, "cursor")
    if cursor and skip:
        raise QueryError("use either 'cursor' or 'skip', not both")
    count = bool_param(args, "count")
    return PageRequest(limit, skip, cursor, count is not False)


class CursorCodec:
    """Signs and checks cursors with a key every worker and host shares (kept in MongoDB)."""

    def __init__(self, key: bytes):
        self.key = key

    @classmethod
    def from_database(cls, database) -> "CursorCodec":
        """The deployment's cursor key, created once by whichever worker asks first."""
        state = database[SEARCH_STATE]
        try:
            state.update_one({"_id": "cursor_key"}, {"$setOnInsert": {"key": secrets.token_bytes(32)}},
                             upsert=True)
        except DuplicateKeyError:
            pass  # another worker created it at the same moment
        return cls(bytes(state.find_one({"_id": "cursor_key"})["key"]))

    def _mac(self, fingerprint: str, position: bytes) -> bytes:
        return hmac.new(self.key, fingerprint.encode() + position, hashlib.sha256).digest()[:_MAC_BYTES]

    def seal(self, fingerprint: str, position: bytes) -> str:
        """Any page position as a cursor, signed together with the filters' fingerprint."""
        return base64.urlsafe_b64encode(position + self._mac(fingerprint, position)).decode().rstrip("=")

    def unseal(self, fingerprint: str, cursor: str, size: int, refusal: str) -> bytes:
        """The `size`-byte position a cursor carries; QueryError(refusal) if it was not sealed
        here for this fingerprint."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, TypeError):
            raw = b""
        position, mac = raw[:size], raw[size:]
        if len(raw) != size + _MAC_BYTES or not hmac.compare_digest(mac, self._mac(fingerprint, position)):
            raise QueryError(refusal)
        return position

    def encode(self, fingerprint: str, received_at: datetime, email_id: ObjectId) -> str:
        moment = received_at if received_at.tzinfo else received_at.replace(tzinfo=timezone.utc)
        return self.seal(fingerprint, struct.pack(_CURSOR_FORMAT, (moment - _EPOCH) // _MILLISECOND, email_id.binary))

    def decode(self, fingerprint: str, cursor: str) -> tuple[datetime, ObjectId]:
        """The (received_at, _id) a cursor points after; QueryError if it is not one of ours
        for these filters."""
        position = self.unseal(fingerprint, cursor, struct.calcsize(_CURSOR_FORMAT),
                               "invalid cursor: it was altered, or is used with other filters than the "
                               "page it came from; start again without 'cursor'")
        millis, binary = struct.unpack(_CURSOR_FORMAT, position)
        return _EPOCH + millis * _MILLISECOND, ObjectId(binary)


def up_to(query: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    """query narrowed to messages received at or before received_at: one more bound on the
    field every index ends with, so each server walks an index range (a top-level $or or
    $nor would make SecantusDB scan the collection). Ties on received_at with an _id not
    below the cursor's are left for the caller to drop (Archive.list_page)."""
    bounded = dict(query)
    existing = dict(bounded.get("received_at") or {})
    existing["$lte"] = min(existing.get("$lte", received_at), received_at)
    bounded["received_at"] = existing
    return bounded
