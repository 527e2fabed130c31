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
from .blueprint import bp, principal_of, signed_in
from .inbox import PAGE_SIZE, list_args, list_page
from ..sanitize import clean_html
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


def _header_rows(headers: Any) -> list[tuple[str, str]]:
    if not isinstance(headers, dict):
        return []
    rows = []
    for name, value in sorted(headers.items(), key=lambda item: str(item[0]).lower()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "email" in item:
                item = f"{item.get('name') or ''} <{item['email']}>".strip()
            rows.append((str(name), item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)))
    return rows


def _addresses(value: Any) -> list[dict[str, Any]]:
    """Address objects from whatever shape the payload used (objects, strings, lists)."""
    return parse_address_list(value)[0]


def _remote_images(document: dict[str, Any]) -> int:
    """How many remote images the frame blocks, so the notice appears only when it matters."""
    html = document.get("html")
    return clean_html(html, lambda cid: None).remote_images if isinstance(html, str) else 0


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
    return render_template(
        "ui/message.html", email=shown, document=document, tab=tab, current=current,
        before=before, after=after, verdicts=verdicts(document),
        reply_to=_addresses(header_values(document.get("headers"), "Reply-To")),
        to=_addresses(document.get("to")), cc=_addresses(document.get("cc")),
        sender=_addresses(document.get("from")),
        text=linkify(document["text"]) if isinstance(document.get("text"), str) else None,
        header_rows=_header_rows(document.get("headers")),
        source=_source(email_id) if tab == "source" else None,
        remote=request.args.get("remote") == "1",
        remote_images=_remote_images(document) if tab == "html" else 0,
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
    cleaned = clean_html(document.get("html") or "", inline_url)
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
