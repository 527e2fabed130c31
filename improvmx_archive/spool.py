"""A local disk spool that keeps messages while MongoDB cannot take them.

A spooled message is written to a temporary name, fsynced, renamed and its directory
fsynced before the webhook answers 202, so a crash right after the answer loses nothing.
Replay stores it through the same idempotent ingest as the webhook and deletes the file only
afterwards; a file another worker is replaying is skipped (flock), and a file that cannot be
parsed is moved to corrupt/ with an error logged, never dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId

from .db import DatabaseUnavailable

log = logging.getLogger(__name__)

SUFFIX = ".json"


class SpoolUnavailable(Exception):
    """The spool directory cannot take the message (disk full, read-only, missing rights)."""


@dataclass
class ReplayReport:
    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    skipped: int = 0
    stopped_by_outage: bool = False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Spooled payloads in one directory, named by the id the webhook already answered."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.corrupt_dir = self.directory / "corrupt"

    def put(self, payload: dict[str, Any]) -> ObjectId:
        """Durably write one payload; raises SpoolUnavailable if the disk cannot take it."""
        email_id = ObjectId()
        final = self.directory / f"{email_id}{SUFFIX}"
        temporary = self.directory / f".{email_id}{SUFFIX}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, final)
            _fsync_directory(self.directory)
        except OSError as error:
            log.error("spool write failed: %s", error.strerror or type(error).__name__)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise SpoolUnavailable() from None
        return email_id

    def pending(self) -> list[Path]:
        """Spooled files, oldest first (ObjectId names sort by creation time)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if ObjectId.is_valid(p.stem))

    def status(self) -> dict[str, Any]:
        files = self.pending()
        sizes, oldest = 0, None
        for path in files:
            try:
                sizes += path.stat().st_size
            except FileNotFoundError:
                continue
            created = ObjectId(path.stem).generation_time.timestamp()
            oldest = created if oldest is None else min(oldest, created)
        corrupt = len(list(self.corrupt_dir.glob("*"))) if self.corrupt_dir.is_dir() else 0
        return {
            "depth": len(files),
            "bytes": sizes,
            "oldest_age_seconds": round(time.time() - oldest, 1) if oldest is not None else None,
            "corrupt": corrupt,
        }

    def replay(self, archive) -> ReplayReport:
        """Move every spooled message into the archive; stops early while MongoDB is down."""
        report = ReplayReport()
        for path in self.pending():
            try:
                outcome = self._replay_one(path, archive)
            except DatabaseUnavailable:
                report.stopped_by_outage = True
                break
            if outcome is None:
                report.skipped += 1
            else:
                getattr(report, outcome).append(path.stem)
        return report

    def _replay_one(self, path: Path, archive) -> str | None:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            if os.fstat(handle.fileno()).st_nlink == 0:
                return None
            try:
                payload = json.loads(handle.read())
                if not isinstance(payload, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                self._set_aside(path)
                return "corrupt"
            result = archive.ingest(payload, email_id=ObjectId(path.stem))
            path.unlink(missing_ok=True)
            _fsync_directory(self.directory)
            log.info("replayed spooled email_id=%s duplicate=%s", result.email_id, result.duplicate)
            return "duplicates" if result.duplicate else "stored"

    def _set_aside(self, path: Path) -> None:
        self.corrupt_dir.mkdir(parents=True, exist_ok=True)
        os.rename(path, self.corrupt_dir / path.name)
        _fsync_directory(self.directory)
        log.error("corrupt spool file moved to %s", self.corrupt_dir / path.name)
