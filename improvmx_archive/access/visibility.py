"""The visibility rule, in one place: which messages a principal may see, and as whom they
may send. An admin (and an operator key) sees everything; a member sees the messages whose
`audience` (audience.py) holds one of their grants, plus what they sent themselves."""

from __future__ import annotations

from typing import Any

from ..audience import FIELD, alias_tag, domain_tag, sender_tag
from .principal import Principal

DOMAIN_GRANT_PREFIX = "*@"


def grant_tag(grant: str) -> str:
    """`support@example.com` -> the alias itself; `*@example.com` -> `@example.com`."""
    if grant.startswith(DOMAIN_GRANT_PREFIX):
        return domain_tag(grant[len(DOMAIN_GRANT_PREFIX):])
    return alias_tag(grant)


def visible_tags(principal: Principal) -> list[str]:
    tags = [grant_tag(grant) for grant in principal.grants]
    if principal.person_id:
        tags.append(sender_tag(principal.person_id))
    return tags


def visibility_filter(principal: Principal) -> dict[str, Any]:
    """The MongoDB condition that limits any query to what principal may see ({} for all)."""
    if principal.is_admin:
        return {}
    return {FIELD: {"$in": visible_tags(principal)}}


def within(query: dict[str, Any], visibility: dict[str, Any]) -> dict[str, Any]:
    """query narrowed to a visibility filter: one more top-level condition (never an $or)."""
    if not visibility:
        return query
    return {**query, **visibility}


def can_see(principal: Principal, audience: list[str] | None) -> bool:
    """The same rule over a document already in hand (notifications, the IMAP view's pushes)."""
    if principal.is_admin:
        return True
    return bool(set(visible_tags(principal)).intersection(audience or ()))


def may_send_as(principal: Principal, address: str) -> bool:
    """Whether principal may put this address in From: an admin any address (the archive's
    domains are checked by the caller), a member an alias granted to them or one of a
    granted domain."""
    if principal.is_admin:
        return True
    address = alias_tag(address)
    if "@" not in address:
        return False
    tags = {grant_tag(grant) for grant in principal.grants}
    return address in tags or domain_tag(address.rsplit("@", 1)[1]) in tags
