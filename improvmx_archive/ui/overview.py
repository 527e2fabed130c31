"""The overview: mail per day, storage, senders, processed share and the outage spool."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json

from flask import current_app, g, render_template

from ..access.visibility import visibility_filter
from ..usage import current_usage
from ..changes import content_mark
from .blueprint import bp, signed_in
from .stats import DAYS_CHARTED, biggest_senders, messages_per_day, processed_counts

# Two drawings of the same chart, each shown at the screen width it reads well at: labels
# stay about 12 px high whether the SVG is 350 or 1300 px wide.
WIDE_CHART = {"width": 1000, "height": 180, "label_every": 7}
NARROW_CHART = {"width": 330, "height": 150, "label_every": 7}
CHART_TOP = 26  # room above the tallest bar for the scale label


def _chart(days: list[tuple[datetime, int]], width: int, height: int, label_every: int) -> dict:
    """Bar geometry for the server-rendered SVG (no chart library, no script)."""
    peak = max((count for _, count in days), default=0) or 1
    slot = width / len(days)
    gap = 2 if slot > 8 else 1
    bars = []
    for number, (day, count) in enumerate(days):
        bar_height = round(count / peak * (height - CHART_TOP), 1)
        bars.append({"x": round(number * slot + gap / 2, 1), "width": round(slot - gap, 1), "height": bar_height,
                     "y": round(height - bar_height, 1), "day": day, "count": count,
                     "labelled": (len(days) - 1 - number) % label_every == 0})
    return {"bars": bars, "peak": peak, "width": width, "height": height}


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
    mark = content_mark(database)  # figures computed before the latest change are recomputed
    days = cache.get(f"per_day:{view}", lambda: messages_per_day(emails, within), mark)
    admin = g.principal.is_admin
    return render_template(
        "ui/overview.html",
        charts=[("wide", _chart(days, **WIDE_CHART)), ("narrow", _chart(days, **NARROW_CHART))],
        total_month=sum(count for _, count in days),
        storage=current_usage(database, follow_changes=True) if admin else None,
        senders=cache.get(f"senders:{view}", lambda: biggest_senders(emails, since, within), mark),
        counts=processed_counts(emails, within),
        spool=current_app.extensions["spool"].status() if admin else None,
    )
