"""The shared defences: brute-force lockout, client address, the webhook guard, response headers.
Who a bearer key stands for (and what it may see) is access/authn.py's business.

Lockout state lives in MongoDB (expired by TTL indexes) so every worker and every app host
behind a load balancer sees the same failures and blocks. The client IP is whatever
werkzeug's ProxyFix derived from the trusted proxies, never a header the client chose.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
from datetime import datetime, timedelta, timezone

from flask import Flask, current_app, request

from .errors import MESSAGES, ApiError
from .times import as_utc

log = logging.getLogger(__name__)

LOCKED_OUT_MESSAGE = "Too many failed attempts. Please try again later."


def client_ip() -> str:
    """The peer address as ProxyFix rewrote it from TRUSTED_PROXY_COUNT trusted proxies."""
    return request.remote_addr or "unknown"


class Lockout:
    """Blocks an IP after `max_failures` bad credentials within `window`, for `block`."""

    def __init__(self, database, max_failures: int = 5, window: timedelta = timedelta(minutes=5),
                 block: timedelta = timedelta(minutes=15)):
        self.failures = database.auth_failures
        self.blocks = database.auth_blocks
        self.max_failures = max_failures
        self.window = window
        self.block = block

    def blocked_until(self, ip: str) -> datetime | None:
        """When the block on ip ends, or None. Compared here, not left to TTL timing."""
        now = datetime.now(timezone.utc)
        found = self.blocks.find_one({"_id": ip, "until": {"$gt": now}})
        return as_utc(found["until"]) if found else None

    def record_failure(self, ip: str) -> None:
        """Count one failure; the one that reaches max_failures within window starts a block."""
        now = datetime.now(timezone.utc)
        self.failures.insert_one({"ip": ip, "at": now})
        recent = self.failures.count_documents({"ip": ip, "at": {"$gt": now - self.window}})
        if recent < self.max_failures:
            return
        until = now + self.block
        self.blocks.update_one({"_id": ip}, {"$max": {"until": until}}, upsert=True)
        log.warning("blocked ip=%s after %d failed attempts until=%s", ip, recent, until.isoformat())



def retry_after(until: datetime) -> dict[str, str]:
    seconds = max(1, math.ceil((until - datetime.now(timezone.utc)).total_seconds()))
    return {"Retry-After": str(seconds)}


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    presented_bytes = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_bytes, key.encode())
    return matched


def source_is_allowed() -> bool:
    networks = current_app.config["SETTINGS"].webhook_allowed_networks
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(client_ip())
    except ValueError:
        return False
    return any(address in network for network in networks)


def source_is_trusted_sender() -> bool:
    """True when an allowlist is configured and the caller is on it (ImprovMX itself)."""
    settings = current_app.config["SETTINGS"]
    return bool(settings.webhook_allowed_networks) and source_is_allowed()


def check_webhook_access(secret: str | None) -> None:
    """404 unless the path carries the configured secret; 403 for sources off the allowlist.

    The 404 carries the same body as any unknown URL's.
    """
    configured = current_app.config["SETTINGS"].webhook_secret
    if configured:
        if secret is None or not hmac.compare_digest(secret.encode(), configured.encode()):
            raise ApiError(404, MESSAGES[404])
    elif secret is not None:
        raise ApiError(404, MESSAGES[404])
    if not source_is_allowed():
        log.warning("webhook refused from ip=%s (not in WEBHOOK_ALLOWED_IPS)", client_ip())
        raise ApiError(403, "Source address not allowed")


CSP_API = "default-src 'none'; frame-ancestors 'none'; sandbox"
CSP_DOCS = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
# The web UI's own pages: script and style only from our origin, message HTML only in frames.
CSP_UI = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def csp_message_frame(part_prefix: str, remote: bool) -> str:
    """A sender's HTML: no script, no forms, no plugins; images and fonts only from this
    message's own parts (part_prefix, an absolute URL prefix) or data:, plus any http(s)
    source when the reader asked for remote content. Links may open a new tab."""
    sources = f"{part_prefix} data:" + (" http: https:" if remote else "")
    return ("sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
            f"style-src 'unsafe-inline'; img-src {sources}; font-src {sources}; "
            "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    html = response.mimetype == "text/html" and "Content-Disposition" not in headers
    headers.setdefault("Content-Security-Policy", CSP_DOCS if html else CSP_API)
    headers.setdefault("Cache-Control", "no-store")
    headers.pop("Server", None)
    return response


def register_security(app: Flask) -> None:
    app.after_request(_security_headers)
