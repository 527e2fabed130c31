"""The people of a team: name, email, role, grants (aliases or whole domains), disabled.

Read afresh on every request (by key, session or IMAP login), so disabling a person or
changing their grants takes effect on their very next request on every worker and host.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from ..db import DURABLE
from .principal import MEMBER, ROLES

COLLECTION = "people"
INDEXES = [
    IndexModel([("name", ASCENDING)], name="name_unique", unique=True),
    IndexModel([("email", ASCENDING)], name="email_unique", unique=True),
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{1,63}$")
_DOMAIN_GRANT = re.compile(r"^\*@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{1,63}$")


class PeopleError(ValueError):
    """A person, name, address or grant is invalid or taken; the message says which."""


def valid_address(value: str) -> str:
    address = value.strip().lower()
    if not _ADDRESS.match(address):
        raise PeopleError(f"{value!r} is not an email address")
    return address


def valid_grant(value: str) -> str:
    """An alias (support@example.com) or a whole domain (*@example.com), lower-cased."""
    grant = value.strip().lower()
    if _DOMAIN_GRANT.match(grant):
        return grant
    try:
        return valid_address(grant)
    except PeopleError:
        raise PeopleError(f"{value!r} is neither an alias (support@example.com) nor a domain "
                          "(*@example.com)") from None


class People:
    """Create, find and change people; one per app, shared by threads."""

    def __init__(self, database):
        self.collection = database.get_collection(COLLECTION, write_concern=DURABLE)

    def ensure_indexes(self) -> None:
        self.collection.create_indexes(INDEXES)

    def add(self, name: str, email: str, role: str = MEMBER) -> dict[str, Any]:
        if not _NAME.match(name or ""):
            raise PeopleError("a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if role not in ROLES:
            raise PeopleError(f"role must be one of {', '.join(ROLES)}")
        now = datetime.now(timezone.utc)
        person = {"_id": ObjectId(), "name": name, "email": valid_address(email), "role": role, "grants": [],
                  "disabled": False, "created_at": now, "updated_at": now}
        try:
            self.collection.insert_one(person)
        except DuplicateKeyError:
            raise PeopleError(f"a person with that name or email already exists") from None
        return person

    def by_id(self, person_id: str | ObjectId) -> dict[str, Any] | None:
        if not ObjectId.is_valid(person_id):
            return None
        return self.collection.find_one({"_id": ObjectId(person_id)})

    def by_name(self, name: str) -> dict[str, Any] | None:
        return self.collection.find_one({"name": name})

    def by_email(self, email: str) -> dict[str, Any] | None:
        return self.collection.find_one({"email": email.strip().lower()})

    def active(self, person_id: str | ObjectId) -> dict[str, Any] | None:
        """The person, if they exist and are not disabled."""
        person = self.by_id(person_id)
        return person if person and not person.get("disabled") else None

    def _update(self, name: str, change: dict[str, Any]) -> dict[str, Any]:
        change.setdefault("$set", {})["updated_at"] = datetime.now(timezone.utc)
        person = self.collection.find_one_and_update({"name": name}, change, projection={"password_hash": 0},
                                                     return_document=True)
        if person is None:
            raise PeopleError(f"no person named {name!r}")
        return person

    def grant(self, name: str, grants: list[str]) -> dict[str, Any]:
        return self._update(name, {"$addToSet": {"grants": {"$each": [valid_grant(g) for g in grants]}}})

    def revoke(self, name: str, grants: list[str]) -> dict[str, Any]:
        return self._update(name, {"$pullAll": {"grants": [valid_grant(g) for g in grants]}})

    def set_disabled(self, name: str, disabled: bool) -> dict[str, Any]:
        return self._update(name, {"$set": {"disabled": disabled}})

    def set_role(self, name: str, role: str) -> dict[str, Any]:
        if role not in ROLES:
            raise PeopleError(f"role must be one of {', '.join(ROLES)}")
        return self._update(name, {"$set": {"role": role}})

    def set_password_hash(self, name: str, password_hash: str) -> dict[str, Any]:
        """Store a hash made by passwords.hash_password (never a password)."""
        return self._update(name, {"$set": {"password_hash": password_hash}})

    def list(self) -> list[dict[str, Any]]:
        return list(self.collection.find({}, {"password_hash": 0}).sort("name", ASCENDING))
