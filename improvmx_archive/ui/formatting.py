"""Template filters: dates relative and exact, sizes, addresses. Pure functions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..routes.emails import part_name
from ..times import as_utc

_UNITS = ("B", "KB", "MB", "GB", "TB")



def exact_utc(moment: Any) -> str:
    if not isinstance(moment, datetime):
        return ""
    return as_utc(moment).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative_time(moment: Any, now: datetime | None = None) -> str:
    """"just now", "5 min ago", "3 h ago", "yesterday", "4 days ago", then the date."""
    if not isinstance(moment, datetime):
        return ""
    moment = as_utc(moment)
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 2 * 86400:
        return "yesterday"
    if seconds < 7 * 86400:
        return f"{int(seconds // 86400)} days ago"
    return moment.astimezone(timezone.utc).strftime("%d %b %Y")


def human_size(size: Any) -> str:
    if not isinstance(size, (int, float)) or size < 0:
        return ""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def address(value: Any) -> str:
    """"Name <email>" for an address object, the plain string otherwise."""
    if isinstance(value, dict):
        name, email = value.get("name"), value.get("email") or ""
        return f"{name} <{email}>" if name else email
    return value if isinstance(value, str) else ""


def sender_name(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("name") or value.get("email") or "(no sender)"
    return value if isinstance(value, str) and value else "(no sender)"


def _texts(value: Any, depth: int = 0) -> list[str]:
    """The strings and numbers inside a value of any JSON shape, in order."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, bool) or value is None or depth > 8:
        return []
    if isinstance(value, (int, float)):
        return [str(value)]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [text for item in items for text in _texts(item, depth + 1)]


def subject_text(value: Any) -> str:
    """A subject as text whatever shape it was stored in (a list or an object from an odd
    payload shows its words, never a Python repr); "(no subject)" when it has none."""
    return " ".join(" ".join(_texts(value)).split()) or "(no subject)"


FILTERS = {"exact_utc": exact_utc, "relative_time": relative_time, "human_size": human_size,
           "address": address, "sender_name": sender_name, "subject_text": subject_text,
           "part_name": part_name}
