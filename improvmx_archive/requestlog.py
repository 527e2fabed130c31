"""One log line per request, tied to a request id the client also sees (X-Request-ID).

The line carries method, path, status, duration and client IP; never headers or bodies, so
neither API keys nor mail end up in logs. The webhook secret and the UI's inline-image
grants in a path are masked.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, g, request

from .config import Settings
from .security import client_ip

log = logging.getLogger("improvmx_archive.request")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_WEBHOOK_SECRET_PATH = re.compile(r"^(/webhook/)[^/]+")
# The web UI's inline-image grant: it authorises fetching a message's images while its session lives.
_INLINE_GRANT_PATH = re.compile(r"^(/ui/emails/[^/]+/inline/)[^/]+")


def mask_path(path: str) -> str:
    """Hide the webhook secret segment and UI image grants in anything logged."""
    return _INLINE_GRANT_PATH.sub(r"\1***", _WEBHOOK_SECRET_PATH.sub(r"\1***", path))


def _start() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _finish(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    duration_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    log.info(
        "request id=%s method=%s path=%s status=%d duration_ms=%.1f ip=%s",
        g.get("request_id", "-"), request.method, mask_path(request.path), response.status_code,
        duration_ms, client_ip(),
    )
    return response


def configure_logging(settings: Settings) -> None:
    """Send the package's logs to stderr (gunicorn's error log, journald under systemd)."""
    package = logging.getLogger("improvmx_archive")
    package.setLevel(settings.log_level)
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)


def register_request_log(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
