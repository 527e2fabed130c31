"""Signed-in UI sessions, kept in MongoDB so every worker and every app host shares them.

The cookie holds a random token; the database holds only its SHA-256, so a copy of the
database signs nobody in. A session is a person's (`person_id`, checked against the people
store on every request) or an operator's: then it records an HMAC fingerprint of the API
key it was opened with, and once that key is gone from API_KEY it no longer resumes.
Expiry is compared here on every request; the TTL index only clears old documents away.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..times import as_utc

COOKIE_NAME = "ui_session"
COOKIE_PATH = "/ui"
_FINGERPRINT_CONTEXT = b"improvmx-archive ui session key v1"


def key_fingerprint(key: str) -> str:
    """Names a key without storing it: HMAC keyed by the key itself over a fixed context."""
    return hmac.new(key.encode(), _FINGERPRINT_CONTEXT, hashlib.sha256).hexdigest()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()



@dataclass(frozen=True)
class UiSession:
    id: str  # the token's hash, also the document's _id
    expires_at: datetime
    person_id: str | None = None  # None: an operator's session, opened with an API_KEY key


class UiSessions:
    """Open, resume and end sessions; one per app, shared by threads."""

    def __init__(self, database, api_keys: tuple[str, ...], lifetime: timedelta):
        self.collection = database.ui_sessions
        self.lifetime = lifetime
        self.fingerprints = frozenset(key_fingerprint(key) for key in api_keys)

    def open(self, *, ip: str, user_agent: str, operator_key: str | None = None,
             person_id: str | None = None) -> tuple[str, UiSession]:
        """A new session for a credential already checked (an API_KEY key, or a person's
        password); returns the cookie token."""
        if (operator_key is None) == (person_id is None):
            raise ValueError("a session is either an operator's or a person's")
        token = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        document = {
            "_id": _token_hash(token),
            "key_fingerprint": key_fingerprint(operator_key) if operator_key else None,
            "person_id": person_id,
            "created_at": now,
            "expires_at": now + self.lifetime,
            "ip": ip,
            "user_agent": user_agent[:200],
        }
        self.collection.insert_one(document)
        return token, UiSession(document["_id"], document["expires_at"], person_id)

    def resume(self, token: str | None) -> UiSession | None:
        """The live session behind a cookie token, or None (unknown, expired or revoked)."""
        if not token or len(token) > 100:
            return None
        return self.by_id(_token_hash(token))

    def by_id(self, session_id: str) -> UiSession | None:
        document = self.collection.find_one({"_id": session_id})
        if document is None:
            return None
        expires_at = as_utc(document["expires_at"])
        person_id = document.get("person_id")
        operator_key_gone = person_id is None and document.get("key_fingerprint") not in self.fingerprints
        if expires_at <= datetime.now(timezone.utc) or operator_key_gone:
            self.collection.delete_one({"_id": session_id})
            return None
        return UiSession(session_id, expires_at, person_id)

    def end_person(self, person_id: str, keep: str | None = None) -> int:
        """End every session of a person but `keep` (a session id); how many ended."""
        selector = {"person_id": str(person_id)}
        if keep:
            selector["_id"] = {"$ne": keep}
        return self.collection.delete_many(selector).deleted_count

    def end(self, token: str | None) -> None:
        if token and len(token) <= 100:
            self.collection.delete_one({"_id": _token_hash(token)})
