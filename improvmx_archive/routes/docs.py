"""GET /docs (a page a person reads) and GET /openapi.json, both from the same spec."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request

from ..ratelimit import configured_limit, limiter

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
@limiter.limit(configured_limit("RATELIMIT_DOCS"))
def openapi():
    from ..openapi import build_spec  # the spec's code is loaded by the first reader, not by every worker

    return jsonify(build_spec())


@bp.get("/docs")
@limiter.limit(configured_limit("RATELIMIT_DOCS"))
def docs():
    from ..openapi import build_spec

    spec = build_spec()
    base_url = request.host_url.rstrip("/")
    return render_template("docs.html", spec=spec, base_url=base_url)
