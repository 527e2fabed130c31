"""Conversations: which Message-IDs tie a message to others, kept on each message as
`thread_refs` (its own Message-ID, In-Reply-To and References, lower-cased) so one indexed
`$in` finds the messages of a conversation, received or sent.

Pure functions plus the backfill of messages stored before the field existed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .backfill import fill_missing


FIELD = "thread_refs"
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_PREFIXES = re.compile(r"^\s*((re|aw|sv|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.I)


def unfolded(value: Any) -> str:
    return " ".join(str(value or "").split())


def message_ids(value: Any) -> list[str]:
    """The <ids> in a header value (folded or not, one value or several), in order."""
    values = value if isinstance(value, list) else [value]
    return [found for item in values if isinstance(item, str) for found in _MESSAGE_ID.findall(unfolded(item))]


def own_id(message_id: Any) -> str | None:
    found = message_ids(message_id)
    if found:
        return found[0]
    text = unfolded(message_id[0] if isinstance(message_id, list) and message_id else message_id)
    return f"<{text.strip('<>')}>" if text.strip("<>") and " " not in text else None


def _header(headers: Any, name: str) -> list[Any]:
    """One header's values (case-insensitive), whatever shape the payload gave them."""
    if not isinstance(headers, dict):
        return []
    found: list[Any] = []
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            found.extend(value if isinstance(value, list) else [value])
    return found


def refs_of(message_id: Any, headers: Any) -> list[str]:
    """A message's thread_refs: its own id, then In-Reply-To and References; each once."""
    ids = [own_id(message_id)] + message_ids(_header(headers, "in-reply-to")) + \
        message_ids(_header(headers, "references"))
    return list(dict.fromkeys(mid.lower() for mid in ids if mid))


def base_subject(subject: Any) -> str:
    """The subject without Re:/Fwd: prefixes, lower-cased: the fallback where headers are missing."""
    return _PREFIXES.sub("", subject if isinstance(subject, str) else "").strip().lower()


def backfill(emails, progress: Callable[[int], None] | None = None) -> int:
    """Give every message without thread_refs its refs; returns how many."""
    return fill_missing(emails, FIELD, {"message-id": 1, "headers": 1},
                        lambda document: refs_of(document.get("message-id"), document.get("headers")), progress)
