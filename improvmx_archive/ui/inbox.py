"""The inbox: the archive's listing newest first, its filters and aliases, and bulk changes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import current_app, redirect, render_template, request, url_for

from ..archive import Archive
from ..routes.emails import build_query, subject_query
from .auth import safe_next
from .blueprint import bp, render_error, signed_in
from .stats import recipient_aliases

PAGE_SIZE = 25
MAX_PAGES = 400  # until the listing pages by cursor, skip stays shallow
# The request arguments that define "the current list", carried to each message and back.
LIST_ARGS = ("q", "to", "processed", "has_attachments")
BULK_LIMIT = 100


def list_args(args) -> dict[str, str]:
    return {name: args[name] for name in LIST_ARGS if args.get(name)}


def list_query() -> dict[str, Any]:
    """The API's filter for the current request's list arguments (400 on a bad value); the
    search box's q matches a sender address or else a subject substring."""
    query = build_query()
    term = request.args.get("q", "").strip()
    if term:
        if "@" in term and " " not in term:
            query["from_email"] = term.lower()
        else:
            query.update(subject_query(term.lower()[:500]))
    return query


def list_page(skip: int, limit: int) -> tuple[list[dict], int]:
    archive: Archive = current_app.extensions["archive"]
    return archive.search(list_query(), skip, limit)


def _page_number() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_PAGES else 1


def _aliases() -> list[tuple[str, int]]:
    settings = current_app.config["SETTINGS"]
    emails = current_app.extensions["archive"].emails
    return current_app.extensions["ui_stats"].get(
        "aliases", lambda: recipient_aliases(emails, settings.domains))


@bp.get("/")
@signed_in
def inbox():
    page = _page_number()
    skip = (page - 1) * PAGE_SIZE
    messages, total = list_page(skip, PAGE_SIZE)
    current = list_args(request.args)
    pages = max(1, min(MAX_PAGES, -(-total // PAGE_SIZE)))
    return render_template("ui/inbox.html", messages=messages, total=total, page=page, pages=pages,
                           skip=skip, current=current, aliases=_aliases(),
                           back=request.full_path.rstrip("?"))


def list_url(**overrides: str | None) -> str:
    """The inbox URL for the current list with some arguments changed (None drops one)."""
    args = {**list_args(request.args), **overrides}
    return url_for("ui.inbox") + ("?" + urlencode({k: v for k, v in args.items() if v}) if any(args.values()) else "")


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
