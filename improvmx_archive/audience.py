"""Who a stored message is for: its `audience` tags, the one field the visibility rule asks.

Each message carries the addresses it was delivered to (the archive's `recipients`), the
domain of each as `@domain`, and for mail sent from the archive `sent:<person id>`. A
grant becomes one tag, so a person's view is a single `$in` on one indexed array, on every
server, whatever else a query asks. Documents stored before the field existed get it from
`backfill`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .backfill import fill_missing

FIELD = "audience"
UNTAGGED = {FIELD: {"$exists": False}}
SENT_PREFIX = "sent:"
# The visibility filter of an admin, an operator key or an operator command: no condition.
UNRESTRICTED: Mapping[str, Any] = MappingProxyType({})


def alias_tag(address: str) -> str:
    return address.strip().lower()


def domain_tag(domain: str) -> str:
    return "@" + domain.strip().lower().lstrip("@")


def sender_tag(person_id: str) -> str:
    return SENT_PREFIX + str(person_id)


def audience_of(addresses: Iterable[Any], sent_by: str | None = None) -> list[str]:
    """The tags for a message delivered to (or sent from) these addresses; each once."""
    tags: dict[str, None] = {}
    for address in addresses:
        if isinstance(address, str) and "@" in address:
            tags.setdefault(alias_tag(address), None)
            tags.setdefault(domain_tag(address.rsplit("@", 1)[1]), None)
    if sent_by:
        tags.setdefault(sender_tag(sent_by), None)
    return list(tags)


def untagged_count(emails) -> int:
    return emails.count_documents(UNTAGGED)


def backfill(emails, progress: Callable[[int], None] | None = None) -> int:
    """Give every message without `audience` its tags from its recipients; returns how many."""
    return fill_missing(emails, FIELD, {"recipients": 1},
                        lambda document: audience_of(document.get("recipients") or []), progress)
