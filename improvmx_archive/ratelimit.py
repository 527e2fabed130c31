"""Rate limits shared by every worker and host, through flask-limiter's storage backends.

The moving-window strategy counts the last N seconds exactly (no burst at a window edge).
Production keeps the windows in MongoDB next to the mail (or wherever
RATELIMIT_STORAGE_URI points); tests use memory://. While the storage is unreachable,
limits fall back to per-process memory rather than refusing mail.

One module-level limiter serves every app built in the process (tests build many), so the
per-app values (the global limit, the on/off switch) are read from the app's settings at
request time rather than fixed by whichever app called init_app first.

Who is counted: a request that carries a valid credential for what it asks (a bearer key on
an API route, a session on a UI page) counts against its principal's `rate_key` (a person,
all their keys together, or the operator), under RATELIMIT_AUTHENTICATED and the route's own
limit; anything else (no credential, a wrong or revoked one) counts against the client
address under the strict RATELIMIT_GLOBAL. The limiter runs before the route's guard, so
each guard declares how to identify its caller early, without raising or counting a failure
(`identify_caller` on the view, or a blueprint's identifier); the answer is kept on `g`.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from pymongo.errors import PyMongoError

from .config import Settings
from .errors import error_response
from .security import client_ip

log = logging.getLogger(__name__)


def configured_limit(name: str):
    """A limit read from the running app's settings at request time (each one configurable)."""
    return lambda: current_app.config["SETTINGS"].limits[name]


def exempt_from_global_limits(view):
    """Decorator: the view answers only to its own @limiter.limit, not to RATELIMIT_GLOBAL.

    flask-limiter's own exempt() cannot express this: any exemption of a view also drops the
    limits declared on that view.
    """
    view.exempt_from_global_limits = True
    return view


def _global_limits_exempt() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "exempt_from_global_limits", False)


_BLUEPRINT_IDENTIFIERS: dict[str, Callable[[], Any]] = {}
_UNRESOLVED = object()


def identify_blueprint_callers(blueprint: str, identify: Callable[[], Any]) -> None:
    """Let every request to `blueprint` be counted per principal: identify() returns the
    caller's Principal when the request carries a valid credential, else None; it never raises."""
    _BLUEPRINT_IDENTIFIERS[blueprint] = identify


def identified_caller():
    """The request's principal if it carries a valid credential for this route, else None;
    resolved once per request, before the route's guard runs."""
    found = g.get("rate_caller", _UNRESOLVED)
    if found is _UNRESOLVED:
        view = current_app.view_functions.get(request.endpoint or "")
        identify = getattr(view, "identify_caller", None) or _BLUEPRINT_IDENTIFIERS.get(request.blueprint or "")
        found = identify() if identify else None
        g.rate_caller = found
    return found


def rate_identity() -> str:
    """What a request counts against: its principal's rate_key, or the client address."""
    caller = identified_caller()
    return caller.rate_key if caller is not None else client_ip()


def _authenticated() -> bool:
    return identified_caller() is not None


limiter = Limiter(key_func=rate_identity, strategy="moving-window", headers_enabled=False,
                  swallow_errors=True, in_memory_fallback_enabled=True,
                  application_limits=[
                      # Unauthenticated and failed requests: strict, per address.
                      ApplicationLimit(configured_limit("RATELIMIT_GLOBAL"), scope="global",
                                       exempt_when=lambda: _global_limits_exempt() or _authenticated()),
                      # A valid credential: per person (or operator), sized for scripts.
                      ApplicationLimit(configured_limit("RATELIMIT_AUTHENTICATED"), scope="authenticated",
                                       exempt_when=lambda: _global_limits_exempt() or not _authenticated()),
                  ])


@limiter.request_filter
def _disabled() -> bool:
    return not current_app.config["SETTINGS"].ratelimit_enabled


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
    log.warning("rate limit exceeded ip=%s counted=%s limit=%s", client_ip(), rate_identity(), error.description)
    return error_response(429, f"Rate limit exceeded: {error.description}")


def _rate_limit_headers(response):
    """X-RateLimit-* from the limit that applied, and Retry-After on the limiter's own 429 only.

    Written here rather than by flask-limiter, which would put Retry-After on every response
    and stretch the lockout's and the 503s' own Retry-After to its window's reset.
    """
    current = limiter.current_limit
    if current is None:
        return response
    try:
        reset_time, remaining = current.window
    except PyMongoError:
        log.warning("rate limit headers skipped: limit storage unavailable")
        return response
    response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    response.headers["X-RateLimit-Reset"] = str(math.ceil(reset_time))
    if current.breached:
        response.headers["Retry-After"] = str(max(1, math.ceil(reset_time - time.time())))
    return response


def _close_storage(storage) -> None:
    """Close the limits MongoDB client before interpreter shutdown: its __del__ would
    otherwise open or close one while Python tears down, printing a traceback on exit."""
    client = getattr(storage, "storage", None)
    if hasattr(client, "close"):
        client.close()


def register_rate_limits(app: Flask, settings: Settings) -> None:
    app.config.update(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        RATELIMIT_STORAGE_OPTIONS=_storage_options(settings),
        RATELIMIT_KEY_PREFIX="improvmx",
    )
    limiter.init_app(app)
    atexit.register(_close_storage, limiter.storage)
    app.after_request(_rate_limit_headers)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
