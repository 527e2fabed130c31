"""Writing mail in the UI: reply, reply all, forward and compose pages (plain HTML forms, so
they work without script and on a phone), the outbox with retry and cancel, and the
conversation shown under a message. Every send is a CSRF-protected POST and goes through
outbound.service, the same code as the API."""

from __future__ import annotations

from bson import ObjectId
from flask import current_app, flash, g, redirect, render_template, request, url_for
from pymongo.errors import PyMongoError

from ..access.scoped import visible_archive
from ..errors import ApiError
from ..outbound import compose
from ..outbound.compose import Attachment, SendRefused
from ..outbound.outbox import CANCELLABLE, RETRYABLE
from ..outbound.service import Sending, audited, conversation, present_send, present_thread_item, unavailable
from .blueprint import bp, signed_in

MAX_FILES = 20


def _sending() -> Sending:
    settings = current_app.config["SETTINGS"]
    return Sending(settings.sending, settings.domains, current_app.extensions["send_outbox"], visible_archive())


def _aliases(service: Sending) -> list[str]:
    """The From choices on the compose page: the principal's granted aliases in DOMINIO (an
    admin types any alias of those domains)."""
    grants = [grant for grant in g.principal.grants if not grant.startswith("*@")]
    return [grant for grant in grants if compose.in_domains(grant, service.domains)]


def _uploads(limit: int) -> list[Attachment]:
    files = [item for item in request.files.getlist("attachments") if item and item.filename][:MAX_FILES]
    found, total = [], 0
    for item in files:
        data = item.read(limit + 1)
        total += len(data)
        if total > limit:
            raise SendRefused(413, f"Attachments may total at most {limit // (1024 * 1024)} MB")
        content_type = (item.mimetype or "application/octet-stream").lower()
        found.append(Attachment(compose.check_header("attachment name", item.filename), content_type, data))
    return found


def _form_page(mode: str, *, original=None, error: str | None = None, status: int = 200, service=None):
    service = service or _sending()
    values = request.form if request.method == "POST" else {}
    defaults = {}
    if original is not None and mode.startswith("reply"):
        to, cc = compose.reply_addresses(original, service.domains, mode == "reply_all")
        defaults = {"to": ", ".join(to), "cc": ", ".join(cc), "subject": compose.reply_subject(original.get("subject"))}
    elif original is not None:
        defaults = {"subject": compose.forward_subject(original.get("subject"))}
    return render_template("ui/compose.html", mode=mode, original=original, values=values, defaults=defaults,
                           aliases=_aliases(service), enabled=service.settings.enabled and bool(service.domains),
                           error=error), status


def _submit(action, mode: str, original=None):
    service = _sending()
    try:
        queued = action(service)
    except SendRefused as refused:
        return _form_page(mode, original=original, error=refused.message, status=refused.status, service=service)
    except PyMongoError as error:
        return _form_page(mode, original=original, error=unavailable(error).message, status=503, service=service)
    flash("Queued for sending. Its progress is shown below.")
    return redirect(url_for("ui.outbox_item", send_id=queued.send_id), code=303)


def _split(name: str) -> list[str]:
    raw = request.form.get(name, "")
    compose.check_header(name, raw)
    return compose.parse_recipients(name, [part for part in raw.split(",") if part.strip()]) if raw.strip() else []


def _original(email_id: str):
    document = visible_archive().find(email_id)
    if document is None:
        raise ApiError(404, "This message does not exist (or was deleted).")
    return document


@bp.route("/compose", methods=["GET", "POST"])
@signed_in
def compose_page():
    if request.method == "GET":
        return _form_page("compose")
    return _submit(lambda service: service.compose_new(
        request.form.get("from", ""), _split("to"), _split("cc"), _split("bcc"), request.form.get("subject", ""),
        request.form.get("text", ""), None, _uploads(service.settings.max_bytes)), "compose")


@bp.route("/emails/<email_id>/reply", methods=["GET", "POST"])
@signed_in
def reply_page(email_id: str):
    original = _original(email_id)
    reply_all = request.values.get("all") == "1"
    mode = "reply_all" if reply_all else "reply"
    if request.method == "GET":
        return _form_page(mode, original=original)
    return _submit(lambda service: service.reply(email_id, request.form.get("text", ""), None, reply_all,
                                                 _uploads(service.settings.max_bytes)), mode, original)


@bp.route("/emails/<email_id>/forward", methods=["GET", "POST"])
@signed_in
def forward_page(email_id: str):
    original = _original(email_id)
    if request.method == "GET":
        return _form_page("forward", original=original)
    return _submit(lambda service: service.forward(email_id, _split("to"), _split("cc"), request.form.get("text", ""),
                                                   request.form.get("as_attachment") == "1"), "forward", original)


@bp.get("/outbox")
@signed_in
def outbox_page():
    service = _sending()
    items = service.outbox.listing(service.owner_filter(), request.args.get("status") or None, limit=100)
    return render_template("ui/outbox.html", sends=[present_send(item) for item in items],
                           sent_today=service.outbox.used_today(), daily_limit=service.settings.daily_limit,
                           retryable=RETRYABLE, cancellable=CANCELLABLE)


@bp.get("/outbox/<send_id>")
@signed_in
def outbox_item(send_id: str):
    service = _sending()
    item = service.outbox.find(send_id, service.owner_filter())
    if item is None:
        raise ApiError(404, "This send does not exist, or it is not yours.")
    return render_template("ui/outbox.html", sends=[present_send(item)], single=True,
                           sent_today=service.outbox.used_today(), daily_limit=service.settings.daily_limit,
                           retryable=RETRYABLE, cancellable=CANCELLABLE)


@bp.post("/outbox/<send_id>/<action>")
@signed_in
def outbox_action(send_id: str, action: str):
    if action not in ("retry", "cancel") or not ObjectId.is_valid(send_id):
        raise ApiError(404, "Not found")
    service = _sending()
    item = service.outbox.find(send_id, service.owner_filter())
    if item is None:
        raise ApiError(404, "This send does not exist, or it is not yours.")
    change = service.outbox.retry if action == "retry" else service.outbox.cancel
    if change(ObjectId(send_id), service.owner_filter(), g.principal.actor()) is None:
        raise ApiError(409, f"A send that is {item['status']} cannot be {'retried' if action == 'retry' else 'cancelled'}.")
    audited(f"send_{action}", g.principal, details={"send_id": send_id, "was": item["status"]})
    flash("Queued again: it will be sent shortly." if action == "retry" else "Cancelled: it will not be sent.")
    return redirect(url_for("ui.outbox_item", send_id=send_id), code=303)


@bp.app_context_processor
def _conversation_helper():
    """`thread_of(document)` for the message page: the conversation of the message it already
    read, under the same view."""
    def thread_of(document):
        found = conversation(visible_archive(), str(document["_id"]), document) or []
        return [present_thread_item(item) for item in found] if len(found) > 1 else []
    return {"thread_of": thread_of}
