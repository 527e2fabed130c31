"""One message: its page, the sandboxed frame its HTML is shown in, and its parts.

The frame is a document of its own under a CSP that forbids script, forms and every fetch
except this message's inline parts (and remote images once the reader asks). A sandboxed
frame has an opaque origin, so the browser sends no SameSite cookie with the frame's image
requests: inline parts are served on a grant in the URL instead, an HMAC over the session
and message, honoured only while that session lives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from flask import current_app, g, make_response, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from ..errors import ApiError
from ..payload import header_values, parse_address_list
from ..query import QueryError
from ..access.scoped import visible_archive
from ..routes.emails import part_response, present
from ..routes.transfer import eml_response
from ..security import csp_message_frame
from .auth import safe_next
from .framesize import frame_classes
from .blueprint import bp, principal_of, signed_in
from .inbox import PAGE_SIZE, list_args, list_page
from .sanitize import clean_html
from .verdicts import verdicts

TABS = ("html", "text", "headers", "source")
SOURCE_SHOWN = 256 * 1024  # bytes of the rebuilt .eml the Source tab shows; the button downloads all
# What an <img> in the frame may load from the message's own parts.
FRAME_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]+$")
_URL = re.compile(r"\bhttps?://[^\s<>\"'()]+[^\s<>\"'().,;:!?]", re.I)


def _found(document):
    if document is None:
        raise ApiError(404, "This message does not exist (or was deleted).")
    return document


def _stored(email_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole stored message (404 page if there is none) and its API presentation."""
    document = _found(visible_archive().find(email_id))
    return document, present(document)


def inline_grant(session_id: str, email_id: str) -> str:
    signature = hmac.new(current_app.secret_key, f"inline:{session_id}:{email_id}".encode(),
                         hashlib.sha256).hexdigest()[:32]
    return f"{session_id}.{signature}"


def _grant_is_live(grant: str, email_id: str) -> bool:
    """Whether the grant was made for this message in a session that is still live; its
    principal then becomes the request's, so the part is read under the same rule."""
    session_id, _, _ = grant.partition(".")
    if not hmac.compare_digest(grant.encode(), inline_grant(session_id, email_id).encode()):
        return False
    session = current_app.extensions["ui_sessions"].by_id(session_id)
    principal = principal_of(session) if session else None
    if principal is None:
        return False
    g.principal = principal
    return True


def _origin() -> str:
    host = request.host if _HOST.match(request.host) else "localhost"
    return f"{request.scheme}://{host}"


def linkify(text: str) -> Markup:
    """Escaped text whose http(s) URLs are links opening in a new tab without a referrer."""
    pieces, last = [], 0
    for match in _URL.finditer(text):
        url = match.group(0)
        pieces += [escape(text[last:match.start()]),
                   Markup('<a href="{0}" target="_blank" rel="noopener noreferrer">{0}</a>').format(url)]
        last = match.end()
    pieces.append(escape(text[last:]))
    return Markup("").join(pieces)


# Header fields ImprovMX's parser (mailparse) lifts out of `headers` into fields of their own
# (Sender among the payload's unknown fields), with the names they had in the message.
LIFTED_HEADERS = {"return-path": "Return-Path", "date": "Date", "from": "From", "sender": "Sender",
                  "to": "To", "cc": "Cc", "bcc": "Bcc", "message-id": "Message-ID", "subject": "Subject"}


def _header_text(value: Any) -> str:
    if isinstance(value, dict) and "email" in value:
        return f"{value.get('name') or ''} <{value['email']}>".strip()
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _header_field_rows(name: str, value: Any) -> list[tuple[str, str]]:
    """One row per stored value: a repeated header (a list) keeps its order, a list of
    addresses is one header."""
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(item, dict) and "email" in item for item in items):
        return [(name, ", ".join(_header_text(item) for item in items))]
    return [(name, _header_text(item)) for item in items if item is not None]


def header_rows(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every header the message stores, in the order it is stored: the `headers` object
    and the fields the parser took out of it, where each sits in the document."""
    rows: list[tuple[str, str]] = []

    def walk(fields: Any) -> None:
        for key, value in (fields.items() if isinstance(fields, dict) else ()):
            if key == "headers" and fields is document:
                for name, stored in (value.items() if isinstance(value, dict) else ()):
                    rows.extend(_header_field_rows(str(name), stored))
            elif key == "extra" and fields is document:
                walk(value)
            elif key in LIFTED_HEADERS and value is not None:
                rows.extend(_header_field_rows(LIFTED_HEADERS[key], value))

    walk(document)
    return rows


def _addresses(value: Any) -> list[dict[str, Any]]:
    """Address objects from whatever shape the payload used (objects, strings, lists)."""
    return parse_address_list(value)[0]


def _html_view(document: dict[str, Any], remote: bool) -> tuple[int, str]:
    """How many remote images the frame blocks (so the notice appears only when it matters),
    and the frame's size classes, from the HTML cleaned as the frame will show it."""
    html = document.get("html")
    if not isinstance(html, str):
        return 0, ""
    cleaned = clean_html(html, lambda cid: f"cid:{cid}", remote=remote)  # any src: it only sizes images
    return cleaned.remote_images, frame_classes(cleaned.html)


def _source(email_id: str) -> tuple[str, bool]:
    """The start of the rebuilt .eml as text, and whether it was cut short."""
    taken, size = [], 0
    chunks = visible_archive().rebuild(email_id) or iter(())
    try:
        for chunk in chunks:
            taken.append(chunk)
            size += len(chunk)
            if size > SOURCE_SHOWN:
                break
    finally:
        getattr(chunks, "close", lambda: None)()
    data = b"".join(taken)
    return data[:SOURCE_SHOWN].decode("utf-8", "replace"), size > SOURCE_SHOWN


def message_url(email_id: str, **changes: Any) -> str:
    """A link to a message that keeps the list it was opened from (filters and position);
    changes override them (a neighbour's position, a tab, remote=1)."""
    kept = {name: request.args[name] for name in ("c", "o", "pc") if name in request.args}
    return url_for("ui.message", email_id=email_id, **{**list_args(request.args), **kept, **changes})


def _neighbours(email_id: str) -> tuple[dict | None, dict | None]:
    """The messages just newer and just older than this one in the list it was opened from,
    as link arguments. The list position is the inbox page's cursor (c), the offset on that
    page (o) and the cursor of the page before it (pc), so every step costs one page."""
    offset = request.args.get("o", "")
    if not offset.isdigit() or int(offset) >= PAGE_SIZE:
        return None, None
    offset, cursor, previous = int(offset), request.args.get("c") or None, request.args.get("pc")
    page = list_page(cursor)
    if offset >= len(page.emails) or str(page.emails[offset]["_id"]) != email_id:
        return None, None  # the list changed since: no neighbours rather than wrong ones

    def at(document, page_cursor, position, before=previous):
        return {"email_id": str(document["_id"]), "c": page_cursor, "o": position, "pc": before}

    newer = older = None
    if offset > 0:
        newer = at(page.emails[offset - 1], cursor, offset - 1)
    elif previous is not None:
        earlier = list_page(previous or None).emails
        newer = at(earlier[-1], previous or None, len(earlier) - 1, None) if earlier else None
    if offset + 1 < len(page.emails):
        older = at(page.emails[offset + 1], cursor, offset + 1)
    elif page.next:
        following = list_page(page.next, limit=1).emails
        older = at(following[0], page.next, 0, cursor or "") if following else None
    return newer, older


@bp.get("/emails/<email_id>")
@signed_in
def message(email_id: str):
    document, shown = _stored(email_id)
    tab = request.args.get("tab") or ("html" if document.get("html") else "text")
    if tab not in TABS:
        tab = "html"
    try:
        before, after = _neighbours(email_id)
    except QueryError:
        before = after = None  # a stale or altered list position: the message itself still shows
    current = list_args(request.args)
    remote = request.args.get("remote") == "1"
    remote_images, frame_size = _html_view(document, remote) if tab == "html" else (0, "")
    return render_template(
        "ui/message.html", email=shown, document=document, tab=tab, current=current,
        before=before, after=after, verdicts=verdicts(document),
        reply_to=_addresses(header_values(document.get("headers"), "Reply-To")),
        to=_addresses(document.get("to")), cc=_addresses(document.get("cc")),
        sender=_addresses(document.get("from")),
        text=linkify(document["text"]) if isinstance(document.get("text"), str) else None,
        header_rows=header_rows(document),
        source=_source(email_id) if tab == "source" else None,
        remote=remote, remote_images=remote_images, frame_classes=frame_size,
        back=request.full_path.rstrip("?"),
    )


@bp.get("/emails/<email_id>/frame")
@signed_in
def frame(email_id: str):
    document, shown = _stored(email_id)
    grant = inline_grant(g.ui_session.id, email_id)
    first_part = url_for("ui.inline_part", email_id=email_id, grant=grant, position=0)
    prefix = _origin() + first_part.rsplit("/", 1)[0] + "/"
    by_cid = {str(part.get("cid", "")).strip("<>"): part["position"] for part in shown["inlines"] if part.get("cid")}

    def inline_url(cid: str) -> str | None:
        position = by_cid.get(cid)
        return f"{prefix}{position}" if position is not None else None

    remote = request.args.get("remote") == "1"
    cleaned = clean_html(document.get("html") or "", inline_url, remote=remote)
    page = render_template("ui/frame.html", body=Markup(cleaned.html))
    response = make_response(page)
    response.headers["Content-Security-Policy"] = csp_message_frame(prefix, remote)
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/emails/<email_id>/inline/<grant>/<int:position>")
def inline_part(email_id: str, grant: str, position: int):
    """An inline image for the sandboxed frame (opaque origin, so no cookie and a
    cross-origin fetch): authorised by the grant, images only."""
    if len(grant) > 200 or not _grant_is_live(grant, email_id):
        raise ApiError(404, "Attachment not found")
    response = part_response(email_id, position=position, only_types=FRAME_IMAGE_TYPES)
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


@bp.get("/emails/<email_id>/eml")
@signed_in
def download_eml(email_id: str):
    return eml_response(email_id)


@bp.get("/emails/<email_id>/parts/<int:position>")
@signed_in
def download_part(email_id: str, position: int):
    return part_response(email_id, position=position)


@bp.post("/emails/<email_id>/hold")
@signed_in
def hold(email_id: str):
    _found(visible_archive().set_hold(email_id, request.form.get("hold") == "true"))
    return redirect(_back(email_id), 303)


def _back(email_id: str) -> str:
    return safe_next(request.form["back"]) if request.form.get("back") else url_for("ui.message", email_id=email_id)


@bp.post("/emails/<email_id>/processed")
@signed_in
def mark(email_id: str):
    processed = request.form.get("processed") == "true"
    _found(visible_archive().set_processed(email_id, processed))
    return redirect(_back(email_id), 303)
