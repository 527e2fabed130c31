"""Who is asking: the one object every way in (API, UI, IMAP, sending) hands to the rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ADMIN = "admin"
MEMBER = "member"
ROLES = (ADMIN, MEMBER)
# read: list and download; write: processed/hold and delete; send: reply/forward/compose; imap: sign in over IMAP.
SCOPES = ("read", "write", "send", "imap")
OPERATOR_NAME = "operator"


@dataclass(frozen=True)
class Principal:
    """A caller as this request sees it: built from the database on each request, never cached.

    `person_id` is None for an operator key (the keys in API_KEY), which acts as an admin.
    `key_id` names the personal key used (None for an operator key or a password session);
    `scopes` are what that key allows (a session or operator key allows everything)."""

    name: str
    role: str
    person_id: str | None = None
    email: str | None = None
    grants: tuple[str, ...] = ()
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))
    via: str = "key"  # "key", "session" or "imap"

    @classmethod
    def operator(cls, via: str = "key") -> "Principal":
        return cls(name=OPERATOR_NAME, role=ADMIN, via=via)

    @classmethod
    def for_person(cls, person: dict[str, Any], *, key: dict[str, Any] | None = None,
                   via: str = "key") -> "Principal":
        scopes = frozenset(key.get("scopes") or ()) if key else frozenset(SCOPES)
        return cls(name=person["name"], role=person.get("role", MEMBER), person_id=str(person["_id"]),
                   email=person.get("email"), grants=tuple(person.get("grants") or ()),
                   key_id=str(key["_id"]) if key else None, scopes=scopes, via=via)

    @property
    def is_operator(self) -> bool:
        return self.person_id is None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def actor(self) -> dict[str, Any]:
        """Who did it, for the audit trail and logs: names and ids, never a key."""
        return {"name": self.name, "person_id": self.person_id, "key_id": self.key_id, "via": self.via}

    @property
    def rate_key(self) -> str:
        """What rate limits count for authenticated requests: the person (all their keys
        together), or the operator."""
        return f"person:{self.person_id}" if self.person_id else "operator"


# The operator at the server's own terminal (improvmx-archive users/keys/outbox ...): an admin.
CLI_ACTOR = Principal.operator(via="cli")
