"""The seed's original receiver: the original guide's simple Flask app, as an operator copies it.

Unlike ``naive_app`` (the same storage model, rewritten to read the body once with
``json.loads``), this is the guide's code path itself: ``request.get_json()``, a
``received_at`` from ``datetime.utcnow()``, one ``insert_one`` of the whole payload (base64
attachments included) with the client's default write concern, ``jsonify`` answers, and a
list route returning whole documents. No auth, no validation, no index beyond ``_id``.
It is what issue 19's "original receiver" figures (CPU per message, worker memory) compare
the archive against. Served as ``gunicorn bench.original_app:app`` with the repository's
gunicorn.conf.py; reads ``MONGO_URI`` / ``MONGO_DB`` like the other systems.
"""

from __future__ import annotations

import os
from datetime import datetime

from flask import Flask, jsonify, request
from pymongo import DESCENDING, MongoClient

app = Flask(__name__)
client = MongoClient(os.environ.get("MONGO_URI", "mongodb://localhost:27017/"))
collection = client[os.environ.get("MONGO_DB", "improvmx")]["emails"]


@app.route("/webhook", methods=["POST"])
def webhook():
    try:
        data = request.get_json()
        if not data:
            return jsonify({"success": False, "error": "No data received"}), 400
        data["received_at"] = datetime.utcnow()
        result = collection.insert_one(data)
        return jsonify({"success": True, "message": "Email received and stored",
                        "email_id": str(result.inserted_id)}), 200
    except Exception as error:  # the guide's catch-all: log-free 500 with the error text
        return jsonify({"success": False, "error": str(error)}), 500


@app.route("/emails", methods=["GET"])
def get_emails():
    limit = int(request.args.get("limit", 50))
    emails = []
    for email in collection.find().sort("received_at", DESCENDING).limit(limit):
        email["_id"] = str(email["_id"])
        emails.append(email)
    return jsonify({"success": True, "count": len(emails), "emails": emails})
