"""The inbox: the archive's listing newest first, its filters and aliases, and bulk changes."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import current_app, redirect, render_template, request, url_for

from ..archive import Archive
from ..listing import Page, parse_filters
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
    archive: Archive = current_app.extensions["archive"]
    return archive.list_page(parse_filters(request.args), cursor or None, limit, count=count)


def _aliases() -> list[tuple[str, int]]:
    settings = current_app.config["SETTINGS"]
    emails = current_app.extensions["archive"].emails
    return current_app.extensions["ui_stats"].get(
        "aliases", lambda: recipient_aliases(emails, settings.domains))


@bp.get("/")
@signed_in
def inbox():
    cursor = request.args.get("cursor") or None
    page = list_page(cursor, count=True)
    return render_template("ui/inbox.html", page=page, cursor=cursor or "", previous=request.args.get("pc"),
                           current=list_args(request.args), aliases=_aliases(),
                           back=request.full_path.rstrip("?"))


def list_url(**overrides: str | None) -> str:
    """The inbox URL for the current list with some arguments changed (None drops one)."""
    args = {**list_args(request.args), **overrides}
    args = {k: v for k, v in args.items() if v is not None and (v != "" or k == "pc")}
    return url_for("ui.inbox") + ("?" + urlencode(args) if args else "")


@bp.post("/emails/bulk")
@signed_in
def bulk():
    archive: Archive = current_app.extensions["archive"]
    ids = request.form.getlist("ids")[:BULK_LIMIT]
    action = request.form.get("action")
    if action not in {"processed", "unprocessed"}:
        return render_error(400, "Choose what to do with the selected messages.")
    if not ids:
        return render_error(400, "Select at least one message first.")
    for email_id in ids:
        archive.set_processed(email_id, action == "processed")
    return redirect(safe_next(request.form.get("back")), 303)
