"""The overview: mail per day, storage, senders, processed share and the outage spool."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json

from flask import current_app, g, render_template

from ..access.visibility import visibility_filter
from ..usage import current_usage
from .blueprint import bp, signed_in
from .stats import DAYS_CHARTED, biggest_senders, messages_per_day, processed_counts

CHART_WIDTH, CHART_HEIGHT = 1000, 180
CHART_TOP = 26  # room above the tallest bar for the scale label


def _chart(days: list[tuple[datetime, int]]) -> dict:
    """Bar geometry for the server-rendered SVG (no chart library, no script)."""
    peak = max((count for _, count in days), default=0) or 1
    slot = CHART_WIDTH / len(days)
    bars = []
    for number, (day, count) in enumerate(days):
        height = round(count / peak * (CHART_HEIGHT - CHART_TOP), 1)
        bars.append({"x": round(number * slot + 1, 1), "width": round(slot - 2, 1), "height": height,
                     "y": round(CHART_HEIGHT - height, 1), "day": day, "count": count,
                     "labelled": (len(days) - 1 - number) % 7 == 0})
    return {"bars": bars, "peak": peak, "width": CHART_WIDTH, "height": CHART_HEIGHT}


@bp.get("/overview")
@signed_in
def overview():
    """Every figure counts only what the reader may see; storage and the spool are the
    whole service's, so only admins see them."""
    database = current_app.extensions["database"]
    emails = database.emails
    within = visibility_filter(g.principal)
    cache = current_app.extensions["ui_stats"]
    view = json.dumps(within, sort_keys=True)  # one cached figure per view, never shared across views
    since = datetime.now(timezone.utc) - timedelta(days=DAYS_CHARTED)
    days = cache.get(f"per_day:{view}", lambda: messages_per_day(emails, within))
    admin = g.principal.is_admin
    return render_template(
        "ui/overview.html",
        chart=_chart(days),
        total_month=sum(count for _, count in days),
        storage=current_usage(database) if admin else None,
        senders=cache.get(f"senders:{view}", lambda: biggest_senders(emails, since, within)),
        counts=processed_counts(emails, within),
        spool=current_app.extensions["spool"].status() if admin else None,
    )
