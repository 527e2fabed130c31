"""Waiting for something another process does, without a fixed sleep."""

from __future__ import annotations

import time


def wait_until(condition, what: str, timeout: float = 60.0, interval: float = 0.1):
    """Poll condition() until it gives a truthy value and return that value; fail the test,
    naming `what`, once `timeout` seconds have passed without one."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
