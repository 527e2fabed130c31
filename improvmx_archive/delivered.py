"""`delivered_to` for messages stored before the field existed, derived from what they keep
(their Delivered-To headers and envelope), so the UI's alias list covers older mail too."""

from __future__ import annotations

from collections.abc import Callable

from .backfill import fill_missing
from .payload import DELIVERED_TO, delivered_addresses

MISSING = {DELIVERED_TO: {"$exists": False}}


def missing_count(emails) -> int:
    return emails.count_documents(MISSING)


def backfill(emails, progress: Callable[[int], None] | None = None) -> int:
    """Give every message without `delivered_to` its addresses; returns how many."""
    return fill_missing(emails, DELIVERED_TO, {"headers": 1, "extra.envelope": 1}, _delivered, progress)


def _delivered(document: dict) -> list[str]:
    extra = document.get("extra") if isinstance(document.get("extra"), dict) else {}
    return delivered_addresses(extra.get("envelope"), document.get("headers"))
