"""GET /metrics: Prometheus text format for the whole host, behind a bearer token."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from ..metrics import render
from ..ratelimit import configured_limit, exempt_from_global_limits, limiter
from ..access.authn import require_metrics_access

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require_metrics_access
@exempt_from_global_limits
@limiter.limit(configured_limit("RATELIMIT_METRICS"))
def metrics():
    current_app.extensions["archive_gauges"].refresh_if_due()
    return Response(render(current_app.extensions["spool"]), content_type=CONTENT_TYPE_LATEST)
