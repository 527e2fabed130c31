"""Mail in standard formats: one message as .eml, the archive as mbox, raw mail imported."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from flask import Blueprint, Response, current_app, jsonify, request

from ..access.authn import require_access, require_admin
from ..access.scoped import visible_archive
from ..db import DatabaseUnavailable
from ..errors import ApiError
from ..ratelimit import configured_limit, limiter
from ..mailio import NotAMessage, Unrebuildable, import_raw
from ..listing import parse_filters
from ..times import api_time
from .emails import content_disposition

log = logging.getLogger(__name__)

bp = Blueprint("transfer", __name__)

RAW_MESSAGE_TYPES = ("message/rfc822",)
UNREBUILDABLE_MESSAGE = ("This message is stored but {reason} as MIME; read it with GET /emails/<id> "
                         "and its attachments, and report the problem (the server log names the message)")


@bp.get("/emails/<email_id>/raw")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DOWNLOAD"))
def raw_message(email_id: str):
    return eml_response(email_id)


def eml_response(email_id: str) -> Response:
    """The rebuilt message as a streamed .eml download (the API's /raw and the UI's button)."""
    try:
        chunks = visible_archive().rebuild(email_id)
    except Unrebuildable as error:
        raise ApiError(500, UNREBUILDABLE_MESSAGE.format(reason=error.reason)) from None
    if chunks is None:
        raise ApiError(404, "Email not found")
    return _streamed_download(chunks, "message/rfc822", f"{email_id}.eml")


def _streamed_download(chunks, content_type: str, filename: str) -> Response:
    response = Response(chunks, content_type=content_type, direct_passthrough=True)
    response.headers["Content-Disposition"] = content_disposition("attachment", filename)
    return response


@bp.get("/export.mbox")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DOWNLOAD"))
def export_mbox():
    chunks = visible_archive().mbox(parse_filters(request.args))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return _streamed_download(chunks, "application/mbox", f"archive-{stamp}.mbox")


@bp.post("/import")
@require_access("write")
@require_admin
@limiter.limit(configured_limit("RATELIMIT_IMPORT"))
def import_message():
    if request.mimetype not in RAW_MESSAGE_TYPES:
        raise ApiError(415, "Send the raw message with Content-Type: message/rfc822")
    raw = request.get_data(cache=False)
    try:
        result, parsed = import_raw(current_app.extensions["archive"], raw)
    except NotAMessage as error:
        raise ApiError(400, f"Body is not an importable message: {error}") from None
    except DatabaseUnavailable:
        log.warning("import refused: database unavailable")
        raise ApiError(503, "Storage temporarily unavailable; retry later", {"Retry-After": "30"}) from None
    log.info("imported email_id=%s duplicate=%s", result.email_id, result.duplicate)
    if result.deleted:
        return jsonify(success=True, email_id=result.email_id, duplicate=False, deleted=True,
                       message="Email was deleted; not imported again")
    response = jsonify(success=True, email_id=result.email_id, duplicate=result.duplicate,
                       received_at=api_time(parsed.received_at),
                       message="Email already stored" if result.duplicate else "Email imported")
    response.status_code = 200 if result.duplicate else 201
    return response
