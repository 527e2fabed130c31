"""Realistic ImprovMX payloads, produced the way ImprovMX does: MIME parsed by mailparse.

Used by `flask send-sample`, the tests and the benchmarks, so every one of them sends what
ImprovMX really sends rather than a hand-written imitation.
"""

from __future__ import annotations

import base64
import re
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import format_datetime, getaddresses, make_msgid
from datetime import datetime, timezone
from typing import Any

from mailparse import EmailDecode

# A 1x1 transparent PNG: a real image for the inline CID part.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


# Where mailparse puts each address header it reads: (section, key, one address or a list).
ADDRESS_FIELDS = {
    "from": (None, "from", True), "sender": (None, "sender", True), "return-path": (None, "return-path", True),
    "to": (None, "to", False), "cc": (None, "cc", False), "bcc": (None, "bcc", False),
    "reply-to": ("headers", "Reply-To", False), "delivered-to": ("headers", "Delivered-To", True),
}


def payload_from_mime(raw: bytes) -> dict:
    """The JSON ImprovMX would POST for this raw RFC 5322 message: mailparse's reading, with
    address headers in UTF-8 (RFC 6532) read as such (see read_utf8_addresses)."""
    message = message_from_bytes(raw)  # what EmailDecode.load does with bytes
    payload = dict(EmailDecode(message))
    read_utf8_addresses(message, payload)
    return payload


def read_utf8_addresses(message: Message, payload: dict[str, Any]) -> None:
    """Put the addresses of every top-level address header that is not ASCII into payload.

    mailparse cannot read an internationalised address (RFC 6531 `josé@exämple.com`) in any
    form: from bytes it drops From, To and Cc and turns Reply-To into one U+FFFD per byte;
    given text, it raises in formataddr. Such a header is UTF-8 (RFC 6532): decode it so
    (a byte that is not UTF-8 becomes one U+FFFD) and store it in mailparse's own shape."""
    raw_values: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        if name.lower() in ADDRESS_FIELDS and isinstance(value, str):
            raw_values.setdefault(name.lower(), []).append(value)
    for name, values in raw_values.items():
        if all(value.isascii() for value in values):
            continue  # mailparse's reading stands
        texts = [value.encode("ascii", "surrogateescape").decode("utf-8", "replace") for value in values]
        found = [{"name": _decoded_name(display), "email": address}
                 for display, address in getaddresses([re.sub(r"[\r\n\t]", "", text) for text in texts])
                 if "@" in address]
        if not found:
            continue
        section, key, single = ADDRESS_FIELDS[name]
        target = payload.setdefault(section, {}) if section else payload
        target[key] = found[0] if single else found


def _decoded_name(name: str) -> str | None:
    """A display name as mailparse gives it: RFC 2047 words decoded, spaces collapsed,
    outer quotes dropped; None when empty."""
    try:
        name = str(make_header(decode_header(name)))
    except (LookupError, UnicodeError, ValueError):
        pass
    name = re.sub(r" +", " ", name).strip().strip('"').strip("'")
    return name or None


def sample_mime(recipient: str = "inbox@example.com", sender: str = "Alice Example <alice@example.org>",
                subject: str = "Sample message from improvmx-webhook") -> bytes:
    """A multipart message with text, HTML, an inline CID image and a PDF attachment."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = make_msgid(domain="example.org")
    message["Delivered-To"] = recipient
    message.set_content("Hello,\n\nThis is a sample message sent by `flask send-sample`.\n")
    cid = make_msgid(domain="example.org")
    message.add_alternative(
        f'<p>Hello,</p><p>This is a <b>sample</b> message.</p><img src="cid:{cid[1:-1]}">', subtype="html"
    )
    message.get_payload()[1].add_related(PIXEL_PNG, "image", "png", cid=cid, filename="pixel.png",
                                          disposition="inline")
    message.add_attachment(b"%PDF-1.4\n% sample\n%%EOF\n", maintype="application", subtype="pdf",
                           filename="sample.pdf")
    return message.as_bytes()
