"""POST /webhook: ImprovMX delivers one email per request; answer 2xx only once it is kept.

Strict only where nothing could be stored (no body, not JSON, not an object); every other
shape is archived, because ImprovMX drops a message for good after three refusals.
"""

from __future__ import annotations

import logging
import traceback

from flask import Blueprint, current_app, jsonify, request

from ..archive import RecipientNotAccepted
from ..body import NestedTooDeeply, parse_json_body, plain
from ..db import DatabaseUnavailable
from ..payload import MAX_JSON_DEPTH
from ..spool import SpoolUnavailable
from ..errors import ApiError
from ..metrics import count_delivery, ingest_timer
from ..ratelimit import configured_limit, exempt_from_global_limits, limiter
from ..security import check_webhook_access, source_is_trusted_sender

log = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)

READ_BLOCK = 1024 * 1024


def _json_int(text: str) -> int | str:
    """BSON integers are 64-bit: a larger JSON integer is kept as its decimal text, not refused."""
    value = int(text)
    return value if -2**63 <= value < 2**63 else text


def _read_body() -> bytearray:
    """The raw body in one buffer, filled in place: werkzeug's get_data() would hold the
    ~70 MB body twice while joining the pieces it read."""
    stream, length = request.stream, request.content_length
    if length is None:
        body = bytearray()
        while block := stream.read(READ_BLOCK):
            body += block
        return body
    body = bytearray(length)
    filled = 0
    with memoryview(body) as view:
        while filled < length:
            count = stream.readinto(view[filled:filled + READ_BLOCK])
            if not count:
                break
            filled += count
    del body[filled:]
    return body


def read_payload() -> dict:
    """The request body as a JSON object, or a 400 saying exactly what is wrong.

    Large attachment contents are not copied out of the request buffer (see body.py), so a
    70 MB payload costs about one copy of itself.
    """
    body = _read_body()
    if not body or body.isspace():
        raise ApiError(400, "Request body is empty; expected the ImprovMX JSON payload")
    try:
        payload = parse_json_body(body, parse_int=_json_int)
    except NestedTooDeeply:
        raise ApiError(400, f"Request body nests lists or objects more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Request body must be a JSON object")
    if not payload:
        raise ApiError(400, "Request body is an empty JSON object")
    return payload


@bp.post("/webhook")
@bp.post("/webhook/<secret>")
@exempt_from_global_limits
@limiter.limit(configured_limit("RATELIMIT_WEBHOOK"), exempt_when=source_is_trusted_sender)
def receive(secret: str | None = None):
    check_webhook_access(secret)
    # A large body waits here, still unread, until few enough are in memory on this host.
    with current_app.extensions["large_bodies"].admit(request.content_length):
        return _store(read_payload())


def _store(payload: dict):
    archive = current_app.extensions["archive"]
    settings = current_app.config["SETTINGS"]
    try:
        with ingest_timer():
            result = archive.ingest(payload, domains=settings.domains)
    except RecipientNotAccepted:
        raise ApiError(422, "No recipient is in a domain this archive accepts (DOMINIO)") from None
    except DatabaseUnavailable:
        log.warning("database unavailable; spooling the message")
        return _spool(payload)
    except Exception as error:
        # Refusing would lose the mail after ImprovMX's retries: keep it for the operator,
        # whose replays will retry it. Only the error's type and place are logged (no mail).
        frame = traceback.extract_tb(error.__traceback__)[-1]
        log.error("archiving failed (%s at %s:%d); message kept in the spool", type(error).__name__,
                  frame.filename.rsplit("/", 1)[-1], frame.lineno)
        return _spool(payload)
    del payload
    if result.deleted:
        return _deleted(result.email_id)
    count_delivery("duplicate" if result.duplicate else "stored")
    if result.duplicate:
        log.info("duplicate delivery email_id=%s", result.email_id)
    return jsonify(
        success=True,
        message="Email already stored" if result.duplicate else "Email received and stored",
        email_id=result.email_id,
        duplicate=result.duplicate,
    )


def _deleted(email_id: str):
    """A retry of a message deleted since (a tombstone matched): acknowledged, not stored."""
    log.info("delivery of deleted email_id=%s acknowledged, not stored again", email_id)
    count_delivery("deleted")
    return jsonify(success=True, message="Email was deleted; not stored again", email_id=email_id,
                   duplicate=False, deleted=True)


def _spool(payload: dict):
    """The archive cannot take the message now: keep it on local disk and answer 202, or
    answer 503 so ImprovMX retries when the disk cannot take it either."""
    try:
        email_id = current_app.extensions["spool"].put(plain(payload))
    except SpoolUnavailable:
        log.error("database and spool both unavailable; asking ImprovMX to retry")
        raise ApiError(503, "Storage temporarily unavailable; retry later", {"Retry-After": "60"}) from None
    log.warning("spooled email_id=%s", email_id)
    count_delivery("spooled")
    response = jsonify(success=True, message="Email accepted; it will be archived when the database is back",
                       email_id=str(email_id), duplicate=False, spooled=True)
    response.status_code = 202
    return response
