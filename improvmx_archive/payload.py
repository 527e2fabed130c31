"""Turn an ImprovMX webhook payload into what the archive stores, without losing anything.

ImprovMX's parser (mailparse) emits addresses as {name, email} objects, header values as a
string, a list or such an object, and omits fields freely. Everything recognisable is
normalised for querying; everything else is kept exactly as received and flagged, because a
refused message is lost for good after ImprovMX's retries.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
from dataclasses import dataclass, field
from email.utils import getaddresses, parseaddr
from typing import Any, Callable

from .audience import FIELD as AUDIENCE, audience_of

# Fields ImprovMX documents; everything else in a payload is kept as an "extra" field.
KNOWN_FIELDS = (
    "headers", "to", "cc", "bcc", "from", "subject", "message-id", "date", "return-path",
    "timestamp", "text", "html", "inlines", "attachments",
)
PART_KINDS = ("attachments", "inlines")
SNIPPET_LENGTH = 200
# A request body nested deeper than this is refused (400): no mail parser produces one, and
# every recursive step after parsing (and MongoDB, at 100 levels) would trip on it.
MAX_JSON_DEPTH = 100
# A field nested deeper than this is kept as its JSON text and flagged, so the document
# stays well inside MongoDB's nesting limit whatever wraps the field.
MAX_FIELD_DEPTH = 32
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.S | re.I)
_SPACES = re.compile(r"\s+")
_UNCLOSED_BLOCK = re.compile(r"<(script|style)\b(?!.*</\1\s*>)", re.S | re.I)


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in value (a scalar is 0), without recursion; stops
    counting once past limit."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _flatten_deep(fields: dict[str, Any], flags: list[str], prefix: str = "") -> dict[str, Any]:
    """Fields nested past MAX_FIELD_DEPTH replaced by their JSON text, each flagged."""
    kept = {}
    for key, value in fields.items():
        if isinstance(value, (dict, list)) and nesting_depth(value, MAX_FIELD_DEPTH) > MAX_FIELD_DEPTH:
            value = json.dumps(value, default=str)
            flags.append(f"nested_too_deeply:{prefix}{key}")
        kept[key] = value
    return kept


def parse_address(value: Any) -> dict[str, str | None] | None:
    """{name, email} from an ImprovMX address object or an RFC 5322 string; None if neither."""
    if isinstance(value, dict):
        email = value.get("email")
        name = value.get("name")
        if isinstance(email, str) and "@" in email:
            return {"name": name if isinstance(name, str) else None, "email": email.strip()}
        return None
    if isinstance(value, str):
        name, email = parseaddr(value)
        if "@" in email:
            return {"name": name or None, "email": email}
    return None


def parse_address_list(value: Any) -> tuple[list[dict], bool]:
    """All addresses found in a list, a single object or a comma-separated string.

    The second value is False when some entry could not be understood.
    """
    if value is None:
        return [], True
    if isinstance(value, str):
        found = [{"name": n or None, "email": e} for n, e in getaddresses([value]) if "@" in e]
        return found, bool(found) or not value.strip()
    items = value if isinstance(value, list) else [value]
    found, understood = [], True
    for item in items:
        if isinstance(item, str):
            more, ok = parse_address_list(item)
            found.extend(more)
            understood = understood and ok
            continue
        address = parse_address(item)
        if address:
            found.append(address)
        else:
            understood = False
    return found, understood


def header_values(headers: Any, name: str) -> list[Any]:
    """Values of one header (case-insensitive) whatever shape ImprovMX gave them."""
    if not isinstance(headers, dict):
        return []
    values: list[Any] = []
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name.lower():
            values.extend(value if isinstance(value, list) else [value])
    return values


def envelope_recipients(envelope: Any) -> list[Any]:
    """Recipient entries from an `envelope` field, in the shapes MTAs commonly use."""
    if not isinstance(envelope, dict):
        return []
    found: list[Any] = []
    for key in ("recipient", "recipients", "to", "rcpt_to", "rcpt"):
        value = envelope.get(key)
        if value is not None:
            found.extend(value if isinstance(value, list) else [value])
    return found


# The addresses a message was delivered to (envelope recipients, Delivered-To): the archive's
# own aliases, as opposed to every correspondent in To and Cc.
DELIVERED_TO = "delivered_to"


def delivered_to_values(envelope: Any, headers: Any) -> list[Any]:
    return envelope_recipients(envelope) + header_values(headers, "Delivered-To")


def delivered_addresses(envelope: Any, headers: Any) -> list[str]:
    """The lower-cased addresses of delivered_to_values, each once."""
    found: list[dict] = []
    for value in delivered_to_values(envelope, headers):
        found.extend(parse_address_list(value)[0])
    return _lower_emails(found)


def make_snippet(text: Any, html: Any) -> str:
    """A short plain-text preview for listings, from text or else from stripped HTML.

    Only as much of the body as the preview needs is cleaned: a window that grows until it
    yields SNIPPET_LENGTH characters (regexes over whole bodies were a tenth of an ingest)."""
    if isinstance(text, str) and text.strip():
        source, limit, clean = text, SNIPPET_LENGTH * 20, str
    elif isinstance(html, str) and html.strip():
        source, limit, clean = html, SNIPPET_LENGTH * 50, _html_text
    else:
        return ""
    window = SNIPPET_LENGTH * 4
    while True:
        window = min(window, limit)
        snippet = _SPACES.sub(" ", clean(source[:window])).strip()
        if len(snippet) > SNIPPET_LENGTH or window >= min(limit, len(source)):
            return snippet[:SNIPPET_LENGTH]
        window *= 4


def _html_text(html: str) -> str:
    """Text of an HTML fragment cut at its last complete tag; empty while a script or style
    block is still open in it (its code is not text), so the window grows past it."""
    end = html.rfind(">") + 1
    fragment = html[:end] if end else html
    if _UNCLOSED_BLOCK.search(fragment):
        return ""
    return html_lib.unescape(_TAGS.sub(" ", fragment))


_KEY_ESCAPES = {"%": "%25", ".": "%2E", "\x00": "%00"}
_KEY_UNESCAPE = re.compile(r"%(25|2E|00|24)")


def rebuild(value: Any, key: Callable[[str], str] = str, leaf: Callable[[Any], Any] = lambda item: item) -> Any:
    """A copy of a JSON-like value with every dict key passed through `key` and every other
    value through `leaf`: the one walk behind key escaping, surrogate repair and the body
    parser's string restoration."""
    if isinstance(value, dict):
        return {key(name): rebuild(item, key, leaf) for name, item in value.items()}
    if isinstance(value, list):
        return [rebuild(item, key, leaf) for item in value]
    return leaf(value)


def _escape_key(name: Any) -> str:
    escaped = "".join(_KEY_ESCAPES.get(ch, ch) for ch in str(name))
    return "%24" + escaped[1:] if escaped.startswith("$") else escaped


def escape_keys(value: Any) -> Any:
    """Make every dict key storable in MongoDB ('.', '\\0' and a leading '$' are not).

    Percent-encoding keeps it reversible; unescape_keys gives the original names back.
    """
    return rebuild(value, key=_escape_key)


def unescape_keys(value: Any) -> Any:
    return rebuild(value, key=lambda name: _KEY_UNESCAPE.sub(lambda m: bytes.fromhex(m.group(1)).decode(), name))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _repair(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


def replace_lone_surrogates(value: Any) -> Any:
    """BSON strings must be valid UTF-8; a lone surrogate (a JSON escape like \\udc00 that
    malformed mail can produce) becomes U+FFFD rather than making the message unstorable."""
    if isinstance(value, str):
        return _repair(value)
    return rebuild(value, key=_repair, leaf=lambda item: _repair(item) if isinstance(item, str) else item)


@dataclass
class Part:
    """One attachment or inline as received; its bytes are decoded later, in a stream."""

    kind: str
    index: int
    raw: dict[str, Any]
    flags: list[str] = field(default_factory=list)

    @property
    def content(self) -> Any:
        return self.raw.get("content")

    @property
    def content_type(self) -> str:
        value = self.raw.get("type")
        return value.strip().lower() if isinstance(value, str) and value.strip() else "application/octet-stream"

    @property
    def name(self) -> str | None:
        value = self.raw.get("name")
        return value if isinstance(value, str) and value else None

    @property
    def declared_encoding(self) -> str | None:
        value = self.raw.get("encoding")
        return value.strip().lower() if isinstance(value, str) else None

    @property
    def expects_base64(self) -> bool:
        """mailparse sends base64 for base64 MIME parts and for every non-text/message type."""
        if self.declared_encoding == "base64":
            return True
        return self.content_type.split("/")[0] not in ("text", "message")


@dataclass
class Message:
    """A normalised payload: the document fields plus the parts still to be stored."""

    fields: dict[str, Any]
    extra: dict[str, Any]
    parts: list[Part]
    derived: dict[str, Any]
    flags: list[str]


def _lower_emails(addresses: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for address in addresses:
        seen.setdefault(address["email"].strip().lower(), None)
    return list(seen)


def normalise(payload: dict[str, Any]) -> Message:
    """Split a payload into stored fields, unknown extras, parts and query fields. Never raises."""
    flags: list[str] = []
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    payload = _flatten_deep({key: value for key, value in payload.items() if key not in PART_KINDS}, flags) | {
        kind: payload[kind] for kind in PART_KINDS if kind in payload}
    for key, value in payload.items():
        if key in KNOWN_FIELDS and key not in PART_KINDS:
            fields[key] = value
        elif key not in PART_KINDS:
            extra[key] = value

    parts: list[Part] = []
    for kind in PART_KINDS:
        received = payload.get(kind)
        if received is None:
            continue
        if not isinstance(received, list):
            flags.append(f"{kind}_not_a_list")
            extra.update(_flatten_deep({kind: received}, flags))
            continue
        for index, item in enumerate(received):
            if isinstance(item, dict):
                parts.append(Part(kind, index, _flatten_deep(item, flags, f"{kind}.{index}.")))
            else:
                parts.append(Part(kind, index, {"content": item}, ["part_not_an_object"]))

    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        flags.append("headers_not_an_object")

    sender = parse_address(payload.get("from"))
    if sender is None:
        found, _ = parse_address_list(payload.get("from"))
        sender = found[0] if found else None
    if sender is None and payload.get("from") is not None:
        flags.append("from_unparsed")

    recipients: list[dict] = []
    to_addresses: list[dict] = []
    for key in ("to", "cc", "bcc"):
        found, understood = parse_address_list(payload.get(key))
        if not understood:
            flags.append(f"{key}_unparsed")
        recipients.extend(found)
        if key == "to":
            to_addresses = found
    delivered: list[dict] = []
    for value in delivered_to_values(payload.get("envelope"), headers):
        found, _ = parse_address_list(value)
        delivered.extend(found)
    recipients.extend(delivered)

    subject = payload.get("subject")
    if subject is not None and not isinstance(subject, str):
        flags.append("subject_not_a_string")
    subject_text = subject if isinstance(subject, str) else ""
    text, html = payload.get("text"), payload.get("html")

    derived = {
        "from_email": sender["email"].lower() if sender else None,
        "to_emails": _lower_emails(to_addresses),
        "recipients": _lower_emails(recipients),
        DELIVERED_TO: _lower_emails(delivered),
        AUDIENCE: audience_of(_lower_emails(recipients)),
        "subject_lower": subject_text.lower(),
        "snippet": make_snippet(text, html),
    }
    return Message(fields=fields, extra=extra, parts=parts, derived=derived, flags=flags)


def recipient_domains(message: Message) -> set[str]:
    return {address.rsplit("@", 1)[-1] for address in message.derived["recipients"]}


def accepts_domains(message: Message, domains: tuple[str, ...]) -> bool:
    """True when no domain filter is set or some recipient is in (a subdomain of) one of them."""
    if not domains:
        return True
    for domain in recipient_domains(message):
        if any(domain == allowed or domain.endswith("." + allowed) for allowed in domains):
            return True
    return False


def idempotency_key(message: Message, part_digests: list[str]) -> str:
    """SHA-256 identifying a delivery: the payload minus `timestamp`, parts by their digest.

    ImprovMX re-sends the same JSON on a retry; `timestamp` is left out because mailparse
    fills it with the parse time when the Date header is unreadable.
    """
    identity = {key: value for key, value in {**message.fields, **message.extra}.items() if key != "timestamp"}
    for key in ("text", "html"):
        if isinstance(identity.get(key), str):
            identity[key] = hashlib.sha256(identity[key].encode("utf-8", "surrogatepass")).hexdigest()
    identity["parts"] = [
        [part.kind, part.index, {k: v for k, v in part.raw.items() if k != "content"}, digest]
        for part, digest in zip(message.parts, part_digests)
    ]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
