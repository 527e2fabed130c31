"""Personal API keys: shown once, recognisable by their prefix, kept only as a SHA-256.

A key is random (256 bits), so a fast hash at rest is enough and a lookup is one indexed
find. A key never sees more than its owner (the owner is loaded on every use) and its
scopes narrow that further. Revoked or expired keys are kept (for the audit trail) and
answer 401.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, IndexModel

from ..db import DURABLE
from ..times import as_utc
from .principal import SCOPES

COLLECTION = "api_keys"
PREFIX = "imxa_"
INDEXES = [
    IndexModel([("hash", ASCENDING)], name="hash_unique", unique=True),
    IndexModel([("person_id", ASCENDING)], name="by_person"),
]
LAST_USED_RESOLUTION = timedelta(minutes=1)  # how stale last_used_at may be: one write a minute, not per request
MAX_LABEL = 100


class KeyRequestError(ValueError):
    """A key request is invalid; the message says why."""


def key_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def looks_like_personal_key(token: str) -> bool:
    return token.startswith(PREFIX)


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = sorted({item.strip().lower() for item in items if item.strip()})
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise KeyRequestError(f"scopes are a comma-separated choice of {', '.join(SCOPES)}")
    return scopes


@dataclass(frozen=True)
class KeyCheck:
    """What a presented personal key turned out to be: live (with its record), or refused."""

    key: dict[str, Any] | None
    refusal: str | None  # None, "unknown", "revoked" or "expired"


class Keys:
    """Create, check, list and revoke personal keys; one per app, shared by threads."""

    def __init__(self, database):
        self.collection = database.get_collection(COLLECTION, write_concern=DURABLE)

    def ensure_indexes(self) -> None:
        self.collection.create_indexes(INDEXES)

    def create(self, person_id: str, label: str, scopes: list[str],
               expires_days: float | None = None) -> tuple[str, dict[str, Any]]:
        """A new key for a person; returns the token (shown once, never stored) and its record."""
        label = (label or "").strip()
        if not label or len(label) > MAX_LABEL or any(ord(ch) < 32 for ch in label):
            raise KeyRequestError(f"a key's name is 1 to {MAX_LABEL} printable characters")
        if expires_days is not None and not 0 < expires_days <= 3650:
            raise KeyRequestError("expiry is between 1 and 3650 days")
        token = PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        record = {"_id": "k_" + secrets.token_hex(6), "hash": key_hash(token), "person_id": str(person_id),
                  "name": label, "scopes": parse_scopes(scopes), "created_at": now,
                  "expires_at": now + timedelta(days=expires_days) if expires_days else None,
                  "revoked_at": None, "last_used_at": None}
        self.collection.insert_one(record)
        return token, record

    def check(self, token: str) -> KeyCheck:
        """The live key behind a token, or why it is refused."""
        record = self.collection.find_one({"hash": key_hash(token)})
        if record is None:
            return KeyCheck(None, "unknown")
        if record.get("revoked_at"):
            return KeyCheck(record, "revoked")
        expires_at = record.get("expires_at")
        now = datetime.now(timezone.utc)
        if expires_at and as_utc(expires_at) <= now:
            return KeyCheck(record, "expired")
        return KeyCheck(record, None)

    def touch(self, key_id: str) -> None:
        """Record a use, at most once per LAST_USED_RESOLUTION (a conditional write)."""
        now = datetime.now(timezone.utc)
        self.collection.update_one(
            {"_id": key_id, "$or": [{"last_used_at": None}, {"last_used_at": {"$lt": now - LAST_USED_RESOLUTION}}]},
            {"$set": {"last_used_at": now}})

    def of_person(self, person_id: str) -> list[dict[str, Any]]:
        return list(self.collection.find({"person_id": str(person_id)}, {"hash": 0}).sort("created_at", ASCENDING))

    def all(self) -> list[dict[str, Any]]:
        return list(self.collection.find({}, {"hash": 0}).sort("created_at", ASCENDING))

    def by_id(self, key_id: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": key_id}, {"hash": 0})

    def revoke(self, key_id: str, *, person_id: str | None = None) -> dict[str, Any] | None:
        """Revoke a key (only the person's own when person_id is given); None if not found."""
        selector: dict[str, Any] = {"_id": key_id}
        if person_id is not None:
            selector["person_id"] = str(person_id)
        return self.collection.find_one_and_update(
            {**selector, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(timezone.utc)}},
            projection={"hash": 0}, return_document=True) or self.collection.find_one(selector, {"hash": 0})
