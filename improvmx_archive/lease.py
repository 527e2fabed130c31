"""A named lease in MongoDB: which worker, on any host, runs a piece of shared upkeep now.

Expiry is computed here, never with $$NOW (SecantusDB compares it wrongly).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

from pymongo.errors import DuplicateKeyError

from .db import DURABLE

LEASES = "maintenance_leases"


class Lease:
    """A named lease in MongoDB: one holder at a time until it expires."""

    def __init__(self, database, name: str):
        self.leases = database.get_collection(LEASES, write_concern=DURABLE)
        self.name = name
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._taken_at: datetime | None = None

    def acquire(self, duration: timedelta) -> bool:
        """Take the lease if it is free or expired; never waits. An unexpired lease makes the
        upsert collide with the existing _id, which is how a refusal shows."""
        now = datetime.now(timezone.utc)
        try:
            self.leases.find_one_and_update(
                {"_id": self.name, "expires_at": {"$lte": now}},
                {"$set": {"holder": self.holder, "taken_at": now, "expires_at": now + duration}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        self._taken_at = now
        return True

    def release(self) -> None:
        """Let the next taker have the lease now, if it is still the one this object took."""
        if self._taken_at is not None:
            self.leases.update_one({"_id": self.name, "holder": self.holder, "taken_at": self._taken_at},
                                   {"$set": {"expires_at": datetime.now(timezone.utc)}})
            self._taken_at = None
