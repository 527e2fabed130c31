"""Realistic ImprovMX payloads, produced the way ImprovMX does: MIME parsed by mailparse.

Used by `flask send-sample`, the tests and the benchmarks, so every one of them sends what
ImprovMX really sends rather than a hand-written imitation.
"""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone

from mailparse import EmailDecode

# A 1x1 transparent PNG: a real image for the inline CID part.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def payload_from_mime(raw: bytes) -> dict:
    """The JSON ImprovMX would POST for this raw RFC 5322 message."""
    return dict(EmailDecode.load(raw))


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
