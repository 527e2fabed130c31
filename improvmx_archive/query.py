"""The `q` search language: parse what an owner types, then compile it to one MongoDB filter.

Parsing is pure (no database) and raises QueryError naming the problem. Compiling needs the
vocabulary only to expand `prefix*` terms. One positive word term becomes the "driver": an
equality on the multikey `tokens` field that the `by_token` index (tokens, received_at,
_id) turns into an index scan already in page order. Every other condition (more words,
phrase order, field scoping, negation) is a residual filter checked on the candidates the
driver finds; phrase and field checks match whole words on the per-field word sequences
the indexer stores in `search`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .errors import ApiError
from .tokens import fold, message_id_token, words

MAX_TERMS = 32
MAX_VALUE_LENGTH = 256
MAX_QUERY_LENGTH = MAX_TERMS * (MAX_VALUE_LENGTH + 24)
# A prefix matching more vocabulary words than this is checked by a pattern on the
# candidates instead of an index $in (MongoDB merges at most a few hundred sorted scans).
MAX_PREFIX_EXPANSION = 100

# Where each text operator looks, as keys of the indexer's `search` word sequences.
TEXT_FIELDS = {"from": "f", "to": "t", "cc": "c", "subject": "s", "body": "b", "filename": "n"}
# A free word or phrase looks in all of them ("t" already holds the cc addresses and names).
ANY_FIELD = ("s", "f", "t", "n", "b")
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2}
_OPERATOR = re.compile(r"^([A-Za-z][A-Za-z-]*):(.*)$", re.S)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SIZE = re.compile(r"^(\d{1,12}(?:\.\d{1,6})?)\s*([a-z]*)$")


class QueryError(ApiError):
    """The query cannot be understood; a 400 whose message names the problem."""

    def __init__(self, message: str):
        super().__init__(400, message)


@dataclass(frozen=True)
class Term:
    """Words to find in order (one word, or a phrase), optionally in one field only."""

    words: tuple[str, ...]
    field: str | None = None  # a TEXT_FIELDS value, or None for any field
    prefix: bool = False  # the last word is a prefix
    negated: bool = False


@dataclass(frozen=True)
class Search:
    """A parsed `q`: text terms, plus plain conditions (dates, sizes, flags, Message-ID)."""

    text: str
    terms: tuple[Term, ...]
    conditions: tuple[dict, ...]
    message_ids: tuple[str, ...]  # tokens a message must carry (message-id:)


def _lex(q: str) -> list[tuple[bool, str]]:
    """Split q into (negated, raw word) pieces; a quoted stretch, spaces and all, stays in
    its word. Raises QueryError on an unclosed quote."""
    pieces: list[tuple[bool, str]] = []
    position, length = 0, len(q)
    while position < length:
        if q[position].isspace():
            position += 1
            continue
        negated = q[position] == "-" and position + 1 < length and not q[position + 1].isspace()
        if negated:
            position += 1
        start = position
        while position < length and not q[position].isspace():
            if q[position] == '"':
                closing = q.find('"', position + 1)
                if closing < 0:
                    raise QueryError(f"unclosed quote in q at character {position + 1}")
                position = closing
            position += 1
        pieces.append((negated, q[start:position]))
    return pieces


def _unquote(value: str) -> tuple[str, bool]:
    """The value without its quotes, and whether a trailing `*` outside quotes asks for a prefix."""
    prefix = value.endswith("*")
    if prefix:
        value = value[:-1]
    return value.replace('"', " ").strip(), prefix


def _text_term(raw: str, field: str | None, negated: bool) -> Term | None:
    """The term for a word, phrase or operator value; None when it holds no letters or digits
    (punctuation is not searchable, so `a.*b` means `a b` and a lone `(` means nothing)."""
    value, prefix = _unquote(raw)
    found = tuple(words(value))
    return Term(found, field, prefix, negated) if found else None


def _date(name: str, value: str) -> datetime:
    if not _DATE.match(value):
        raise QueryError(f"{name}: needs a date as YYYY-MM-DD, not '{value}'")
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise QueryError(f"{name}: '{value}' is not a calendar date") from None


def _size(name: str, value: str) -> int:
    match = _SIZE.match(value.lower())
    if not match or match.group(2) not in SIZE_UNITS:
        raise QueryError(f"{name}: needs a size such as 500KB or 10MB (units K, KB, M, MB), not '{value}'")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def _negate(condition: dict, negated: bool) -> dict:
    return {"$nor": [condition]} if negated else condition


def _operator(name: str, raw: str, negated: bool, search: dict[str, list]) -> None:
    """Add one `name:value` operator to the lists being built for a Search."""
    operator = name.lower()
    value, _ = _unquote(raw) if operator in ("before", "after", "larger", "smaller", "has", "is", "in") \
        else (raw, False)
    value = value.strip()
    if operator in TEXT_FIELDS:
        term = _text_term(raw, TEXT_FIELDS[operator], negated)
        if term is None:
            raise QueryError(f"{operator}: needs a value with letters or digits, not '{raw}'")
        search["terms"].append(term)
    elif operator == "message-id":
        identifier = raw.replace('"', "").strip()
        if not identifier.strip("<>"):
            raise QueryError("message-id: needs a Message-ID value")
        token = message_id_token(identifier)
        if negated:
            search["conditions"].append({"tokens": {"$ne": token}})
        else:
            search["message_ids"].append(token)
    elif operator == "has":
        if value.lower() in ("attachment", "attachments"):
            condition = {"has_attachments": True}
        elif value.lower() in ("inline", "inlines"):
            condition = {"inlines.0": {"$exists": True}}
        else:
            raise QueryError(f"has: takes 'attachment' or 'inline', not '{value}'")
        search["conditions"].append(_negate(condition, negated))
    elif operator == "is":
        if value.lower() not in ("processed", "unprocessed"):
            raise QueryError(f"is: takes 'processed' or 'unprocessed', not '{value}'")
        search["conditions"].append({"processed": (value.lower() == "processed") != negated})
    elif operator == "in":
        if value.lower() not in ("sent", "inbox"):
            raise QueryError(f"in: takes 'sent' (mail sent from the archive) or 'inbox', not '{value}'")
        sent = (value.lower() == "sent") != negated
        search["conditions"].append({"source": "sent"} if sent else {"source": {"$ne": "sent"}})
    elif operator in ("before", "after"):
        day = _date(operator, value)
        earlier = (operator == "before") != negated
        search["conditions"].append({"received_at": {"$lt": day} if earlier else {"$gte": day}})
    elif operator in ("larger", "smaller"):
        size = _size(operator, value)
        if operator == "larger":
            search["conditions"].append({"size": {"$lte": size} if negated else {"$gt": size}})
        else:
            search["conditions"].append({"size": {"$gte": size} if negated else {"$lt": size}})
    else:
        known = ", ".join(sorted([*TEXT_FIELDS, "message-id", "has", "is", "in", "before", "after", "larger", "smaller"]))
        raise QueryError(f"unknown operator '{name}:' (known: {known}; quote the word to search for it)")


def parse(q: str) -> Search:
    """Parse a `q` value; raises QueryError (400) naming what cannot be understood."""
    if len(q) > MAX_QUERY_LENGTH:
        raise QueryError(f"q must be at most {MAX_QUERY_LENGTH} characters")
    pieces = _lex(q)
    if len(pieces) > MAX_TERMS:
        raise QueryError(f"q has {len(pieces)} terms; at most {MAX_TERMS} are allowed")
    built: dict[str, list] = {"terms": [], "conditions": [], "message_ids": []}
    for negated, raw in pieces:
        operator = _OPERATOR.match(raw)
        value = operator.group(2) if operator else raw
        if len(value) > MAX_VALUE_LENGTH:
            raise QueryError(f"a term of q may be at most {MAX_VALUE_LENGTH} characters ('{raw[:40]}...')")
        if operator:
            if not value.strip():
                raise QueryError(f"'{operator.group(1)}:' needs a value")
            _operator(operator.group(1), value, negated, built)
        else:
            term = _text_term(raw, None, negated)
            if term:
                built["terms"].append(term)
    if not any(built.values()):
        raise QueryError("q has nothing to search for: words need letters or digits")
    return Search(q, tuple(built["terms"]), tuple(built["conditions"]), tuple(built["message_ids"]))


def _pattern(term: Term) -> dict[str, Any]:
    """A whole-word regex for the term's words in order, on the indexer's word sequences
    (words are separated by one space; values of a field by ' | ', which no phrase spans)."""
    body = " ".join(re.escape(word) for word in term.words)
    return {"$regex": "(?:^| )" + body + ("" if term.prefix else "(?: |$)")}


def _in_fields(term: Term) -> dict[str, Any]:
    fields = (term.field,) if term.field else ANY_FIELD
    clauses = [{f"search.{field}": _pattern(term)} for field in fields]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


@dataclass
class Compiled:
    """The MongoDB conditions of a Search: `driver` (an equality or $in on `tokens`, None when
    no positive word can narrow the scan) and `residual`, checked on what the driver finds."""

    driver: dict | None
    residual: list[dict]


def compile_search(search: Search, expand: Callable[[str], list[str] | None]) -> Compiled:
    """Compile a parsed Search. `expand(prefix)` lists the vocabulary words starting with
    prefix, or None when there are more than MAX_PREFIX_EXPANSION of them."""
    candidates: list[tuple[tuple[int, int], dict]] = [((3, len(token)), {"tokens": token})
                                                       for token in search.message_ids]
    residual: list[dict] = list(search.conditions)
    for term in search.terms:
        whole = term.words[:-1] if term.prefix else term.words
        if term.negated:
            if term.field is None and len(term.words) == 1 and not term.prefix:
                residual.append({"tokens": {"$ne": term.words[0]}})
            else:
                residual.append({"$nor": [_in_fields(term)]})
            continue
        if whole:
            longest = max(whole, key=len)
            candidates.append(((2, len(longest)), {"tokens": longest}))
        if term.prefix and len(term.words) == 1:
            expanded = expand(term.words[0])
            if expanded is not None:
                candidates.append(((1, -len(expanded)), {"tokens": {"$in": expanded}}))
            if expanded is None or term.field:
                residual.append(_in_fields(term))
        elif term.field or len(term.words) > 1:
            residual.append(_in_fields(term))
    if not candidates:
        return Compiled(None, residual)
    candidates.sort(key=lambda item: item[0], reverse=True)
    driver = candidates[0][1]
    return Compiled(driver, [clause for _, clause in candidates[1:] if clause != driver] + residual)


def normalised_text(search: Search) -> str:
    """The query as folded text, so cursors survive harmless re-spellings (case, spaces)."""
    return " ".join(fold(search.text).split())
