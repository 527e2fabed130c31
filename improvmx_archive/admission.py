"""Large request bodies are parsed a few at a time per host, so memory stays bounded in a burst.

A 50 MB delivery costs a worker about 1.4 times its size while it is read, parsed and
stored; twenty at once would need more memory than a small VPS has. Bodies above
LARGE_BODY_MB take one of LARGE_BODY_SLOTS slots first, a lock file shared by every worker
and thread of the host, and the others wait for one with their connection open, their bytes
still in the socket: nothing is refused (ImprovMX drops mail after three refusals). A wait
that outlasts LARGE_BODY_WAIT goes ahead anyway, trading memory for never timing out.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
SLOT_NAME = ".large-body-slot-{}.lock"


class LargeBodyGate:
    """At most `slots` large bodies in flight on this host (every process that shares
    `directory`), whatever the number of workers and threads."""

    def __init__(self, directory: Path, slots: int, threshold: int, wait_seconds: float):
        self.directory = Path(directory)
        self.slots = slots
        self.threshold = threshold
        self.wait_seconds = wait_seconds

    def is_large(self, length: int | None) -> bool:
        """A body without a declared length may be of any size: it counts as large."""
        return self.slots > 0 and (length is None or length > self.threshold)

    @contextlib.contextmanager
    def admit(self, length: int | None) -> Iterator[None]:
        """Hold a slot for a large body while the block runs; small bodies pass at once."""
        if not self.is_large(length):
            yield
            return
        descriptor = self._acquire()
        try:
            yield
        finally:
            if descriptor is not None:
                os.close(descriptor)  # closing the descriptor releases its lock

    def _acquire(self) -> int | None:
        """A locked slot file's descriptor, waiting for one; None when it cannot be had (the
        directory is not writable, or the wait ran out): the request then goes ahead."""
        deadline = time.monotonic() + self.wait_seconds
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptors = [os.open(self.directory / SLOT_NAME.format(n), os.O_RDWR | os.O_CREAT, 0o600)
                           for n in range(self.slots)]
        except OSError as error:
            log.warning("large-body slots unavailable in %s (%s); not waiting", self.directory, error.strerror)
            return None
        try:
            while True:
                for descriptor in random.sample(descriptors, len(descriptors)):
                    try:
                        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    descriptors.remove(descriptor)
                    return descriptor
                if time.monotonic() >= deadline:
                    log.warning("waited %.0f s for a large-body slot; going ahead", self.wait_seconds)
                    return None
                time.sleep(POLL_SECONDS)
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
