"""What the inbox sidebar and the overview count, each query bounded by an index or a window
and its answer kept per worker until the archive changes (changes.content_mark: mail added,
deleted or re-tagged, on any worker or host) or a few minutes pass, so a busy page never
rescans an unchanged archive and never shows figures older than the page's other numbers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import DESCENDING

from ..payload import DELIVERED_TO

CACHE_SECONDS = 300
ALIAS_SAMPLE = 20_000  # newest messages whose recipients make up the sidebar's alias list
ALIASES_SHOWN = 30
DAYS_CHARTED = 30
SENDERS_SHOWN = 10


class TimedCache:
    """Values computed at most once per `seconds` per key and archive state; shared by a
    worker's threads."""

    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self._values: dict[str, tuple[float, Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], Any], mark: Any = None) -> Any:
        """The cached value unless it is older than `seconds` or was computed under another
        `mark` (pass changes.content_mark, read before computing)."""
        now = time.monotonic()
        with self._lock:
            found = self._values.get(key)
        if found and now - found[0] < self.seconds and found[2] == mark:
            return found[1]
        value = compute()
        with self._lock:
            self._values[key] = (now, value, mark)
        return value


def _in_domains(address: str, domains: tuple[str, ...]) -> bool:
    domain = address.rsplit("@", 1)[-1]
    return not domains or any(domain == d or domain.endswith("." + d) for d in domains)


def recipient_aliases(emails, domains: tuple[str, ...], within: dict[str, Any]) -> list[tuple[str, int]]:
    """The archive's own addresses, as far as `within` (a visibility filter) shows, with how
    many of those messages each received.

    Which addresses: the most frequent among the newest ALIAS_SAMPLE messages, of those
    each was delivered to (`delivered_to`: envelope recipients and Delivered-To, never a
    To or Cc correspondent); with DOMINIO set, of their recipients in those domains (the
    delivered-to addresses among them).
    Their counts: exact, one indexed count each on by_recipient (what the alias link lists).
    """
    sample = emails.aggregate([
        {"$match": within},
        {"$sort": {"received_at": DESCENDING, "_id": DESCENDING}},
        {"$limit": ALIAS_SAMPLE},
        {"$project": {"addresses": "$recipients" if domains else f"${DELIVERED_TO}"}},
        {"$unwind": "$addresses"},
        {"$group": {"_id": "$addresses", "seen": {"$sum": 1}}},
        {"$sort": {"seen": DESCENDING, "_id": 1}},
    ])
    addresses = [row["_id"] for row in sample if isinstance(row["_id"], str) and _in_domains(row["_id"], domains)]
    counted = [(address, emails.count_documents({"recipients": address, **within}))
               for address in addresses[:ALIASES_SHOWN]]
    return sorted(counted, key=lambda item: (-item[1], item[0]))


def messages_per_day(emails, within: dict[str, Any], today: datetime | None = None) -> list[tuple[datetime, int]]:
    """(UTC day, messages received) for the last DAYS_CHARTED days, oldest first: one
    indexed range count per day on newest_first."""
    end = (today or datetime.now(timezone.utc)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [end - timedelta(days=offset) for offset in range(DAYS_CHARTED - 1, -1, -1)]
    return [(day, emails.count_documents({"received_at": {"$gte": day, "$lt": day + timedelta(days=1)}, **within}))
            for day in days]


def biggest_senders(emails, since: datetime, within: dict[str, Any]) -> list[dict[str, Any]]:
    """Senders with the most messages since `since` (a window, so the cost stays bounded)."""
    return list(emails.aggregate([
        {"$match": {"received_at": {"$gte": since}, **within}},
        {"$group": {"_id": "$from_email", "messages": {"$sum": 1}, "bytes": {"$sum": "$size"}}},
        {"$sort": {"messages": DESCENDING, "_id": 1}},
        {"$limit": SENDERS_SHOWN},
    ]))


def processed_counts(emails, within: dict[str, Any]) -> dict[str, int]:
    total = emails.count_documents(within) if within else emails.estimated_document_count()
    processed = emails.count_documents({"processed": True, **within})
    return {"total": total, "processed": processed, "unprocessed": max(0, total - processed)}
