"""The inbox: the archive's listing newest first, its filters and aliases, and bulk changes."""

from __future__ import annotations

from urllib.parse import urlencode

import json

from bson import ObjectId
from flask import current_app, flash, redirect, render_template, request, url_for

from ..access.scoped import visible_archive
from ..changes import content_mark
from ..deletion import MessageOnHold
from ..listing import Page, parse_filters
from ..query import QueryError
from .auth import safe_next
from .blueprint import bp, render_error, signed_in
from .stats import recipient_aliases

PAGE_SIZE = 25
# The request arguments that define "the current list", carried to each message and back.
LIST_ARGS = ("q", "to", "processed", "has_attachments")
BULK_LIMIT = 100


def list_args(args) -> dict[str, str]:
    return {name: args[name] for name in LIST_ARGS if args.get(name)}


def list_page(cursor: str | None, limit: int = PAGE_SIZE, count: bool = False) -> Page:
    """A page of the current list through the API's own listing (the same `q` language and
    filters as GET /emails, 400 on a bad value), from a cursor: page 500 costs what page 1 does."""
    return visible_archive().list_page(parse_filters(request.args), cursor or None, limit, count=count)


def _aliases() -> list[tuple[str, int]]:
    """The sidebar's aliases as far as the reader may see (cached per view, never across views)."""
    settings = current_app.config["SETTINGS"]
    archive = visible_archive()
    view = json.dumps(archive.visibility, sort_keys=True)
    return current_app.extensions["ui_stats"].get(
        f"aliases:{view}", lambda: recipient_aliases(archive.archive.emails, settings.domains, archive.visibility),
        mark=content_mark(archive.archive.database))


@bp.get("/")
@signed_in
def inbox():
    """The list; a search or filter the parser refuses shows the inbox anyway, with the
    reason next to the query as typed (400), so it can be corrected in place."""
    cursor = request.args.get("cursor") or None
    try:
        page, problem, status = list_page(cursor, count=True), None, 200
    except QueryError as error:
        page, problem, status = Page([], None, 0), error.message, 400
    return render_template("ui/inbox.html", page=page, cursor=cursor or "", previous=request.args.get("pc"),
                           current=list_args(request.args), aliases=_aliases(), problem=problem,
                           back=request.full_path.rstrip("?")), status


def list_url(**overrides: str | None) -> str:
    """The inbox URL for the current list with some arguments changed (None drops one)."""
    args = {**list_args(request.args), **overrides}
    args = {k: v for k, v in args.items() if v is not None and (v != "" or k == "pc")}
    return url_for("ui.inbox") + ("?" + urlencode(args) if args else "")


def _selected() -> list[str]:
    return [email_id for email_id in dict.fromkeys(request.form.getlist("ids")) if ObjectId.is_valid(email_id)][:BULK_LIMIT]


@bp.post("/emails/bulk")
@signed_in
def bulk():
    """Mark the selected messages, or ask to confirm deleting them (a page of its own, so
    deletion is confirmed without script)."""
    archive = visible_archive()
    ids, action = _selected(), request.form.get("action")
    if action not in {"processed", "unprocessed", "delete"}:
        return render_error(400, "Choose what to do with the selected messages.")
    if not ids:
        return render_error(400, "Select at least one message first.")
    if action == "delete":
        chosen = archive.find_summaries({"_id": {"$in": [ObjectId(i) for i in ids]}},
                                        {"subject": 1, "from": 1, "received_at": 1, "hold": 1})
        return render_template("ui/confirm_delete.html", messages=list(chosen),
                               back=safe_next(request.form.get("back")))
    for email_id in ids:
        archive.set_processed(email_id, action == "processed")
    return redirect(safe_next(request.form.get("back")), 303)


@bp.post("/emails/delete")
@signed_in
def delete():
    """Delete the confirmed messages through the API's deletion (tombstones, shared blobs
    kept); held messages stay and are reported."""
    if request.form.get("confirm") != "yes":
        return render_error(400, "Deletion was not confirmed, so nothing was deleted.")
    archive = visible_archive()
    deleted = held = 0
    for email_id in _selected():
        try:
            deleted += archive.delete(email_id)
        except MessageOnHold:
            held += 1
    notice = f"Deleted {deleted} message{'' if deleted == 1 else 's'}."
    if held:
        notice += f" {held} on hold {'was' if held == 1 else 'were'} kept: release the hold first."
    flash(notice)
    return redirect(safe_next(request.form.get("back")), 303)
