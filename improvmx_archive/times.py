"""Dates read back from MongoDB, and how the API writes them.

BSON dates carry no zone: a client without tz_aware (mongomock in places, operators' own
scripts against the same data) reads them back naive, and they are always UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone


def as_utc(moment: datetime) -> datetime:
    """The moment as an aware datetime; a naive one is taken to be UTC, as BSON stores it."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def api_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as every JSON answer and notification writes times."""
    return as_utc(moment).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
