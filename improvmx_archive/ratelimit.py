"""Rate limits shared by every worker and host, through flask-limiter's storage backends.

The moving-window strategy counts the last N seconds exactly (no burst at a window edge).
Production keeps the windows in MongoDB next to the mail (or wherever
RATELIMIT_STORAGE_URI points, e.g. Redis); tests use memory://. While the storage is
unreachable, limits fall back to per-process memory rather than refusing mail.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app
from flask_limiter import Limiter, RateLimitExceeded

from .config import Settings
from .errors import error_response
from .security import client_ip, source_is_trusted_sender

log = logging.getLogger(__name__)

limiter = Limiter(key_func=client_ip, strategy="moving-window", headers_enabled=True,
                  swallow_errors=True, in_memory_fallback_enabled=True)


def configured_limit(name: str):
    """A limit read from the running app's settings at request time (each one configurable)."""
    return lambda: current_app.config["SETTINGS"].limits[name]


def _storage_options(settings: Settings) -> dict:
    if not settings.ratelimit_storage_uri.startswith(("mongodb://", "mongodb+srv://")):
        return {}
    return {
        "database_name": settings.mongo_db,
        "counter_collection_name": "ratelimit_counters",
        "window_collection_name": "ratelimit_windows",
        "serverSelectionTimeoutMS": settings.mongo_timeout_ms,
        "connect": False,
    }


def _too_many_requests(error: RateLimitExceeded):
    log.warning("rate limit exceeded ip=%s limit=%s", client_ip(), error.description)
    return error_response(429, f"Rate limit exceeded: {error.description}")


def register_rate_limits(app: Flask, settings: Settings) -> None:
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        RATELIMIT_STORAGE_OPTIONS=_storage_options(settings),
        RATELIMIT_APPLICATION=settings.limits["RATELIMIT_GLOBAL"],
        RATELIMIT_KEY_PREFIX="improvmx",
    )
    limiter.init_app(app)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
