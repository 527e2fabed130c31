"""Building outgoing mail with the stdlib `email` package (EmailMessage, default policy):
replies, forwards and new messages, each refused before anything is queued when a header
would carry CR/LF/NUL, there are too many recipients, or it is too large.

Pure functions over already-fetched documents and bytes: the caller (service.py) reads the
original through the principal's ScopedArchive, so only mail they may see can be answered.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from datetime import datetime, timezone
from typing import Any

from ..payload import header_values, parse_address, parse_address_list
from ..threads import base_subject, message_ids, own_id, unfolded

MAX_RECIPIENTS = 50  # ImprovMX refuses more at RCPT
MAX_SUBJECT_LENGTH = 998
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class SendRefused(Exception):
    """A send refused before queuing: the HTTP status and a message for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Draft:
    """What a person asked to send, before it becomes MIME. `bcc` never reaches a header."""

    sender: str
    to: list[str]
    subject: str
    text: str
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    forwarded: bytes | None = None  # the rebuilt original, attached as message/rfc822
    forwarded_name: str = "message.eml"
    related: list[tuple[str, Attachment]] = field(default_factory=list)  # (cid, part) under the HTML

    @property
    def recipients(self) -> list[str]:
        """The envelope: every address once, in order."""
        return list(dict.fromkeys(address_of(a).lower() for a in [*self.to, *self.cc, *self.bcc]))


@dataclass(frozen=True)
class Built:
    raw: bytes
    message_id: str
    sender: str
    recipients: list[str]
    subject: str


def check_header(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise SendRefused(400, f"{name} must be a string")
    if _FORBIDDEN.search(value):
        raise SendRefused(400, f"{name} must not contain line breaks or NUL characters")
    return value


def address_of(value: str) -> str:
    return parse_address(value)["email"] if parse_address(value) else value


def parse_recipients(name: str, value: Any) -> list[str]:
    """A list of addresses ("a@x.com" or "Name <a@x.com>") or one such string; each checked."""
    if value is None or value == "" or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise SendRefused(400, f'"{name}" must be an address or a list of addresses')
    found = []
    for item in items:
        check_header(name, item)
        pairs = getaddresses([item])
        if not pairs or any(not valid_address(email) for _, email in pairs):
            raise SendRefused(400, f'"{name}" holds {item!r}, which is not an email address')
        found += [formataddr((display, email)) if display else email for display, email in pairs]
    return found


def valid_address(email: str) -> bool:
    if email.count("@") != 1 or any(ch.isspace() for ch in email) or len(email) > 320:
        return False
    local, domain = email.split("@")
    return bool(local) and "." in domain and not domain.startswith(".") and not domain.endswith(".")


def parse_attachments(value: Any, limit: int) -> list[Attachment]:
    """[{"filename", "content_type", "content": base64}] -> Attachments; 400 / 413."""
    if value in (None, []):
        return []
    if not isinstance(value, list):
        raise SendRefused(400, '"attachments" must be a list of {"filename", "content_type", "content"}')
    found, total = [], 0
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise SendRefused(400, f"attachment {position}: needs \"filename\" and base64 \"content\"")
        filename = check_header(f"attachment {position} filename", str(item.get("filename") or "attachment"))
        content_type = str(item.get("content_type") or "application/octet-stream").lower()
        if not _MIME_TYPE.match(content_type):
            raise SendRefused(400, f"attachment {position}: content_type {content_type!r} is not a MIME type")
        try:
            data = base64.b64decode(item["content"], validate=True)
        except (binascii.Error, ValueError):
            raise SendRefused(400, f"attachment {position}: content is not valid base64") from None
        total += len(data)
        if total > limit:
            raise SendRefused(413, f"attachments exceed the {limit // (1024 * 1024)} MB limit of one message")
        found.append(Attachment(filename, content_type, data))
    return found


def reply_subject(subject: str | None) -> str:
    """One "Re: " however many Re:/Fwd:/AW: the original carried."""
    return "Re: " + _strip_prefixes(subject)


def forward_subject(subject: str | None) -> str:
    return "Fwd: " + _strip_prefixes(subject)


def _strip_prefixes(subject: str | None) -> str:
    """The subject's own words, case kept, after any Re:/Fwd:/AW: prefixes."""
    text = unfolded(subject)
    return text[len(text) - len(base_subject(text)):] if base_subject(text) else ""


def header(document: Mapping[str, Any], name: str) -> Any:
    found = header_values(document.get("headers"), name)
    return found[0] if len(found) == 1 else (found or None)


def threading_of(document: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """In-Reply-To and References for an answer to `document` (RFC 5322 §3.6.4): the parent's
    References (or its single In-Reply-To id) followed by the parent's Message-ID."""
    parent = own_id(document.get("message-id"))
    references = message_ids(header(document, "References"))
    if not references:
        in_reply_to = message_ids(header(document, "In-Reply-To"))
        references = in_reply_to[:1]
    if parent:
        references = [ref for ref in references if ref != parent] + [parent]
    return parent, references


def _addresses(value: Any) -> list[dict]:
    return parse_address_list(value)[0]


def _format(entry: Mapping[str, Any]) -> str:
    return formataddr((entry.get("name") or "", entry["email"]))


def in_domains(address: str, domains: Iterable[str]) -> bool:
    domain = address.rsplit("@", 1)[-1].lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)


def reply_addresses(document: Mapping[str, Any], domains: tuple[str, ...], reply_all: bool) -> tuple[list[str], list[str]]:
    """(To, Cc) of an answer: Reply-To, else From; reply-all adds the original To and Cc. Our
    own aliases (any address in DOMINIO, which would only come back here) and repeats go."""
    target = _addresses(header(document, "Reply-To")) or _addresses(document.get("from"))
    seen: set[str] = set()

    def keep(entries: list[dict]) -> list[str]:
        kept = []
        for entry in entries:
            email = entry["email"].strip().lower()
            if email in seen or in_domains(email, domains) or not valid_address(email):
                continue
            seen.add(email)
            kept.append(_format(entry))
        return kept

    to = keep(target)
    cc = keep(_addresses(document.get("to")) + _addresses(document.get("cc"))) if reply_all else []
    if not to and cc:
        to, cc = cc[:1], cc[1:]
    return to, cc


def addressed_alias(document: Mapping[str, Any], domains: tuple[str, ...], allowed) -> str | None:
    """The alias this message was delivered to that may be used as From (first one wins)."""
    for address in document.get("recipients") or []:
        if in_domains(address, domains) and allowed(address):
            return address
    return None


def html_to_text(html: str) -> str:
    import nh3  # loaded by the first reply, not by every worker at start (tests/unit/test_lazy_imports.py)

    return " ".join(nh3.clean(html, tags=set()).split())


def clean_html(html: str, inline_url):
    """The UI's sanitiser (sanitize.clean_html), imported when a reply first quotes HTML."""
    from ..sanitize import clean_html as sanitise

    return sanitise(html, inline_url)


def original_text(document: Mapping[str, Any]) -> str:
    text = document.get("text")
    if isinstance(text, str) and text.strip():
        return text
    html = document.get("html")
    return html_to_text(html) if isinstance(html, str) else ""


def sanitized_original_html(document: Mapping[str, Any]) -> str | None:
    """The original's HTML after the UI's own sanitiser; cid: images keep their reference."""
    html = document.get("html")
    if not isinstance(html, str) or not html.strip():
        return None
    return clean_html(html, lambda cid: f"cid:{cid}").html


def _who(document: Mapping[str, Any]) -> str:
    sender = parse_address(document.get("from"))
    return _format(sender) if sender else "someone"


def _when(document: Mapping[str, Any]) -> str:
    return unfolded(document.get("date")) or str(document.get("received_at") or "")


def quote_text(document: Mapping[str, Any]) -> str:
    lines = original_text(document).splitlines() or [""]
    return f"On {_when(document)}, {_who(document)} wrote:\n" + "\n".join(
        ">" + (" " + line if line and not line.startswith(">") else line) for line in lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def reply_html(answer_html: str | None, answer_text: str, document: Mapping[str, Any]) -> str | None:
    """The HTML alternative of a reply: the answer (itself sanitised), then the sanitised
    original in a blockquote. None when neither side has HTML."""
    original = sanitized_original_html(document)
    if answer_html is None and original is None:
        return None
    answer = clean_html(answer_html, lambda cid: None).html if answer_html else \
        "<div>" + _escape(answer_text).replace("\n", "<br>") + "</div>"
    quoted = original if original is not None else _escape(original_text(document)).replace("\n", "<br>")
    return (f"{answer}<br><div>On {_escape(_when(document))}, {_escape(_who(document))} wrote:</div>"
            f'<blockquote style="margin:0 0 0 .8ex;border-left:1px solid #ccc;padding-left:1ex">{quoted}</blockquote>')


def forward_header_block(document: Mapping[str, Any]) -> str:
    to = ", ".join(_format(a) for a in _addresses(document.get("to")))
    return ("---------- Forwarded message ----------\n"
            f"From: {_who(document)}\nDate: {_when(document)}\nSubject: {unfolded(document.get('subject'))}\n"
            f"To: {to}\n")


def eml_name(subject: str | None) -> str:
    """`<subject>.eml`, with nothing a file system or header could trip on."""
    cleaned = re.sub(r'[\\/:*?"<>|\x00-\x1f\x7f]+', " ", unfolded(subject)).strip(" .")
    return (cleaned[:120] or "message") + ".eml"


def build(draft: Draft, *, max_bytes: int, now: datetime | None = None) -> Built:
    """The MIME bytes to send (CRLF, as SMTP carries them) and their fixed Message-ID.
    Raises SendRefused before anything is queued."""
    check_header("from", draft.sender)
    check_header("subject", draft.subject)
    if len(draft.subject) > MAX_SUBJECT_LENGTH:
        raise SendRefused(400, f"subject may be at most {MAX_SUBJECT_LENGTH} characters")
    for name, values in (("to", draft.to), ("cc", draft.cc), ("bcc", draft.bcc)):
        for value in values:
            check_header(name, value)
    for ref in [draft.in_reply_to or "", *draft.references]:
        check_header("references", ref)
    recipients = draft.recipients
    if not draft.to:
        raise SendRefused(400, '"to" needs at least one address')
    if len(recipients) > MAX_RECIPIENTS:
        raise SendRefused(400, f"at most {MAX_RECIPIENTS} recipients per message (ImprovMX's limit); "
                               f"this one has {len(recipients)}")
    sender = address_of(draft.sender).lower()
    domain = sender.rsplit("@", 1)[-1]
    message = EmailMessage(policy=policy.default)
    try:
        message["From"] = Address(addr_spec=sender)
        message["To"] = ", ".join(draft.to)
        if draft.cc:
            message["Cc"] = ", ".join(draft.cc)
        message["Subject"] = draft.subject
        message["Date"] = format_datetime(now or datetime.now(timezone.utc))
        message_id = make_msgid(domain=domain)
        message["Message-ID"] = message_id
        if draft.in_reply_to:
            message["In-Reply-To"] = draft.in_reply_to
        if draft.references:
            message["References"] = " ".join(draft.references)
        message["MIME-Version"] = "1.0"
        message.set_content(draft.text or "")
        if draft.html:
            message.add_alternative(draft.html, subtype="html")
            html_part = message.get_payload()[-1]
            for cid, part in draft.related:
                maintype, subtype = part.content_type.split("/", 1)
                html_part.add_related(part.data, maintype, subtype, cid=f"<{cid}>", filename=part.filename,
                                      disposition="inline")
        for attachment in draft.attachments:
            maintype, subtype = attachment.content_type.split("/", 1)
            message.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename)
        if draft.forwarded is not None:
            original = BytesParser(policy=policy.default).parsebytes(draft.forwarded)
            message.add_attachment(original, filename=draft.forwarded_name)
        raw = message.as_bytes(policy=policy.SMTP)
    except ValueError as error:  # the email package refuses what it cannot represent safely
        raise SendRefused(400, f"the message cannot be built: {error}") from None
    if len(raw) > max_bytes:
        raise SendRefused(413, f"the message is {len(raw) // 1024} KB; at most {max_bytes // 1024} KB may be sent")
    return Built(raw, message_id, sender, recipients, draft.subject)

