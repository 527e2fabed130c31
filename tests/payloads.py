"""Test payloads made the way ImprovMX makes them: real .eml files parsed by mailparse."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage
from pathlib import Path

from improvmx_archive.sample import payload_from_mime

FIXTURES = Path(__file__).parent / "fixtures"


def eml_payload(name: str) -> dict:
    """The ImprovMX payload for tests/fixtures/<name>.eml."""
    return payload_from_mime((FIXTURES / f"{name}.eml").read_bytes())


def message_with_attachment(data: bytes, filename: str = "big.bin", subject: str = "Large attachment",
                            recipient: str = "big@archive.test") -> dict:
    """A payload carrying `data` as one base64 attachment, built from real MIME."""
    message = EmailMessage()
    message["From"] = "Sender <sender@example.org>"
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = "Sat, 14 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<{base64.b32encode(os.urandom(10)).decode()}@example.org>"
    message.set_content("See attachment.")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return payload_from_mime(message.as_bytes())


def addressed_payload(to: str, subject: str) -> dict:
    """A small payload to one alias with one text attachment, in ImprovMX's JSON shape."""
    return {"from": {"email": "customer@example.org", "name": "Customer"}, "to": [{"email": to, "name": ""}],
            "subject": subject, "text": f"body of {subject}", "html": None, "headers": {},
            "attachments": [{"name": "a.txt", "type": "text/plain", "content": "aGVsbG8=", "encoding": "base64"}],
            "inlines": []}
