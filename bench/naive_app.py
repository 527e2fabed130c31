"""The two reference receivers the benchmark compares the archive against.

* ``naive_app``: what an operator following the original guide would run. The webhook
  ``json.loads`` the body and ``insert_one``s it whole (base64 attachments included) with a
  ``received_at``; the list route returns whole documents; the attachment route base64-decodes
  the part out of the stored document. No auth, no validation, no indexes beyond ``_id``.
* ``ceiling_app``: parses the JSON and answers 200 without storing anything: the most any
  receiver can do through this gunicorn, this client and this machine.

Both are served by gunicorn with the same settings as the archive
(``gunicorn 'bench.naive_app:create_naive_app()'`` / ``'bench.naive_app:create_ceiling_app()'``) and read the same
``MONGO_URI`` / ``MONGO_DB`` environment variables.
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime, timezone

from bson import ObjectId
from flask import Flask, Response, request
from pymongo import DESCENDING, MongoClient


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status=status, mimetype="application/json")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def create_naive_app() -> Flask:
    app = Flask("naive_receiver")
    client = MongoClient(os.environ["MONGO_URI"])
    emails = client[os.environ.get("MONGO_DB", "naive")]["emails"]

    @app.post("/webhook")
    def webhook():
        payload = json.loads(request.get_data())
        payload["received_at"] = datetime.now(timezone.utc)
        try:
            result = emails.insert_one(payload)
        except Exception as exc:  # what the guide does: log and answer 500
            return _json({"success": False, "error": str(exc)[:200]}, 500)
        return _json({"success": True, "message": "Email received and stored",
                      "email_id": str(result.inserted_id)})

    @app.get("/emails")
    def list_emails():
        args = request.args
        query: dict = {}
        if "from_email" in args:
            query["from.email"] = args["from_email"]
        if "to" in args:
            query["to.email"] = args["to"]
        if "subject" in args:
            query["subject"] = {"$regex": re.escape(args["subject"]), "$options": "i"}
        if "since" in args or "until" in args:
            window = {}
            if "since" in args:
                window["$gte"] = _parse_time(args["since"])
            if "until" in args:
                window["$lt"] = _parse_time(args["until"])
            query["received_at"] = window
        if "processed" in args:
            wanted = args["processed"].lower() == "true"
            query["processed"] = True if wanted else {"$ne": True}
        limit = min(int(args.get("limit", 50)), 100)
        skip = int(args.get("skip", 0))
        docs = list(emails.find(query).sort("received_at", DESCENDING).skip(skip).limit(limit))
        return _json({"success": True, "count": len(docs), "emails": docs})

    @app.get("/emails/<email_id>/attachments/<int:index>")
    def attachment(email_id: str, index: int):
        doc = emails.find_one({"_id": ObjectId(email_id)})
        if doc is None or index >= len(doc.get("attachments") or []):
            return _json({"success": False, "error": "not found"}, 404)
        part = doc["attachments"][index]
        return Response(base64.b64decode(part["content"]), mimetype=part.get("type") or "application/octet-stream")

    return app


def create_ceiling_app() -> Flask:
    app = Flask("ceiling_receiver")

    @app.post("/webhook")
    def webhook():
        json.loads(request.get_data())
        return _json({"success": True, "message": "Email received and stored"})

    return app

