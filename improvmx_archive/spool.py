"""A local disk spool that keeps messages while MongoDB cannot take them.

A spooled message is written to a temporary name, fsynced, renamed and its directory
fsynced before the webhook answers 202, so a crash right after the answer loses nothing.
Replay stores it through the same idempotent ingest as the webhook and deletes the file only
afterwards; a file another process is replaying is skipped (flock), a file that cannot be
parsed is moved to corrupt/ with an error logged, and neither blocks the files after it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

from .db import DatabaseUnavailable

log = logging.getLogger(__name__)

SUFFIX = ".json"
TEMPORARY_SUFFIX = ".tmp"
# A temporary file this old belongs to a request that died before answering (far beyond
# gunicorn's timeout), so its message was never acknowledged and ImprovMX retried it.
ABANDONED_AFTER_SECONDS = 3600
REPLAY_LOCK_NAME = ".replay.lock"


class SpoolUnavailable(Exception):
    """The spool directory cannot take the message (disk full, read-only, missing rights)."""


@dataclass
class ReplayReport:
    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    stopped_by_outage: bool = False

    @property
    def moved(self) -> int:
        """Spool files whose message is now in the archive (and which are gone from disk)."""
        return len(self.stored) + len(self.duplicates)


@dataclass(frozen=True)
class SpooledMessage:
    email_id: str
    path: Path
    size: int

    @property
    def spooled_at(self) -> datetime:
        return ObjectId(self.email_id).generation_time


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _still_named(path: Path, fd: int) -> bool:
    """Whether the open file is still the one at path (not removed or moved since)."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class Spool:
    """Spooled payloads in one directory, named by the id the webhook already answered."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.corrupt_dir = self.directory / "corrupt"

    def put(self, payload: dict[str, Any]) -> ObjectId:
        """Durably write one payload; raises SpoolUnavailable if the disk cannot take it.

        The JSON is streamed to disk (a 70 MB payload is not copied into one more string) and
        ASCII-escaped, so lone surrogates ImprovMX may send survive the round trip.
        """
        email_id = ObjectId()
        final = self.directory / f"{email_id}{SUFFIX}"
        temporary = self.directory / f".{email_id}{SUFFIX}{TEMPORARY_SUFFIX}"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="ascii", newline="") as handle:
                json.dump(payload, handle, ensure_ascii=True, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, final)
            _fsync_directory(self.directory)
        except OSError as error:
            log.error("spool write failed in %s: %s", self.directory, error.strerror or type(error).__name__)
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise SpoolUnavailable() from None
        return email_id

    def pending(self) -> list[Path]:
        """Spooled files, oldest first (ObjectId names sort by creation time)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if ObjectId.is_valid(p.stem))

    def messages(self) -> list[SpooledMessage]:
        """What waits, oldest first; a file replayed while we look is left out."""
        found = []
        for path in self.pending():
            try:
                found.append(SpooledMessage(path.stem, path, path.stat().st_size))
            except FileNotFoundError:
                continue
        return found

    def status(self) -> dict[str, Any]:
        waiting = self.messages()
        oldest = waiting[0].spooled_at.timestamp() if waiting else None
        corrupt = len(list(self.corrupt_dir.glob("*"))) if self.corrupt_dir.is_dir() else 0
        return {
            "depth": len(waiting),
            "bytes": sum(message.size for message in waiting),
            "oldest_age_seconds": round(time.time() - oldest, 1) if oldest is not None else None,
            "corrupt": corrupt,
        }

    def writable(self) -> bool:
        """Whether a message could be spooled right now (checked by writing a probe file)."""
        probe = self.directory / f".probe-{os.getpid()}{TEMPORARY_SUFFIX}"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(probe, "wb") as handle:
                handle.write(b"probe")
                os.fsync(handle.fileno())
            return True
        except OSError:
            return False
        finally:
            with suppress(OSError):
                probe.unlink(missing_ok=True)

    @contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """Hold this spool's replay lock if no other process or thread holds it.

        Yields whether it was taken; the kernel releases it if the holder dies.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle = open(self.directory / REPLAY_LOCK_NAME, "a")
        except OSError as error:
            log.error("cannot open the spool replay lock in %s: %s", self.directory,
                      error.strerror or type(error).__name__)
            yield False
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def replay(self, archive, should_stop: Callable[[], bool] = lambda: False) -> ReplayReport:
        """Move every spooled message into the archive, oldest first.

        Stops early while MongoDB is down (the next file would only wait for the same
        timeout) or when should_stop() says so; any other failure is logged and left for the
        next replay without holding up the rest.
        """
        report = ReplayReport()
        self._remove_abandoned_temporaries()
        for path in self.pending():
            if should_stop():
                break
            try:
                outcome = self._replay_one(path, archive)
            except DatabaseUnavailable:
                report.stopped_by_outage = True
                break
            except Exception as error:  # noqa: BLE001 - one bad file must not stop the others
                log.error("replay of spooled email_id=%s failed (%s); it stays in the spool",
                          path.stem, type(error).__name__)
                report.failed.append(path.stem)
                continue
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
            if not _still_named(path, handle.fileno()):
                return None  # another replayer stored it or set it aside while we waited
            try:
                payload = json.loads(handle.read())
                if not isinstance(payload, dict) or not payload:
                    raise ValueError("not a JSON object")
            except ValueError:
                self._set_aside(path)
                return "corrupt"
            # The id was made when the webhook spooled it: that is when the mail arrived.
            email_id = ObjectId(path.stem)
            result = archive.ingest(payload, email_id=email_id, received_at=email_id.generation_time)
            path.unlink(missing_ok=True)
            _fsync_directory(self.directory)
            log.info("replayed spooled email_id=%s stored_as=%s duplicate=%s",
                     path.stem, result.email_id, result.duplicate)
            return "duplicates" if result.duplicate or result.deleted else "stored"

    def _set_aside(self, path: Path) -> None:
        self.corrupt_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(path, self.corrupt_dir / path.name)
        _fsync_directory(self.directory)
        log.error("corrupt spool file moved to %s; inspect it and re-post it by hand if it holds mail",
                  self.corrupt_dir / path.name)

    def _remove_abandoned_temporaries(self) -> None:
        if not self.directory.is_dir():
            return
        cutoff = time.time() - ABANDONED_AFTER_SECONDS
        for path in self.directory.glob(f".*{TEMPORARY_SUFFIX}"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    log.warning("removed abandoned partial spool file %s (never acknowledged)", path.name)
            except FileNotFoundError:
                continue
