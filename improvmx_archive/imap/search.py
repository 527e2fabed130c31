"""IMAP SEARCH keys compiled to one MongoDB condition, through the archive's own search.

Text keys (FROM, TO, CC, SUBJECT, BODY, TEXT) become the `q` language's operators and go
through Archive.filter_for, so a search over IMAP finds what the API's `q` finds (whole
words, accents and case folded). Dates compare the message's arrival (INTERNALDATE) by UTC
day; LARGER/SMALLER its rebuilt size; SEEN/UNSEEN this reader's own \\Seen. Flags the
archive never sets (\\Answered, \\Flagged, \\Deleted, \\Draft, \\Recent, keywords) match
nothing, and their UN- forms everything.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from twisted.mail.imap4 import IllegalIdentifierError, parseIdList

from ..listing import Filters
from ..query import QueryError, parse
from .numbering import SIZE_FIELD, UID_FIELD

NOTHING: dict[str, Any] = {UID_FIELD: {"$lt": 0}}
TEXT_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": None, "SUBJECT": "subject", "BODY": "body",
             "TEXT": None}
NEVER_SET = {"ANSWERED", "DELETED", "DRAFT", "FLAGGED", "RECENT", "NEW"}
ALWAYS = {"ALL", "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "OLD"}
DATE_KEYS = {"SINCE", "BEFORE", "ON", "SENTSINCE", "SENTBEFORE", "SENTON"}
MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


class SearchError(ValueError):
    """The search cannot be understood; the text goes into a tagged BAD/NO."""


def _text(value: Any) -> str:
    if isinstance(value, list):
        raise SearchError("a search value is missing")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _day(value: Any) -> datetime:
    """An IMAP date (1-Feb-1994) as midnight UTC."""
    text = _text(value).strip('"')
    try:
        day, month, year = text.split("-")
        return datetime(int(year), MONTHS[month.lower()], int(day), tzinfo=timezone.utc)
    except (ValueError, KeyError):
        raise SearchError(f"not an IMAP date (like 1-Feb-2024): {text}") from None


class SearchCompiler:
    """Compiles one SEARCH for one mailbox session.

    `filter_for(Filters)` is the reader's ScopedArchive.filter_for (the archive's search);
    `uids_of(message_set, uid)` turns a sequence set into UIDs; `seen()` lists this reader's
    seen UIDs."""

    def __init__(self, filter_for: Callable[[Filters], dict[str, Any]],
                 uids_of: Callable[[Any, bool], list[int]], seen: Callable[[], list[int]]):
        self.filter_for = filter_for
        self.uids_of = uids_of
        self.seen = seen
        self._seen: list[int] | None = None

    def compile(self, keys: list[Any]) -> dict[str, Any]:
        conditions = []
        keys = list(keys)
        while keys:
            conditions.append(self._one(keys))
        conditions = [c for c in conditions if c]
        if not conditions:
            return {}
        return conditions[0] if len(conditions) == 1 else {"$and": conditions}

    def _seen_uids(self) -> list[int]:
        if self._seen is None:
            self._seen = self.seen()
        return self._seen

    def _take(self, keys: list[Any]) -> Any:
        if not keys:
            raise SearchError("a search key is missing its value")
        return keys.pop(0)

    def _one(self, keys: list[Any]) -> dict[str, Any]:
        key = keys.pop(0)
        if isinstance(key, list):
            return self.compile(key) or {}
        name = _text(key).upper()
        if name in ALWAYS:
            return {}
        if name in NEVER_SET:
            return NOTHING
        if name in ("KEYWORD", "UNKEYWORD"):
            self._take(keys)
            return NOTHING if name == "KEYWORD" else {}
        if name == "SEEN":
            return {UID_FIELD: {"$in": self._seen_uids()}}
        if name == "UNSEEN":
            return {UID_FIELD: {"$nin": self._seen_uids()}}
        if name == "NOT":
            inner = self._one(keys)
            return {"$nor": [inner]} if inner else NOTHING
        if name == "OR":
            first, second = self._one(keys), self._one(keys)
            if not first or not second:
                return {}
            return {"$or": [first, second]}
        if name in TEXT_KEYS:
            return self._text_search(name, _text(self._take(keys)))
        if name == "HEADER":
            field, value = _text(self._take(keys)).upper(), _text(self._take(keys))
            if field in ("FROM", "TO", "CC", "SUBJECT"):
                return self._text_search(field, value)
            if field == "MESSAGE-ID":
                return self._q(f'message-id:{value}') if value.strip("<> ") else {}
            raise SearchError(f"HEADER {field} is not searchable here (From, To, Cc, Subject, Message-ID are)")
        if name in DATE_KEYS:
            day = _day(self._take(keys))
            following = day + timedelta(days=1)
            if name.endswith("SINCE"):
                return {"received_at": {"$gte": day}}
            if name.endswith("BEFORE"):
                return {"received_at": {"$lt": day}}
            return {"received_at": {"$gte": day, "$lt": following}}
        if name in ("LARGER", "SMALLER"):
            try:
                size = int(_text(self._take(keys)))
            except ValueError:
                raise SearchError(f"{name} needs a number of octets") from None
            return {f"{SIZE_FIELD}.n": {"$gt": size} if name == "LARGER" else {"$lt": size}}
        if name == "UID":
            return self._set(_text(self._take(keys)).encode(), True)
        if name[:1].isdigit() or name[:1] == "*":
            return self._set(name.encode(), False)
        raise SearchError(f"unknown search key {name}")

    def _set(self, text: bytes, uid: bool) -> dict[str, Any]:
        try:
            message_set = parseIdList(text)
        except IllegalIdentifierError:
            raise SearchError(f"bad message set {text.decode('ascii', 'replace')}") from None
        return {UID_FIELD: {"$in": self.uids_of(message_set, uid)}}

    def _text_search(self, name: str, value: str) -> dict[str, Any]:
        operator = TEXT_KEYS.get(name)
        quoted = '"' + value.replace('"', " ") + '"'
        if name == "BCC":
            return NOTHING  # never stored: the rebuild leaves Bcc out
        return self._q(f"{operator}:{quoted}" if operator else quoted)

    def _q(self, q: str) -> dict[str, Any]:
        try:
            search = parse(q)
        except QueryError:
            return NOTHING  # nothing searchable (punctuation only): matches nothing, like the API
        return self.filter_for(Filters(search=search))
