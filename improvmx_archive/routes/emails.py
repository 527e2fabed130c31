"""The archive API: list and search, one message, its parts, its processed and hold flags,
and deletion."""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from datetime import datetime
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from ..access.authn import require_access
from ..access.scoped import visible_archive
from ..deletion import MessageOnHold
from ..errors import ApiError
from ..listing import LIST_PARAMETERS, parse_filters, parse_page, reject_unknown_parameters
from ..parts import INLINE_DATA
from ..ratelimit import configured_limit, limiter
from ..times import api_time

bp = Blueprint("emails", __name__)

_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
# Shown inline only when a browser cannot run script from it; everything else downloads.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"}
INTERNAL_FIELDS = {"idempotency_key", "blob_ids", "subject_lower", "subject_trigrams", "to_emails", "recipients",
                   "bodies", "overflow", "tokens", "search", "search_pending", "search_version", "search_error",
                   "notify_pending", "audience", "delivered_to",
                   "imap_uid", "imap_size", "imap_skeleton"}  # the IMAP view's caches (imap/numbering.py)


def _iso(value: Any) -> Any:
    return api_time(value) if isinstance(value, datetime) else value


def _part_view(email_id: str, record: dict[str, Any], position: int) -> dict[str, Any]:
    view = {k: v for k, v in record.items() if k not in ("blob_id", "index", INLINE_DATA)}
    view["position"] = position
    view["url"] = url_for("emails.download_by_position", email_id=email_id, position=position)
    return view


def present(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it: ids and dates as strings, parts with URLs.

    The id is sent as `id` (preferred) and, with the same value, as `_id`, the name the
    original guide's answers used, so scripts written against it keep working."""
    email_id = str(document["_id"])
    shown = {"id": email_id, "_id": email_id}
    for key, value in document.items():
        if key == "_id" or key in INTERNAL_FIELDS or key in ("attachments", "inlines"):
            continue
        shown[key] = _iso(value)
    attachments = document.get("attachments") or []
    inlines = document.get("inlines") or []
    shown["attachments"] = [_part_view(email_id, r, i) for i, r in enumerate(attachments)]
    shown["inlines"] = [_part_view(email_id, r, len(attachments) + i) for i, r in enumerate(inlines)]
    return shown


@bp.get("/emails")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_LIST"))
def list_emails():
    reject_unknown_parameters(request.args, LIST_PARAMETERS)
    filters = parse_filters(request.args)
    wanted = parse_page(request.args)
    page = visible_archive().list_page(filters, wanted.cursor, wanted.limit, wanted.count, wanted.skip)
    return jsonify(success=True, count=len(page.emails), total=page.total, next=page.next,
                   emails=[present(doc) for doc in page.emails])


def _found(document):
    if document is None:
        raise ApiError(404, "Email not found")
    return document


@bp.get("/emails/<email_id>")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def get_email(email_id: str):
    document = _found(visible_archive().find(email_id))
    return jsonify(success=True, email=present(document))


@bp.patch("/emails/<email_id>")
@require_access("write")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def update_email(email_id: str):
    body = request.get_json(silent=True)
    if (not isinstance(body, dict) or not body or not set(body) <= {"processed", "hold"}
            or not all(isinstance(value, bool) for value in body.values())):
        raise ApiError(400, 'Body must be a JSON object with "processed" and/or "hold", each true or false, '
                            'e.g. {"processed": true}')
    archive = visible_archive()
    if "processed" in body:
        document = _found(archive.set_processed(email_id, body["processed"]))
    if "hold" in body:
        document = _found(archive.set_hold(email_id, body["hold"]))
    return jsonify(success=True, id=email_id, processed=document["processed"],
                   processed_at=_iso(document.get("processed_at")), hold=bool(document.get("hold")))


@bp.delete("/emails/<email_id>")
@require_access("write")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def delete_email(email_id: str):
    try:
        deleted = visible_archive().delete(email_id)
    except MessageOnHold:
        raise ApiError(409, 'Email is on hold; release it first with PATCH {"hold": false}') from None
    _found(deleted or None)
    return jsonify(success=True, id=email_id, deleted=True)


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name with no path, control characters or leading dots; never empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    return name[:200] or fallback


# Names for parts that came without one, from their type: what a bounce or report carries.
TYPE_NAMES = {
    "message/delivery-status": "delivery-status.txt",
    "message/global-delivery-status": "delivery-status.txt",
    "message/disposition-notification": "disposition-notification.txt",
    "message/global-disposition-notification": "disposition-notification.txt",
    "message/feedback-report": "feedback-report.txt",
    "message/rfc822": "original-message.eml",
    "message/global": "original-message.eml",
    "text/rfc822-headers": "original-headers.txt",
    "message/global-headers": "original-headers.txt",
    "message/external-body": "external-body.txt",
    "text/plain": "text.txt",
    "text/html": "message.html",
    "text/calendar": "invitation.ics",
}
_STEMS = {"image": "image", "audio": "audio", "video": "video", "text": "text", "font": "font", "model": "model"}


def part_name(record: dict[str, Any]) -> str:
    """The part's own file name, or one made from its type (delivery-status.txt,
    original-message.eml, image.png ...) for a part that came without one."""
    name = record.get("name")
    if isinstance(name, str) and name.strip():
        return name
    content_type = str(record.get("type") or "").strip().lower()
    if content_type in TYPE_NAMES:
        return TYPE_NAMES[content_type]
    extension = mimetypes.guess_extension(content_type, strict=False) if _MIME_TYPE.match(content_type) else None
    return _STEMS.get(content_type.split("/")[0], "file") + (extension or ".bin")


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name in filename*."""
    ascii_name = filename.encode("ascii", "ignore").decode().replace('"', "_").replace("\\", "_").strip()
    ascii_name = ascii_name or "download"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def part_response(email_id: str, *, name: str | None = None, position: int | None = None,
                  only_types: frozenset[str] | None = None, audited: bool = True):
    """A part's bytes under the download rules: only INLINE_TYPES may display in the browser,
    anything else (HTML, SVG, unknown) downloads; text gets a charset. The API and the UI
    both serve parts through here. only_types: 404 for any other content type."""
    record, blob = visible_archive(audited).part(email_id, name=name, position=position)
    if record is None or (only_types is not None and str(record.get("type") or "").lower() not in only_types):
        raise ApiError(404, "Attachment not found")
    if blob is None:
        current_app.logger.error("blob missing for email_id=%s part=%s", email_id, record.get("sha256"))
        raise ApiError(404, "Attachment content is missing")
    content_type = str(record.get("type") or "").lower()
    if not _MIME_TYPE.match(content_type):
        content_type = "application/octet-stream"
    disposition = "inline" if content_type in INLINE_TYPES else "attachment"
    mimetype = content_type
    if content_type.startswith("text/") and record.get("stored_as") != "base64":
        mimetype += "; charset=utf-8"
    filename = safe_filename(record.get("name"), part_name({"type": record.get("type")}))
    response = Response(blob.chunks, content_type=mimetype, direct_passthrough=True)
    response.content_length = blob.length
    response.headers["Content-Disposition"] = content_disposition(disposition, filename)
    response.headers["X-Content-SHA256"] = record.get("sha256", "")
    return response


@bp.get("/emails/<email_id>/attachment/<path:name>")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DOWNLOAD"))
def download_by_name(email_id: str, name: str):
    return part_response(email_id, name=name)


@bp.get("/emails/<email_id>/attachments/<int:position>")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DOWNLOAD"))
def download_by_position(email_id: str, position: int):
    return part_response(email_id, position=position)

