"""Seeding the query benchmark: up to 100,000 stored messages, quickly, in the app's own shape.

Each message goes through the archive's real ingest code in-process (normalise, part
decoding and hashing, idempotency key, GridFS, document builder), from several processes;
only the final insert is batched (insert_many of the documents ingest built) and
`received_at` / `processed` are spread as a year of real traffic would have them. The naive
system's database gets the same payloads exactly as the naive receiver stores them
(the parsed payload plus `received_at`).

Payloads are ImprovMX-shaped: a few hundred small template messages are built from MIME by
mailparse; each seeded message takes one and gets its own sender, recipients, subject,
Message-ID and date, drawn from skewed (Zipf-like) distributions so filters have realistic
selectivity.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import random
import tempfile
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from .corpus import ALIASES, DOMAIN, KB, WORDS, add, base_message, payload_from_mime, random_attachment

TEMPLATES = 300
SENDERS = 2000
YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)
SUBJECTS = (
    "Invoice {n} from {company}", "Re: {words}", "Your order {n} has shipped", "Weekly digest: {words}",
    "Meeting notes {words}", "Fwd: {words}", "{words}", "Password reset for {company}",
    "Quarterly report {words}", "Welcome to {company}", "{words} - action required", "Re: Re: {words}",
)
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Soylent")
PROCESSED_SHARE = 0.3

# The filter values the query figure uses; the seeding distributions give them these shares.
TOP_ALIAS = f"{ALIASES[0]}@{DOMAIN}"
SUBJECT_WORD = "invoice"  # 1 subject template in 12 starts with it (~8% of messages)
WINDOW = ("2025-05-01T00:00:00Z", "2025-07-01T00:00:00Z")  # ~17% of a year


def _zipf_weights(count: int, exponent: float) -> list[float]:
    weights, total = [], 0.0
    for rank in range(count):
        total += 1.0 / (rank + 1) ** exponent
        weights.append(total)
    return weights


_SENDER_CUM = _zipf_weights(SENDERS, 1.1)  # top sender ~17% of mail
_ALIAS_CUM = _zipf_weights(len(ALIASES), 1.0)  # top alias ~34%


def sender(k: int) -> str:
    return f"user{k}@sender{k % 40}.example.com"


TOP_SENDER = sender(0)


def templates(seed: int) -> list[dict]:
    """Small MIME messages (1-6 KB text, some HTML, 10% with a small attachment) via mailparse."""
    out = []
    for index in range(TEMPLATES):
        rng = random.Random(f"{seed}:query-template:{index}")
        msg = base_message(rng, f"t{index}", rng.randint(1 * KB, 6 * KB))
        if rng.random() < 0.1:
            add(msg, random_attachment(rng, rng.randint(2 * KB, 30 * KB), f"doc-{index}"))
        out.append(payload_from_mime(msg.as_bytes()))
    return out


def seeded_payload(seed: int, index: int, pool: list[dict]) -> tuple[dict, datetime, bool]:
    """Message `index` of the query set: its payload, its received_at and its processed flag."""
    rng = random.Random(f"{seed}:query:{index}")
    payload = copy.copy(pool[rng.randrange(len(pool))])
    k = rng.choices(range(SENDERS), cum_weights=_SENDER_CUM)[0]
    address = sender(k)
    recipients = {ALIASES[rng.choices(range(len(ALIASES)), cum_weights=_ALIAS_CUM)[0]]
                  for _ in range(rng.choice((1, 1, 1, 2)))}
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
    subject = rng.choice(SUBJECTS).format(n=rng.randint(1000, 99999), company=rng.choice(COMPANIES), words=words)
    received = YEAR_START + timedelta(seconds=rng.randint(0, 365 * 86400 - 1))
    sent = received - timedelta(seconds=rng.randint(1, 600))
    payload.update({
        "from": {"name": f"User {k}", "email": address},
        "to": [{"name": alias.capitalize(), "email": f"{alias}@{DOMAIN}"} for alias in sorted(recipients)],
        "subject": subject,
        "message-id": f"<q{index}.{rng.getrandbits(48):x}@sender{k % 40}.example.com>",
        "date": format_datetime(sent),
        "timestamp": int(sent.timestamp()),
    })
    return payload, received, rng.random() < PROCESSED_SHARE


class _BatchedInsert:
    """Stands in for the archive's durable `emails` collection during seeding: takes the
    document ingest built, dates it, and inserts documents in batches."""

    def __init__(self, collection, batch: int = 500):
        self.collection, self.batch, self.pending = collection, batch, []
        self.received_at: datetime | None = None
        self.processed = False

    def insert_one(self, document: dict) -> None:
        document["received_at"] = self.received_at
        document["processed"] = self.processed
        if self.processed:
            document["processed_at"] = self.received_at + timedelta(hours=1)
        self.pending.append(document)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.collection.insert_many(self.pending, ordered=False)
            self.pending = []


def _seed_range(job: dict) -> int:
    """One seeding process: messages [start, stop) into both systems' databases."""
    from pymongo import MongoClient

    spool = tempfile.mkdtemp(prefix="bench-seed-spool-")
    os.environ.update({
        "MONGO_URI": job["uri"], "MONGO_DB": job["ours_db"], "API_KEY": job["api_key"],
        "RATELIMIT_ENABLED": "false", "SPOOL_DIR": spool, "LOG_LEVEL": "WARNING",
    })
    from improvmx_archive import create_app

    app = create_app()
    archive = app.extensions["archive"]
    batched = _BatchedInsert(archive.emails)
    archive.durable_emails = batched  # only the final insert is batched; all else is ingest's
    naive = MongoClient(job["uri"])[job["naive_db"]]["emails"] if job.get("naive_db") else None
    naive_pending: list[dict] = []
    pool = json.loads(Path(job["templates"]).read_text())
    for index in range(job["start"], job["stop"]):
        payload, received, processed = seeded_payload(job["seed"], index, pool)
        batched.received_at, batched.processed = received, processed
        if naive is not None:
            stored = copy.deepcopy(payload)
            stored["received_at"] = received
            if processed:
                stored["processed"] = True
            naive_pending.append(stored)
            if len(naive_pending) >= 500:
                naive.insert_many(naive_pending, ordered=False)
                naive_pending = []
        result = archive.ingest(payload)
        if result.duplicate:
            raise RuntimeError(f"seed message {index} was a duplicate")
    batched.flush()
    if naive_pending:
        naive.insert_many(naive_pending, ordered=False)
    return job["stop"] - job["start"]


def seed(uri: str, ours_db: str, naive_db: str | None, api_key: str, seed_value: int,
         start: int, stop: int, workdir: Path, processes: int = 2) -> None:
    """Seed messages [start, stop) using `processes` worker processes."""
    if stop <= start:
        return
    template_path = workdir / f"query-templates-{seed_value}.json"
    if not template_path.exists():
        template_path.write_text(json.dumps(templates(seed_value)))
    step = -(-(stop - start) // processes)
    jobs = [{"uri": uri, "ours_db": ours_db, "naive_db": naive_db, "api_key": api_key,
             "seed": seed_value, "templates": str(template_path),
             "start": lo, "stop": min(lo + step, stop)} for lo in range(start, stop, step)]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        pool.map(_seed_range, jobs)


def _plan_summary(node: dict | None) -> str:
    """'LIMIT > FETCH > IXSCAN newest_first' from a winning plan."""
    chain = []
    while isinstance(node, dict) and node:
        stage = node.get("stage", "?")
        if node.get("indexName"):
            stage += f" {node['indexName']}"
        chain.append(stage)
        if "inputStage" in node:
            node = node["inputStage"]
        elif node.get("inputStages"):
            chain.append("(" + " | ".join(_plan_summary(child) for child in node["inputStages"]) + ")")
            break
        else:
            break
    return " > ".join(chain)


def _explain_job(job: dict) -> dict:
    import importlib

    from pymongo import DESCENDING

    os.environ.update({
        "MONGO_URI": job["uri"], "MONGO_DB": job["db"], "API_KEY": job["api_key"],
        "RATELIMIT_ENABLED": "false", "SPOOL_DIR": tempfile.mkdtemp(prefix="bench-explain-"),
        "LOG_LEVEL": "WARNING",
    })
    from improvmx_archive import create_app
    from improvmx_archive.archive import SUMMARY_EXCLUDE
    from improvmx_archive.listing import parse_filters

    app = create_app()
    archive = app.extensions["archive"]
    emails = archive.emails
    hint_for = getattr(importlib.import_module("improvmx_archive.archive"), "index_hint", lambda query: None)
    out = {}
    for name, params in job["cases"]:
        query = archive.filter_for(parse_filters(params))
        skip, limit = int(params.get("skip", 0)), int(params.get("limit", 10))
        if hasattr(archive, "page_cursor"):  # exactly the cursor the route iterates
            cursor = archive.page_cursor(query, skip, limit)
        else:
            cursor = (emails.find(query, SUMMARY_EXCLUDE)
                      .sort([("received_at", DESCENDING), ("_id", DESCENDING)]).skip(skip).limit(limit))
        plan = cursor.explain()
        stats = plan.get("executionStats") or {}
        hint = hint_for(query)
        entry = {
            "filter": json.loads(json.dumps(query, default=str)),
            "hint": hint,
            "plan": _plan_summary((plan.get("queryPlanner") or {}).get("winningPlan")),
            "keys_examined": stats.get("totalKeysExamined"), "docs_examined": stats.get("totalDocsExamined"),
            "returned": stats.get("nReturned"), "server_ms": stats.get("executionTimeMillis"),
        }
        if query:  # the route counts matches with count_documents (an aggregate $match/$group)
            try:
                command = {"aggregate": "emails", "pipeline": [{"$match": query},
                                                               {"$group": {"_id": 1, "n": {"$sum": 1}}}],
                           "cursor": {}}
                if hint:
                    command["hint"] = hint
                counted = emails.database.command("explain", command, verbosity="executionStats")
                stages = counted.get("stages") or []
                first = stages[0].get("$cursor", {}) if stages else counted
                count_plan = (first.get("queryPlanner") or {}).get("winningPlan")
                entry["count_plan"] = _plan_summary(count_plan) if count_plan else "n/a"
            except Exception as error:  # noqa: BLE001 - not every server explains aggregates
                entry["count_plan"] = f"n/a ({type(error).__name__})"
        else:
            entry["count_plan"] = "estimated_document_count (count command)"
        out[name] = entry
    return out


def explain(uri: str, db: str, api_key: str, cases: list[tuple[str, dict]], workdir: Path) -> dict:
    """explain() of the exact query the list route runs (the app's own parse_filters)."""
    job = {"uri": uri, "db": db, "api_key": api_key, "cases": cases}
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_explain_job, (job,))
