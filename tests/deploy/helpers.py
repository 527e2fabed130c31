"""Helpers for the deployment tests: tool checks, and HTTP requests from a chosen loopback
source address, so "the client's IP" differs from the proxy's (127.0.0.1) in every log."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from dataclasses import dataclass

import pytest


def require_tools(*names: str) -> None:
    """Skip when a Debian tool is missing locally (CI installs caddy, shellcheck, systemd)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install caddy shellcheck systemd)")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None, source: str = "127.0.0.1", timeout: float = 60) -> Response:
    """One HTTP/1.1 request like curl's, from `source` (any 127.x.y.z works on Linux loopback);
    bodies arrive exactly as sent (no automatic decompression)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy (log lines are written just after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
