"""The sending API: reply, forward, compose (each 202 once durably queued), the outbox with
retry and cancel, and a message's conversation. Sends need a key with the `send` scope;
originals are read through visible_archive(), so what a member cannot see is a 404."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from flask import Blueprint, current_app, g, jsonify, request
from pymongo.errors import PyMongoError

from ..access.authn import require_access
from ..access.scoped import visible_archive
from ..errors import ApiError
from ..outbound import compose
from ..outbound.compose import SendRefused
from ..outbound.outbox import CANCELLABLE, RETRYABLE, STATES
from ..outbound.service import Sending, audited, conversation, present_send, present_thread_item, unavailable
from ..ratelimit import configured_limit, limiter

bp = Blueprint("outbound", __name__)


def sending() -> Sending:
    settings = current_app.config["SETTINGS"]
    return Sending(settings.sending, settings.domains, current_app.extensions["send_outbox"], visible_archive())


def _body(allowed: set[str]) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "Body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(400, f"Unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    return body


def _text(body: dict[str, Any], name: str, required: bool = False) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f'"{name}" must be a string')
    return value


def _optional_html(body: dict[str, Any]) -> str | None:
    value = body.get("html")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, '"html" must be a string')
    return value or None


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(400, f'"{name}" must be true or false')
    return value


def _queued(action):
    """Run a send; SendRefused becomes its status, anything else from MongoDB a 503."""
    try:
        queued = action()
    except SendRefused as refused:
        headers = {"Retry-After": "30"} if refused.status == 503 else None
        raise ApiError(refused.status, refused.message, headers) from None
    except PyMongoError as error:
        raise ApiError(503, unavailable(error).message, {"Retry-After": "30"}) from None
    return jsonify(queued.answer()), 202


@bp.post("/emails/<email_id>/reply")
@require_access("send")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def reply(email_id: str):
    body = _body({"text", "html", "all", "attachments"})
    text = _text(body, "text", required=True)
    html = _optional_html(body)
    reply_all = _flag(body, "all")
    service = sending()
    return _queued(lambda: service.reply(email_id, text, html, reply_all,
                                         compose.parse_attachments(body.get("attachments"),
                                                                   service.settings.max_bytes)))


@bp.post("/emails/<email_id>/forward")
@require_access("send")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def forward(email_id: str):
    body = _body({"to", "cc", "text", "as_attachment", "from"})
    text = _text(body, "text")
    as_attachment = _flag(body, "as_attachment")
    sender = _text(body, "from") or None
    service = sending()
    return _queued(lambda: service.forward(email_id, compose.parse_recipients("to", body.get("to")),
                                           compose.parse_recipients("cc", body.get("cc")), text, as_attachment,
                                           sender))


@bp.post("/send")
@require_access("send")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def send():
    body = _body({"from", "to", "cc", "bcc", "subject", "text", "html", "attachments"})
    sender = _text(body, "from", required=True)
    subject = _text(body, "subject", required=True)
    text = _text(body, "text", required=True)
    html = _optional_html(body)
    service = sending()
    return _queued(lambda: service.compose_new(
        sender, compose.parse_recipients("to", body.get("to")), compose.parse_recipients("cc", body.get("cc")),
        compose.parse_recipients("bcc", body.get("bcc")), subject, text, html,
        compose.parse_attachments(body.get("attachments"), service.settings.max_bytes)))


def _outbox_call(action):
    try:
        return action()
    except PyMongoError as error:
        current_app.logger.error("outbox unavailable (%s)", type(error).__name__)
        raise ApiError(503, "The archive's database is unavailable; try again shortly.",
                       {"Retry-After": "30"}) from None


@bp.get("/outbox")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_LIST"))
def outbox_list():
    status = request.args.get("status") or None
    if status is not None and status not in STATES:
        raise ApiError(400, f"'status' must be one of {', '.join(STATES)}")
    service = sending()
    items = _outbox_call(lambda: service.outbox.listing(service.owner_filter(), status))
    return jsonify(success=True, count=len(items), sends=[present_send(item) for item in items],
                   sending_enabled=service.settings.enabled,
                   sent_today=_outbox_call(service.outbox.used_today), daily_limit=service.settings.daily_limit)


def _found_send(service: Sending, send_id: str) -> dict[str, Any]:
    item = _outbox_call(lambda: service.outbox.find(send_id, service.owner_filter()))
    if item is None:
        raise ApiError(404, "Send not found")
    return item


@bp.get("/outbox/<send_id>")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def outbox_item(send_id: str):
    return jsonify(success=True, send=present_send(_found_send(sending(), send_id)))


@bp.post("/outbox/<send_id>/retry")
@require_access("send")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def outbox_retry(send_id: str):
    service = sending()
    item = _found_send(service, send_id)
    if not service.settings.enabled:
        raise ApiError(409, "Sending is not configured")
    changed = _outbox_call(lambda: service.outbox.retry(ObjectId(send_id), service.owner_filter(),
                                                        g.principal.actor()))
    if changed is None:
        raise ApiError(409, f"A send that is {item['status']} cannot be retried (only {', '.join(RETRYABLE)})")
    audited("send_retry", g.principal, details={"send_id": send_id, "was": item["status"]})
    return jsonify(success=True, send=present_send(changed))


@bp.post("/outbox/<send_id>/cancel")
@require_access("send")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def outbox_cancel(send_id: str):
    service = sending()
    item = _found_send(service, send_id)
    changed = _outbox_call(lambda: service.outbox.cancel(ObjectId(send_id), service.owner_filter(),
                                                         g.principal.actor()))
    if changed is None:
        raise ApiError(409, f"A send that is {item['status']} cannot be cancelled (only {', '.join(CANCELLABLE)})")
    audited("send_cancel", g.principal, details={"send_id": send_id, "was": item["status"]})
    return jsonify(success=True, send=present_send(changed))


@bp.get("/emails/<email_id>/thread")
@require_access("read")
@limiter.limit(configured_limit("RATELIMIT_DETAIL"))
def thread(email_id: str):
    messages = conversation(visible_archive(), email_id)
    if messages is None:
        raise ApiError(404, "Email not found")
    return jsonify(success=True, count=len(messages), emails=[present_thread_item(item) for item in messages])
