"""Signed-in UI sessions, kept in MongoDB so every worker and every app host shares them.

The cookie holds a random token; the database holds only its SHA-256, so a copy of the
database signs nobody in. Each session records an HMAC fingerprint of the API key it was
opened with: once that key is gone from API_KEY, the session no longer resumes. Expiry is
compared here on every request; the TTL index only clears old documents away.
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


class UiSessions:
    """Open, resume and end sessions; one per app, shared by threads."""

    def __init__(self, database, api_keys: tuple[str, ...], lifetime: timedelta):
        self.collection = database.ui_sessions
        self.lifetime = lifetime
        self.fingerprints = frozenset(key_fingerprint(key) for key in api_keys)

    def open(self, key: str, *, ip: str, user_agent: str) -> tuple[str, UiSession]:
        """A new session for a key already checked against API_KEY; returns the cookie token."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        document = {
            "_id": _token_hash(token),
            "key_fingerprint": key_fingerprint(key),
            "created_at": now,
            "expires_at": now + self.lifetime,
            "ip": ip,
            "user_agent": user_agent[:200],
        }
        self.collection.insert_one(document)
        return token, UiSession(document["_id"], document["expires_at"])

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
        if expires_at <= datetime.now(timezone.utc) or document.get("key_fingerprint") not in self.fingerprints:
            self.collection.delete_one({"_id": session_id})
            return None
        return UiSession(session_id, expires_at)

    def end(self, token: str | None) -> None:
        if token and len(token) <= 100:
            self.collection.delete_one({"_id": _token_hash(token)})
