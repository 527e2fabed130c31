"""The Audit page: the trail, filtered by person, action, message and time, newest first,
in cursor pages. Admins see every entry; a member sees only their own (the same rule as
GET /audit). Plain GET forms and links: it works with JavaScript off."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import current_app, g, render_template, request, url_for

from ..access.audit import DEFAULT_PAGE, parse_query
from .blueprint import bp, signed_in

ACTIONS = ("view", "list", "download", "export", "processed", "hold", "delete", "import", "purge",
           "send", "send_retry", "send_cancel")


@bp.get("/audit")
@signed_in
def audit():
    query = parse_query(request.args, g.principal, current_app.extensions["people"])
    cursor = request.args.get("cursor") or None
    entries, following = current_app.extensions["audit_trail"].page(query, cursor, DEFAULT_PAGE)

    def page_url(**changes: str | None) -> str:
        args = {k: v for k, v in {**query.shown, **changes}.items() if v}
        return url_for("ui.audit") + ("?" + urlencode(args) if args else "")

    people = current_app.extensions["people"].list() if g.principal.is_admin else []
    return render_template("ui/audit.html", entries=entries, shown=query.shown, actions=ACTIONS, people=people,
                           admin=g.principal.is_admin, newest=page_url() if cursor else None,
                           older=page_url(cursor=following) if following else None)
