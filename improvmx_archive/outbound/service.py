"""What the API, the UI and the CLI share: turn a person's request into a queued send, read
the outbox as they may see it, store a sent copy, and gather a conversation.

Every original is read through the caller's ScopedArchive, so a member can only answer or
forward mail they can see (anything else is the same 404 as a missing message).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from .. import threads
from ..access import audit
from ..access.principal import Principal
from ..access.scoped import ScopedArchive
from ..access.visibility import may_send_as
from ..archive import SENT_SOURCE
from ..config import SendingSettings
from ..mailio import parse_raw_message
from ..times import api_time, as_utc
from . import compose
from .compose import Attachment, Draft, SendRefused
from .outbox import QuotaReached, SendOutbox

log = logging.getLogger(__name__)

THREAD_LIMIT = 200
THREAD_ROUNDS = 4
THREAD_FIELDS = {"received_at": 1, "from": 1, "to": 1, "cc": 1, "subject": 1, "snippet": 1, "source": 1,
                 "message-id": 1, "thread_refs": 1, "subject_lower": 1, "has_attachments": 1}


@dataclass(frozen=True)
class Queued:
    send_id: str
    message_id: str
    status: str = "queued"

    def answer(self) -> dict[str, Any]:
        return {"success": True, "send_id": self.send_id, "message_id": self.message_id, "status": self.status}


class Sending:
    """Sending for one request: settings, the outbox, the principal and their view."""

    def __init__(self, settings: SendingSettings, domains: tuple[str, ...], outbox: SendOutbox,
                 scoped: ScopedArchive):
        self.settings = settings
        self.domains = domains
        self.outbox = outbox
        self.scoped = scoped
        self.principal: Principal = scoped.principal

    # -- checks --------------------------------------------------------------------------------

    def require_configured(self) -> None:
        if not self.settings.enabled:
            raise SendRefused(409, "Sending is not configured: set SMTP_USERNAME and SMTP_PASSWORD (or "
                                   "SMTP_CREDENTIALS_FILE) for ImprovMX's SMTP relay")
        if not self.domains:
            raise SendRefused(409, "Sending is not configured: set DOMINIO to the domains whose aliases may send")

    def may_use(self, address: str) -> bool:
        return compose.in_domains(address, self.domains) and may_send_as(self.principal, address)

    def check_sender(self, address: str) -> str:
        sender = compose.address_of(compose.check_header("from", address)).strip().lower()
        if not compose.valid_address(sender):
            raise SendRefused(400, '"from" must be one email address')
        if not compose.in_domains(sender, self.domains):
            raise SendRefused(403, f"From must be an alias of {', '.join(self.domains)}")
        if not may_send_as(self.principal, sender):
            raise SendRefused(403, f"You may not send as {sender}")
        if self.settings.login_for(sender) is None:
            raise SendRefused(409, f"No SMTP login is configured for {sender}")
        return sender

    def original(self, email_id: str) -> dict[str, Any]:
        document = self.scoped.find(email_id)
        if document is None:
            raise SendRefused(404, "Email not found")
        return document

    # -- drafts --------------------------------------------------------------------------------

    def reply(self, email_id: str, text: str, html: str | None, reply_all: bool,
              attachments: list[Attachment]) -> Queued:
        self.require_configured()
        document = self.original(email_id)
        sender = compose.addressed_alias(document, self.domains, self.may_use)
        if sender is None:
            raise SendRefused(403, "This message was not addressed to an alias you may send as")
        to, cc = compose.reply_addresses(document, self.domains, reply_all)
        if not to:
            raise SendRefused(409, "This message has no address to reply to")
        in_reply_to, references = compose.threading_of(document)
        draft = Draft(sender=sender, to=to, cc=cc, subject=compose.reply_subject(document.get("subject")),
                      text=f"{text.rstrip()}\n\n{compose.quote_text(document)}\n",
                      html=compose.reply_html(html, text, document) if html else None,
                      attachments=attachments, in_reply_to=in_reply_to, references=references)
        return self.queue(draft, kind="reply_all" if reply_all else "reply", original_id=email_id)

    def forward(self, email_id: str, to: list[str], cc: list[str], text: str, as_attachment: bool,
                sender: str | None = None) -> Queued:
        self.require_configured()
        document = self.original(email_id)
        sender = self.check_sender(sender) if sender else compose.addressed_alias(document, self.domains, self.may_use)
        if sender is None:
            raise SendRefused(403, 'This message was not addressed to an alias you may send as; give "from"')
        subject = compose.forward_subject(document.get("subject"))
        draft = Draft(sender=sender, to=to, cc=cc, subject=subject, text=text)
        if as_attachment:
            draft.forwarded = b"".join(self.scoped.rebuild(email_id) or [])
            draft.forwarded_name = compose.eml_name(document.get("subject"))
        else:
            draft.text = f"{text.rstrip()}\n\n{compose.forward_header_block(document)}\n{compose.original_text(document)}\n"
            original_html = compose.sanitized_original_html(document)
            if original_html is not None:
                header_html = compose._escape(compose.forward_header_block(document)).replace("\n", "<br>")
                answer = compose._escape(text).replace("\n", "<br>")
                draft.html = f"<div>{answer}</div><br><div>{header_html}</div>{original_html}"
            draft.attachments = self._parts(email_id, document, "attachments")
            inlines = self._parts(email_id, document, "inlines")
            if draft.html:
                draft.related = [(str(record.get("cid") or "").strip("<>"), part)
                                 for record, part in zip(document.get("inlines") or [], inlines)]
                draft.related = [(cid, part) for cid, part in draft.related if cid]
            else:
                draft.attachments += inlines
        return self.queue(draft, kind="forward_attached" if as_attachment else "forward", original_id=email_id)

    def _parts(self, email_id: str, document: Mapping[str, Any], kind: str) -> list[Attachment]:
        found = []
        offset = len(document.get("attachments") or []) if kind == "inlines" else 0
        total = 0
        for position, _ in enumerate(document.get(kind) or []):
            record, blob = self.scoped.part(email_id, position=offset + position)
            if record is None or blob is None:
                continue
            total += int(record.get("size") or 0)
            if total > self.settings.max_bytes:
                raise SendRefused(413, "the original's attachments exceed the size limit of one message")
            data = b"".join(blob.chunks)
            content_type = str(record.get("type") or "application/octet-stream").lower()
            if "/" not in content_type:
                content_type = "application/octet-stream"
            found.append(Attachment(str(record.get("name") or f"part-{position}"), content_type, data))
        return found

    def compose_new(self, sender: str, to: list[str], cc: list[str], bcc: list[str], subject: str, text: str,
                    html: str | None, attachments: list[Attachment]) -> Queued:
        self.require_configured()
        draft = Draft(sender=self.check_sender(sender), to=to, cc=cc, bcc=bcc, subject=subject, text=text,
                      html=html, attachments=attachments)
        return self.queue(draft, kind="compose", original_id=None)

    # -- queuing -------------------------------------------------------------------------------

    def queue(self, draft: Draft, *, kind: str, original_id: str | None) -> Queued:
        """Build, check the day's quota, store durably; raises SendRefused (4xx, or 503 while
        MongoDB is unavailable: then nothing is queued)."""
        built = compose.build(draft, max_bytes=self.settings.max_bytes)
        now = datetime.now(timezone.utc)
        record = {
            "message_id": built.message_id, "sender": built.sender, "recipients": built.recipients,
            "to": draft.to, "cc": draft.cc, "bcc": [compose.address_of(a).lower() for a in draft.bcc],
            "subject": built.subject, "kind": kind, "original_id": original_id,
            "person_id": self.principal.person_id, "actor": self.principal.actor(),
        }
        try:
            day = self.outbox.take_quota(self.settings.daily_limit, now)
        except QuotaReached:
            raise SendRefused(429, f"The daily sending limit ({self.settings.daily_limit}) is reached; "
                                   "it resets at 00:00 UTC") from None
        except PyMongoError as error:
            raise unavailable(error) from None
        try:
            send_id = self.outbox.enqueue(record, built.raw, now)
        except PyMongoError as error:
            try:
                self.outbox.give_back_quota(day)
            except PyMongoError:
                pass
            raise unavailable(error) from None
        log.info("send queued send_id=%s kind=%s recipients=%d actor=%s", send_id, kind, len(built.recipients),
                 self.principal.name)
        audited("send", self.principal, email_ids=[original_id] if original_id else [],
                details={"send_id": str(send_id), "kind": kind, "recipients": len(built.recipients)})
        return Queued(str(send_id), built.message_id)

    # -- the outbox as this principal sees it ------------------------------------------------

    def owner_filter(self) -> dict[str, Any]:
        """Admins see every send; a member their own."""
        return {} if self.principal.is_admin else {"person_id": self.principal.person_id}


def audited(action: str, principal: Principal, **fields) -> None:
    """An audit entry for a send, retry or cancel that has already happened: if the trail
    cannot take it, the action stands (answering an error would invite a second send)."""
    audit.record_done(action, principal=principal, **fields)


def unavailable(error: Exception) -> SendRefused:
    log.error("send not queued: database unavailable (%s)", type(error).__name__)
    return SendRefused(503, "The archive's database is unavailable; nothing was queued. Try again shortly.")


def present_send(item: Mapping[str, Any]) -> dict[str, Any]:
    """A send as the API shows it (never its MIME bytes or lease)."""
    def when(name):
        value = item.get(name)
        return api_time(value) if isinstance(value, datetime) else None

    return {
        "send_id": str(item["_id"]), "status": item.get("status"), "message_id": item.get("message_id"),
        "from": item.get("sender"), "to": item.get("to") or [], "cc": item.get("cc") or [],
        "bcc": item.get("bcc") or [], "subject": item.get("subject"), "kind": item.get("kind"),
        "original_id": item.get("original_id"), "attempts": item.get("attempts", 0),
        "last_reply": item.get("last_reply"), "refused": item.get("refused") or {},
        "size": item.get("size"), "created_at": when("created_at"), "last_attempt_at": when("last_attempt_at"),
        "next_attempt_at": when("next_attempt_at") if item.get("status") in ("queued", "retrying") else None,
        "sent_at": when("sent_at"), "archived_email_id": item.get("archived_email_id"),
        "sent_by": (item.get("actor") or {}).get("name"),
    }


def archive_copy(archive, item: Mapping[str, Any], raw: bytes) -> str:
    """Store what was sent in the archive as `source: sent` (the same bytes, through the import
    path, so it is searchable and in its conversation); Bcc only in this record. Idempotent."""
    parsed = parse_raw_message(raw)
    payload = parsed.payload
    if item.get("bcc"):
        payload["bcc"] = [{"name": None, "email": address} for address in item["bcc"]]
    result = archive.ingest(payload, received_at=item.get("sent_at") or datetime.now(timezone.utc),
                            source=SENT_SOURCE, sent_by=item.get("person_id"))
    return result.email_id


def conversation(scoped: ScopedArchive, email_id: str,
                 document: Mapping[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """The messages of email_id's conversation in this view, oldest first (None: not visible).
    Linked by Message-ID, In-Reply-To and References; by subject only for messages that carry
    none of those headers. `document`: the message already read through this view (the
    message page), so it is not read (and audited) twice."""
    document = document if document is not None else scoped.find(email_id)
    if document is None:
        return None
    refs = set(document.get(threads.FIELD) or threads.refs_of(document.get("message-id"), document.get("headers")))
    found: dict[ObjectId, dict[str, Any]] = {}
    rounds = 0
    while refs and rounds < THREAD_ROUNDS and len(found) < THREAD_LIMIT:
        rounds += 1
        grown = set(refs)
        for item in scoped.find_summaries({threads.FIELD: {"$in": sorted(refs)}}, THREAD_FIELDS).limit(THREAD_LIMIT):
            found[item["_id"]] = item
            grown.update(item.get(threads.FIELD) or [])
        if grown == refs:
            break
        refs = grown
    base = threads.base_subject(document.get("subject"))
    if base:
        variants = [base] + [f"{prefix}: {base}" for prefix in ("re", "fwd", "fw", "aw")]
        for item in scoped.find_summaries({"subject_lower": {"$in": variants}}, THREAD_FIELDS).limit(THREAD_LIMIT):
            if not item.get(threads.FIELD) or item["_id"] == document["_id"]:
                found.setdefault(item["_id"], item)
    found.setdefault(document["_id"], {key: document.get(key) for key in THREAD_FIELDS} | {"_id": document["_id"]})
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    ordered = sorted(found.values(), key=lambda item: (as_utc(item.get("received_at") or oldest), item["_id"]))
    return ordered[:THREAD_LIMIT]


def present_thread_item(item: Mapping[str, Any]) -> dict[str, Any]:
    received = item.get("received_at")
    return {
        "id": str(item["_id"]), "received_at": api_time(received) if isinstance(received, datetime) else None,
        "from": item.get("from"), "to": item.get("to"), "subject": item.get("subject"),
        "snippet": item.get("snippet"), "source": item.get("source") or "webhook",
        "message_id": item.get("message-id"), "has_attachments": bool(item.get("has_attachments")),
    }
