"""GET /audit: the audit trail, newest first, cursor-paged. Admins read every entry;
members read only their own."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from ..access.audit import parse_limit, parse_query, present
from ..access.authn import require_access
from ..query import QueryError
from ..ratelimit import configured_limit, limiter

bp = Blueprint("audit", __name__)


@bp.get("/audit")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_LIST"))
def list_audit():
    unknown = sorted(set(request.args) - {"person", "action", "email_id", "since", "until", "limit", "cursor"})
    if unknown:
        raise QueryError(f"'{unknown[0]}' is not a filter of /audit (person, action, email_id, since, until, "
                         "limit, cursor)")
    query = parse_query(request.args, g.principal, current_app.extensions["people"])
    limit = parse_limit(request.args)
    entries, following = current_app.extensions["audit_trail"].page(query, request.args.get("cursor") or None, limit)
    return jsonify(success=True, count=len(entries), next=following, entries=[present(e) for e in entries])
