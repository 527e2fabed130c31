"""SPF, DKIM and DMARC verdicts for the message page, read from what the message carries.

Any hop can add an Authentication-Results header, the sender included, so ImprovMX's own
word wins: a `verdict` field in the payload, then Authentication-Results headers whose
authserv-id is ImprovMX's, then Received-SPF (SPF only), then any other
Authentication-Results. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..payload import header_values

METHODS = ("spf", "dkim", "dmarc")
PASS, FAIL, NONE = "pass", "fail", "none"
# RFC 8601 result words, folded into the three states a badge shows.
_STATES = {
    "pass": PASS,
    "fail": FAIL, "softfail": FAIL, "hardfail": FAIL, "permerror": FAIL, "policy": FAIL,
    "none": NONE, "neutral": NONE, "temperror": NONE,
}
_RESULT = re.compile(r"(?<![\w.-])(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.I)
_TRUSTED_AUTHSERV = "improvmx"


@dataclass(frozen=True)
class Verdict:
    method: str
    state: str  # pass, fail or none
    result: str  # the word as written (e.g. softfail), or "none" when nothing said
    source: str  # the raw header or field it came from, shown on hover


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(f"{k}={_text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def _results(text: str) -> dict[str, str]:
    """First result per method in an Authentication-Results-style text."""
    found: dict[str, str] = {}
    for method, result in _RESULT.findall(text):
        found.setdefault(method.lower(), result.lower())
    return found


def _verdict_field(document: dict[str, Any]) -> list[tuple[dict[str, str], str]]:
    extra = document.get("extra") if isinstance(document.get("extra"), dict) else {}
    value = document.get("verdict", extra.get("verdict"))
    if value is None:
        return []
    if isinstance(value, dict):
        results = {}
        for method in METHODS:
            entry = value.get(method) if method in value else value.get(method.upper())
            if isinstance(entry, dict):
                entry = entry.get("result") or entry.get("status")
            if isinstance(entry, str) and entry.strip():
                results[method] = entry.strip().split()[0].lower()
        return [(results, _text(value))]
    return [(_results(_text(value)), _text(value))]


def _sources(document: dict[str, Any]) -> list[tuple[dict[str, str], str]]:
    """(results, raw text) in order of trust."""
    headers = document.get("headers")
    results = _verdict_field(document)
    auth_results = [_text(v) for v in header_values(headers, "Authentication-Results")]
    trusted = [text for text in auth_results if _TRUSTED_AUTHSERV in text.split(";", 1)[0].lower()]
    results += [(_results(text), text) for text in trusted]
    for value in header_values(headers, "Received-SPF"):
        text = _text(value)
        word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
        if word:
            results.append(({"spf": word}, f"Received-SPF: {text}"))
    results += [(_results(text), text) for text in auth_results if text not in trusted]
    return results


def verdicts(document: dict[str, Any]) -> list[Verdict]:
    """One verdict per method, in METHODS order; `none` when the message says nothing."""
    sources = _sources(document)
    shown = []
    for method in METHODS:
        found = next(((found[method], raw) for found, raw in sources if method in found), None)
        if found is None:
            shown.append(Verdict(method, NONE, "none", "No header or field reports this check"))
        else:
            result, raw = found
            shown.append(Verdict(method, _STATES.get(result, NONE), result, raw))
    return shown
