"""The OpenAPI 3.1 description of the API: one source for /openapi.json and the /docs page.

A test compares it with the app's URL map, so a route cannot exist undocumented.
"""

from __future__ import annotations

from typing import Any

from .query import MAX_QUERY_LENGTH, MAX_TERMS, MAX_VALUE_LENGTH

ERROR = {"$ref": "#/components/responses/Error"}
BEARER = [{"bearer": []}]


def _error_responses(*codes: int) -> dict[str, Any]:
    return {str(code): ERROR for code in codes}


def _param(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


EMAIL_ID = _param("email_id", "path", {"type": "string"}, "The message id (24 hex characters).")
AUTH_ERRORS = (401, 403, 429)

LIST_PARAMETERS = [
    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "Page size."),
    _param("skip", "query", {"type": "integer", "minimum": 0, "default": 0},
           "Messages to skip (kept for compatibility; a deep skip reads every skipped message: use cursor)."),
    _param("cursor", "query", {"type": "string"},
           "The `next` value of the previous page, with the same filters: the page after it, as cheap at any "
           "depth. Altered, or used with other filters: 400. Not together with skip."),
    _param("count", "query", {"type": "boolean", "default": True},
           "false: do not count every match (total is null); a broad search then costs only its page."),
    _param("q", "query", {"type": "string", "maxLength": MAX_QUERY_LENGTH},
           "Search (see the description above): words, \"phrases\", prefix*, -negation, operators."),
    _param("from_email", "query", {"type": "string", "format": "email"}, "Sender address, exact, case-insensitive."),
    _param("to", "query", {"type": "string", "format": "email"}, "Recipient address (to, cc, envelope, Delivered-To)."),
    _param("subject", "query", {"type": "string", "maxLength": 500}, "Case-insensitive substring of the subject."),
    _param("since", "query", {"type": "string", "format": "date-time"}, "Received at or after (ISO 8601)."),
    _param("until", "query", {"type": "string", "format": "date-time"}, "Received at or before (ISO 8601)."),
    _param("processed", "query", {"type": "boolean"}, "Only messages marked processed (true) or not (false)."),
    _param("has_attachments", "query", {"type": "boolean"}, "Only messages with (true) or without (false) attachments."),
]

SEARCH_DESCRIPTION = (
    "Every parameter narrows the list, q included; pages go by `next` (pass it back as cursor). "
    "q: free words are ANDed and match whole words, ignoring case and accents (resume finds Résumé), in "
    "the subject, sender and recipient names and addresses (whole address, local part, domain), the text "
    "body (its first 4,096 characters; the HTML's text when there is no text part) and file names. "
    "invoi* matches a prefix; \"quarterly report\" matches words in order; a leading - negates a word, "
    "phrase or operator. Operators: from:, to: (to, cc, bcc, envelope, Delivered-To), cc:, subject:, body:, "
    "filename:, message-id:, has:attachment, has:inline, is:processed, is:unprocessed, before:YYYY-MM-DD, "
    "after:YYYY-MM-DD (received_at, UTC; after: includes the day), larger:10MB, smaller:500KB (K, KB, M, MB; "
    "message size). Values may be quoted: from:\"Acme Billing\". Example: "
    "q=from:acme invoi* has:attachment after:2026-03-01 -is:processed. "
    f"At most {MAX_TERMS} terms of {MAX_VALUE_LENGTH} characters; "
    "an unknown operator, a bad date or size or an unclosed quote is a 400 naming it. q finds a message a "
    "few seconds after it was stored (it is indexed in the background); GET / shows the backlog."
)

PAYLOAD_SCHEMA = {
    "type": "object",
    "description": "The ImprovMX webhook payload; unknown fields are kept.",
    "minProperties": 1,
    "additionalProperties": True,
    "properties": {
        "headers": {"type": "object"},
        "to": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
        "cc": {"type": "array", "items": {"$ref": "#/components/schemas/Address"}},
        "from": {"$ref": "#/components/schemas/Address"},
        "subject": {"type": "string"},
        "message-id": {"type": "string"},
        "date": {"type": "string"},
        "return-path": {"$ref": "#/components/schemas/Address"},
        "timestamp": {"type": "integer"},
        "text": {"type": ["string", "null"]},
        "html": {"type": ["string", "null"]},
        "inlines": {"type": "array", "items": {"$ref": "#/components/schemas/Part"}},
        "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Part"}},
    },
}

WEBHOOK_OPERATION = {
    "summary": "Receive one email from ImprovMX",
    "description": "Stores the message (attachments in GridFS, deduplicated) and answers 200 only once it is "
                   "durably kept; a retried delivery answers 200 with duplicate=true. While MongoDB is down the "
                   "message is spooled to local disk and the answer is 202.",
    "requestBody": {"required": True, "content": {"application/json": {"schema": PAYLOAD_SCHEMA}}},
    "responses": {
        "200": {"description": "Stored (or already stored)", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/WebhookResult"}}}},
        "202": {"description": "Spooled; archived when the database is back", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WebhookResult"}}}},
        **_error_responses(400, 403, 404, 413, 422, 429, 503),
    },
}

DOWNLOAD_RESPONSES = {
    "200": {"description": "The part's bytes, streamed, with Content-Disposition",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
    **_error_responses(*AUTH_ERRORS, 404),
}


RAW_MESSAGE = {"schema": {"type": "string", "format": "binary"}}

TRANSFER_PATHS = {
    "/emails/{email_id}/raw": {"get": {
        "summary": "The message rebuilt as MIME, downloaded as <id>.eml",
        "description": "ImprovMX's JSON does not carry the original MIME: the message is rebuilt from what is "
                       "stored (headers, bodies, the exact bytes of every part) as multipart/mixed > "
                       "multipart/related > multipart/alternative, with CRLF line endings. Header order is trace "
                       "fields, then originator and destination fields, then the rest (the JSON does not keep the "
                       "original order); DKIM signatures inside no longer verify. An X-Archive-Reconstructed "
                       "header says so. An address that is not ASCII is written as stored, in a UTF-8 header "
                       "(RFC 6532). A message that cannot be rebuilt answers 500 with a JSON error saying so.",
        "security": BEARER, "parameters": [EMAIL_ID],
        "responses": {"200": {"description": "The message, streamed", "content": {"message/rfc822": RAW_MESSAGE}},
                      **_error_responses(*AUTH_ERRORS, 404, 500)}}},
    "/export.mbox": {"get": {
        "summary": "Every matching message, oldest first, as one streamed mbox (mboxrd)",
        "description": "Takes the filters of GET /emails, q included (paging does not apply: everything "
                       "matching is exported). LF line endings, `From <sender> <asctime UTC of received_at>` separators, "
                       "`>From ` quoting reversible (mboxrd). Streamed at constant memory; a client that "
                       "disconnects stops the export. A message that cannot be rebuilt is never left out in "
                       "silence: the mbox then ends with a marker message carrying X-Archive-Export-Incomplete "
                       "(the count) and listing each missing id with the reason.",
        "security": BEARER,
        "parameters": [p for p in LIST_PARAMETERS if p["name"] not in ("limit", "skip", "cursor", "count")],
        "responses": {"200": {"description": "The mbox, streamed", "content": {"application/mbox": RAW_MESSAGE}},
                      **_error_responses(400, *AUTH_ERRORS)}}},
    "/import": {"post": {
        "summary": "Import one raw message (.eml) into the archive",
        "description": "Parsed with mailparse, ImprovMX's own parser, into the webhook's payload and stored through "
                       "the same ingest: importing the same message again stores nothing and answers "
                       "duplicate=true. received_at is the top Received: header's date, else Date:, else now; "
                       "the message is marked source=import. Rate limit RATELIMIT_IMPORT; body cap MAX_BODY_MB.",
        "security": BEARER,
        "requestBody": {"required": True, "content": {"message/rfc822": RAW_MESSAGE}},
        "responses": {
            "201": {"description": "Imported", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ImportResult"}}}},
            "200": {"description": "Already stored (duplicate=true), or deleted within DELETE_TOMBSTONE_DAYS "
                                   "and not stored again (deleted=true)", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ImportResult"}}}},
            **_error_responses(400, *AUTH_ERRORS, 413, 415, 503)}}},
}


def build_spec() -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ImprovMX Webhook Archive",
            "version": "1.0.0",
            "description": "Receives ImprovMX inbound-email webhooks, archives every message in MongoDB and "
                           "serves the archive back. Every error is JSON {\"success\": false, \"error\": \"...\"}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "One of the operator keys in API_KEY, or a person's "
                                                          "own key (imxa_...): it sees only that person's mail, "
                                                          "and only what its scopes (read, write) allow."}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["success", "error"], "properties": {
                    "success": {"const": False}, "error": {"type": "string"}}},
                "Address": {"type": "object", "properties": {
                    "name": {"type": ["string", "null"]}, "email": {"type": "string"}}},
                "Part": {"type": "object", "properties": {
                    "type": {"type": "string"}, "name": {"type": "string"}, "content": {"type": "string"},
                    "cid": {"type": "string"}, "encoding": {"type": "string"}, "description": {"type": "string"}}},
                "WebhookResult": {"type": "object", "required": ["success", "email_id"], "properties": {
                    "success": {"const": True}, "message": {"type": "string"},
                    "email_id": {"type": "string"}, "duplicate": {"type": "boolean"},
                    "spooled": {"type": "boolean"},
                    "deleted": {"type": "boolean", "description": "A retry of a message deleted since: "
                                                                 "acknowledged, not stored again"}}},
                "ImportResult": {"type": "object", "required": ["success", "email_id", "duplicate"], "properties": {
                    "success": {"const": True}, "email_id": {"type": "string"}, "duplicate": {"type": "boolean"},
                    "received_at": {"type": "string", "format": "date-time"}, "message": {"type": "string"},
                    "deleted": {"type": "boolean"}}},
                "EmailSummary": {"type": "object", "required": ["id", "_id"], "additionalProperties": True,
                                 "properties": {"id": {"type": "string", "description": "The message id: "
                                                       "the preferred name"},
                                                "_id": {"type": "string", "description": "The same id under "
                                                        "the original guide's name, for scripts written "
                                                        "against it"},
                                                "snippet": {"type": "string"},
                                                "received_at": {"type": "string", "format": "date-time"},
                                                "processed": {"type": "boolean"},
                                                "attachments": {"type": "array", "items": {"type": "object"}}}},
            },
        },
        "paths": {
            "/": {"get": {
                "summary": "Health, with database, spool and search index details", "security": BEARER,
                "description": "search_index: {pending, oldest_pending_seconds}: messages not yet findable by q "
                               "and how long the oldest has waited (normally a few seconds at most).",
                "responses": {"200": {"description": "Healthy"}, **_error_responses(*AUTH_ERRORS, 503)}}},
            "/healthz": {"get": {"summary": "Liveness for systemd and load balancers (no bearer)", "security": [],
                                 "responses": {"200": {"description": "The process answers"}}}},
            "/readyz": {"get": {"summary": "Readiness: 503 while MongoDB is unreachable (no bearer)", "security": [],
                                "responses": {"200": {"description": "Ready"}, **_error_responses(503)}}},
            "/webhook": {"post": {**WEBHOOK_OPERATION, "security": []}},
            "/webhook/{secret}": {"post": {
                **WEBHOOK_OPERATION, "security": [],
                "summary": "Receive one email from ImprovMX (URL with WEBHOOK_SECRET)",
                "parameters": [_param("secret", "path", {"type": "string"}, "The WEBHOOK_SECRET value.")]}},
            "/emails": {"get": {
                "summary": "List and search messages, newest first", "security": BEARER,
                "description": SEARCH_DESCRIPTION,
                "parameters": LIST_PARAMETERS,
                "responses": {"200": {"description": "A page of summaries (no bodies, no attachment bytes)",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "properties": {
                                              "success": {"const": True}, "count": {"type": "integer"},
                                              "total": {"type": ["integer", "null"], "description":
                                                        "All matches (exact); null with count=false."},
                                              "next": {"type": ["string", "null"], "description":
                                                       "Cursor of the next page; null on the last page."},
                                              "emails": {"type": "array", "items": {
                                                  "$ref": "#/components/schemas/EmailSummary"}}}}}}},
                              **_error_responses(400, *AUTH_ERRORS)}}},
            "/emails/{email_id}": {
                "get": {"summary": "One whole message, with part metadata and download URLs", "security": BEARER,
                        "parameters": [EMAIL_ID],
                        "responses": {"200": {"description": "The message with its bodies and headers",
                                              "content": {"application/json": {"schema": {
                                                  "type": "object", "properties": {
                                                      "success": {"const": True},
                                                      "email": {"$ref": "#/components/schemas/EmailSummary"}}}}}},
                                      **_error_responses(*AUTH_ERRORS, 404)}},
                "patch": {"summary": "Mark a message processed or not, put it on hold or release it",
                          "description": "A message on hold is never deleted by retention or `flask purge`, "
                                         "and DELETE refuses it (409) until it is released.",
                          "security": BEARER, "parameters": [EMAIL_ID],
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "minProperties": 1, "additionalProperties": False,
                              "properties": {"processed": {"type": "boolean"}, "hold": {"type": "boolean"}}}}}},
                          "responses": {"200": {"description": "Updated", "content": {"application/json": {
                              "schema": {"type": "object", "properties": {
                                  "success": {"const": True}, "id": {"type": "string"},
                                  "processed": {"type": "boolean"},
                                  "processed_at": {"type": ["string", "null"], "format": "date-time"},
                                  "hold": {"type": "boolean"}}}}}},
                                        **_error_responses(400, *AUTH_ERRORS, 404)}},
                "delete": {"summary": "Delete a message and every attachment blob no other message uses",
                           "description": "The message's idempotency key is kept as a tombstone for "
                                          "DELETE_TOMBSTONE_DAYS, so a retried delivery or spool replay of it "
                                          "answers 200 with deleted=true and is not stored again.",
                           "security": BEARER, "parameters": [EMAIL_ID],
                           "responses": {"200": {"description": "Deleted", "content": {"application/json": {
                               "schema": {"type": "object", "required": ["success", "deleted"], "properties": {
                                   "success": {"const": True}, "id": {"type": "string"},
                                   "deleted": {"const": True}}}}}},
                                         "409": {"$ref": "#/components/responses/Error",
                                                 "description": "The message is on hold"},
                                         **_error_responses(*AUTH_ERRORS, 404)}},
            },
            "/emails/{email_id}/attachment/{name}": {"get": {
                "summary": "Download an attachment or inline by file name (or an inline's Content-ID)",
                "security": BEARER,
                "parameters": [EMAIL_ID, _param("name", "path", {"type": "string"}, "File name or Content-ID.")],
                "responses": DOWNLOAD_RESPONSES}},
            "/emails/{email_id}/attachments/{position}": {"get": {
                "summary": "Download a part by position (attachments first, then inlines; 0-based)",
                "security": BEARER,
                "parameters": [EMAIL_ID, _param("position", "path", {"type": "integer", "minimum": 0},
                                                "0-based position.")],
                "responses": DOWNLOAD_RESPONSES}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics of this host, summed over its workers",
                "description": "Bearer: METRICS_TOKEN when set, otherwise any API key (same lockout). "
                               "Archive-wide gauges are read from MongoDB at most every 30 s.",
                "security": BEARER,
                "responses": {"200": {"description": "Prometheus text exposition format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_error_responses(*AUTH_ERRORS)}}},
            **TRANSFER_PATHS,
            "/docs": {"get": {"summary": "This documentation as a web page", "security": [],
                              "responses": {"200": {"description": "HTML"}}}},
            "/openapi.json": {"get": {"summary": "This OpenAPI description", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1 JSON"}}}},
        },
    }
