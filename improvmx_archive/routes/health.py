"""Health: `/` for the owner (bearer, with details), `/healthz` and `/readyz` for systemd and
load balancers (no bearer, no details, no rate limit)."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify
from pymongo.errors import PyMongoError

from ..access.authn import require_access, require_admin
from ..db import ping
from ..indexer import backlog
from ..ratelimit import configured_limit, limiter
from ..retention import status as retention_status
from ..times import api_time

bp = Blueprint("health", __name__)


def _now() -> str:
    return api_time(datetime.now(timezone.utc))


@bp.get("/")
@require_access("read")
@require_admin
@limiter.limit(configured_limit("RATELIMIT_HEALTH"))
def health():
    healthy = ping(current_app.extensions["mongo_client"])
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "ImprovMX Webhook",
        "timestamp": _now(),
        "database": "reachable" if healthy else "unreachable",
        "spool": current_app.extensions["spool"].status(),
        "search_index": _search_backlog() if healthy else None,
        "retention": retention_status(current_app.extensions["database"], current_app.config["SETTINGS"])
        if healthy else None,
    }
    return jsonify(body), 200 if healthy else 503


def _search_backlog() -> dict | None:
    """Messages not yet searchable and the oldest one's wait; None if MongoDB cannot say."""
    try:
        return backlog(current_app.extensions["database"]).as_dict()
    except PyMongoError:
        return None


@bp.get("/healthz")
@limiter.exempt
def liveness():
    return jsonify(status="ok")


@bp.get("/readyz")
@limiter.exempt
def readiness():
    if ping(current_app.extensions["mongo_client"]):
        return jsonify(status="ready")
    return jsonify(status="unavailable"), 503
