"""`flask` commands for operators: check, create-indexes, reindex, send-sample, gc-blobs, spool,
export and import."""

from __future__ import annotations

import functools
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from pymongo import uri_parser
from pymongo.errors import ConnectionFailure, PyMongoError

from . import audience, blobrefs
from .access import audit
from .access.principal import Principal
from . import delivered
from .changes import note_change
from .access.commands import keys_cli, users_cli
from .archive import index_hint
from .db import DatabaseUnavailable, create_indexes, ping
from .deletion import DELETION_FIELDS, NOT_HELD
from .errors import ApiError
from .indexer import BATCH_SIZE, Reindex
from .listing import parse_filters
from .mailio import (
    MboxExport, NotAMessage, MessageSource, eml_filename, find_import_files, import_raw, oldest_first,
)
from .maintenance import collect_orphans
from .notify import masked
from .outbound.cli import COMMANDS as OUTBOUND_COMMANDS, EXIT_SMTP_FAILED, check_sending_line
from .sample import payload_from_mime, sample_mime
from .imap.cli import imap_cli

spool_cli = AppGroup("spool", help="Inspect and replay messages spooled during a MongoDB outage.")
notify_cli = AppGroup("notify", help="Notifications of new mail to NOTIFY_URL: backlog, failures, retries.")

EXIT_DATABASE_UNREACHABLE = 3
SPOOL_LISTED = 20


# Set by the development command (devtools/devserver.py): the database is the one ./dev.sh starts.
DEV_BOX_VARIABLE = "IMPROVMX_DEV_BOX"


def database_hint(settings) -> str:
    """What to look at when MongoDB does not answer, for where the command runs: on a dev box
    the embedded database ./dev.sh starts, on a server the database service (never the URI's
    credentials)."""
    if os.environ.get(DEV_BOX_VARIABLE):
        return "start the development server and its database with ./dev.sh (in another terminal), then run this again"
    try:
        hosts = [f"{host}:{port}" for host, port in uri_parser.parse_uri(settings.mongo_uri)["nodelist"]]
    except Exception:  # an SRV record or an odd URI: name no host rather than fail here
        hosts = []
    if hosts and all(host.split(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]") for host in hosts):
        return f"is MongoDB running on {hosts[0]}? see: sudo systemctl status mongod"
    where = ", ".join(hosts) or "the host in MONGO_URI"
    return f"is MongoDB at {where} up and reachable from here? on its host see: sudo systemctl status mongod"


def database_unreachable(settings) -> None:
    """The one-line error of a command that needs MongoDB and cannot reach it; exit 3."""
    options = getattr(current_app.extensions["mongo_client"], "options", None)
    waited = getattr(options, "server_selection_timeout", None)  # shortened for operator commands
    if not isinstance(waited, (int, float)):
        waited = settings.mongo_timeout_ms / 1000
    click.echo(f"error: MongoDB is not reachable within {waited * 1000:.0f} ms "
               f"({database_hint(settings)})", err=True)
    sys.exit(EXIT_DATABASE_UNREACHABLE)


def require_database() -> None:
    """Exit 3 with the one-line error unless MongoDB answers; a command whose app already
    found it down at start-up says so without waiting a second time."""
    if current_app.extensions.get("database_unreachable_at_start") or not ping(current_app.extensions["mongo_client"]):
        database_unreachable(current_app.config["SETTINGS"])


def needs_database(command):
    """The command needs MongoDB: down at the start or gone midway, it ends with the one-line
    error and exit status 3, never a traceback (a rerun continues: every command is safe to
    repeat)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        require_database()
        try:
            return command(*args, **kwargs)
        except (ConnectionFailure, DatabaseUnavailable):
            click.echo("", err=True)  # below a progress bar
            database_unreachable(current_app.config["SETTINGS"])
    return run


@click.command("check")
@with_appcontext
def check_command():
    """Configuration valid (it loaded) and MongoDB reachable; exit 0, or 3 if MongoDB is not;
    when sending is configured, the relay too (TLS, certificate, login): 4 if it fails."""
    settings = current_app.config["SETTINGS"]
    require_database()
    click.echo(f"ok: configuration valid, MongoDB reachable, database {settings.mongo_db!r}, "
               f"{len(settings.api_keys)} API key(s), spool at {settings.spool_dir}")
    sending_ok, sending_line = check_sending_line()
    click.echo(sending_line, err=not sending_ok)
    if not sending_ok:
        sys.exit(EXIT_SMTP_FAILED)


@click.command("create-indexes")
@with_appcontext
@needs_database
def create_indexes_command():
    """Create every index the app relies on (idempotent; also done at start-up), and give
    messages stored by older versions their blob_ids array and audience tags."""
    database = current_app.extensions["database"]
    create_indexes(database)
    current_app.extensions["people"].ensure_indexes()
    current_app.extensions["keys"].ensure_indexes()
    current_app.extensions["audit_trail"].ensure_indexes()
    pending = blobrefs.unmigrated_count(database.emails)
    migrated = tagged = 0
    if pending:
        with click.progressbar(length=pending, label="adding blob_ids to older messages") as bar:
            migrated = blobrefs.backfill(database.emails, progress=bar.update)
    untagged = audience.untagged_count(database.emails)
    if untagged:
        with click.progressbar(length=untagged, label="adding audience tags to older messages") as bar:
            tagged = audience.backfill(database.emails, progress=bar.update)
    click.echo(f"ok: indexes created; {migrated} message(s) given blob_ids, {tagged} given audience tags")
    missing = delivered.missing_count(database.emails)
    if missing:
        with click.progressbar(length=missing, label="adding delivered_to to older messages") as bar:
            given = delivered.backfill(database.emails, progress=bar.update)
        note_change(database)
        click.echo(f"ok: {given} message(s) given delivered_to (the UI's aliases)")


@click.command("reindex")
@with_appcontext
@click.option("--all", "everything", is_flag=True,
              help="Rebuild every message's search fields, not only those missing or made by older rules.")
@click.option("--restart", is_flag=True, help="Forget the position an interrupted run saved; start from the oldest.")
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(1, 10_000))
@needs_database
def reindex_command(everything: bool, restart: bool, batch_size: int):
    """Make messages stored before search existed searchable (safe while mail arrives;
    an interrupted run resumes where it stopped)."""
    archive = current_app.extensions["archive"]
    archive.ensure_indexes()
    job = Reindex(archive, everything=everything, restart=restart, batch_size=batch_size)
    if job.report.resumed_after is not None:
        click.echo(f"resuming after message {job.report.resumed_after} (--restart starts over)")
    with click.progressbar(length=job.remaining(), label="indexing for search") as bar:
        for covered in job.batches():
            bar.update(covered)
    click.echo(f"ok: indexed {job.report.indexed} message(s); {job.report.current} were already up to date")


@click.command("send-sample")
@click.option("--url", default="http://127.0.0.1:42010/webhook", show_default=True,
              help="The running server's webhook URL (include the secret segment if set).")
@click.option("--to", "recipient", default="inbox@example.com", show_default=True, help="Recipient address.")
def send_sample_command(url: str, recipient: str):
    """POST a realistic sample message (text, HTML, inline image, PDF) to a running server."""
    body = json.dumps(payload_from_mime(sample_mime(recipient=recipient))).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            click.echo(f"{response.status} {response.read().decode()}")
    except urllib.error.HTTPError as error:
        click.echo(f"{error.code} {error.read().decode()}", err=True)
        sys.exit(1)
    except OSError as error:
        click.echo(f"error: cannot reach {url}: {error}", err=True)
        sys.exit(1)


@click.command("gc-blobs")
@with_appcontext
@click.option("--grace-minutes", default=60, show_default=True, type=click.IntRange(min=1),
              help="Keep unreferenced blobs younger than this (an ingest may be in flight).")
@needs_database
def gc_blobs_command(grace_minutes: int):
    """Delete attachment blobs no message references and uploads cut short by a crash."""
    blobs, uploads = collect_orphans(current_app.extensions["archive"], timedelta(minutes=grace_minutes))
    click.echo(f"ok: removed {blobs} unreferenced blob(s) and {uploads} partial upload(s)")


def _size(count: float) -> str:
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000 or unit == "GB":
            break
    return f"{count:.1f} {unit}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@spool_cli.command("status")
@click.option("--all", "list_all", is_flag=True, help="List every waiting message, not just the oldest.")
def spool_status_command(list_all: bool):
    """Where mail that MongoDB could not take is waiting, and whether it can move on."""
    spool = current_app.extensions["spool"]
    settings = current_app.config["SETTINGS"]
    waiting = spool.messages()
    status = spool.status()
    writable = spool.writable()
    click.echo(f"spool directory: {spool.directory.resolve()} "
               f"({'writable' if writable else 'NOT WRITABLE: during an outage mail is refused with 503'})")
    click.echo(f"MongoDB: {'reachable' if ping(current_app.extensions['mongo_client']) else 'unreachable'}")
    if not waiting:
        click.echo("waiting: none; every acknowledged message is in MongoDB")
    else:
        now = datetime.now(timezone.utc)
        oldest = waiting[0].spooled_at
        click.echo(f"waiting: {len(waiting)} message(s), {_size(sum(m.size for m in waiting))}; "
                   f"oldest spooled {_iso(oldest)} ({_age((now - oldest).total_seconds())} ago)")
        shown = waiting if list_all else waiting[:SPOOL_LISTED]
        for message in shown:
            click.echo(f"  {message.email_id}  spooled {_iso(message.spooled_at)}  {_size(message.size):>10}  "
                       f"{message.path.resolve()}")
        if len(shown) < len(waiting):
            click.echo(f"  ... and {len(waiting) - len(shown)} more (--all lists every one)")
        click.echo("These were acknowledged to ImprovMX and are not in MongoDB yet. They move there "
                   f"automatically once it answers (each worker checks every ~{settings.spool_replay_interval:.0f} s), "
                   "or now with `improvmx-archive spool replay`.")
    click.echo(f"set aside as corrupt: {status['corrupt']} (in {spool.corrupt_dir.resolve()})")


@spool_cli.command("replay")
def spool_replay_command():
    """Move every spooled message into MongoDB now; exit 3 if MongoDB is still down, 1 if a
    message could not be stored for another reason (see the log)."""
    report = current_app.extensions["spool"].replay(current_app.extensions["archive"])
    click.echo(f"stored {len(report.stored)}, already stored {len(report.duplicates)}, "
               f"corrupt (set aside) {len(report.corrupt)}, failed {len(report.failed)}, "
               f"skipped (being replayed by a worker) {report.skipped}")
    if report.stopped_by_outage:
        click.echo("error: MongoDB is unavailable; the rest stays spooled", err=True)
        sys.exit(EXIT_DATABASE_UNREACHABLE)
    if report.failed:
        click.echo(f"error: {len(report.failed)} message(s) could not be stored and stay spooled", err=True)
        sys.exit(1)


@notify_cli.command("status")
@click.option("--all", "list_all", is_flag=True, help="List every failed notification, not just the latest.")
@needs_database
def notify_status_command(list_all: bool):
    """Receivers, the backlog and notifications given up after NOTIFY_MAX_HOURS; exit 1 if any failed."""
    outbox = current_app.extensions["outbox"]
    click.echo(f"receivers: {len(outbox.urls) or 'none (NOTIFY_URL is not set)'}")
    for url in outbox.urls:
        click.echo(f"  {masked(url)}")
    counts = outbox.counts()
    click.echo(f"not yet queued: {counts['unsent']}; queued or retrying: {counts['pending']}; "
               f"failed for good: {counts['failed']}")
    for row in outbox.backlog():
        oldest = f", oldest queued {_iso(row['oldest'])}" if row.get("oldest") else ""
        click.echo(f"  {row['receiver']}: {row['status']} {row['count']}{oldest}")
    orphaned = outbox.orphaned()
    if orphaned:
        click.echo(f"for receivers no longer in NOTIFY_URL (never sent, not counted above): {orphaned}")
    failed = outbox.failed(None if list_all else SPOOL_LISTED)
    for item in failed:
        click.echo(f"  failed {item['_id']}  {item['receiver']}  attempts {item['attempts']}  "
                   f"last {item.get('last_result', '-')} at {_iso(item['last_attempt_at'])}")
    if counts["failed"] > len(failed):
        click.echo(f"  ... and {counts['failed'] - len(failed)} more (--all lists them)")
    if counts["failed"]:
        click.echo("`improvmx-archive notify retry` gives failed notifications another NOTIFY_MAX_HOURS", err=True)
        sys.exit(1)


@notify_cli.command("retry")
@needs_database
def notify_retry_command():
    """Queue every failed notification again, with a fresh NOTIFY_MAX_HOURS to succeed."""
    click.echo(f"ok: {current_app.extensions['outbox'].retry_failed()} failed notification(s) queued again")


def _export_query(filters: dict[str, str | None]) -> dict:
    """The MongoDB filter GET /emails applies for the same parameters (q included)."""
    args = {name: value for name, value in filters.items() if value is not None}
    try:
        return current_app.extensions["archive"].filter_for(parse_filters(args))
    except ApiError as error:
        raise click.UsageError(error.message) from None


def _write_atomically(path: Path, chunks) -> None:
    """Write to a temporary file next to path and rename it into place: an interrupted run
    never leaves a truncated file under the final name."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@click.command("export")
@with_appcontext
@click.option("--format", "output_format", type=click.Choice(["mbox", "eml"]), default="mbox", show_default=True,
              help="One mbox file, or a directory of <received_at>-<id>.eml files.")
@click.option("--q", help="A search, as GET /emails?q= (e.g. 'from:ann has:attachment invoice').")
@click.option("--from-email", help="Sender address, as GET /emails?from_email=.")
@click.option("--to", help="Recipient address, as GET /emails?to=.")
@click.option("--subject", help="Substring of the subject, as GET /emails?subject=.")
@click.option("--since", help="Received at or after (ISO 8601).")
@click.option("--until", help="Received at or before (ISO 8601).")
@click.option("--processed", type=click.Choice(["true", "false"]), help="Only processed (true) or unprocessed.")
@click.option("--has-attachments", type=click.Choice(["true", "false"]), help="Only with (true) or without.")
@click.argument("output", type=click.Path(path_type=Path))
@needs_database
def export_command(output_format: str, output: Path, **filters: str | None):
    """Write every matching message, oldest first, rebuilt as MIME, to OUTPUT.

    mbox: written to a hidden temporary file and renamed when complete, so a re-run simply
    replaces it. eml: existing files are skipped, so an interrupted run resumes where it stopped.
    A message that cannot be rebuilt is listed, counted as failed and makes the exit status 1
    (an mbox then ends with a marker message naming it); the rest are exported.
    """
    archive = current_app.extensions["archive"]
    query = _export_query(filters)
    hint = index_hint(query)
    total = archive.emails.count_documents(query, **({"hint": hint} if hint else {}))
    skipped = 0
    failures: list[tuple[str, str]] = []

    with click.progressbar(length=total, label=f"exporting {total} message(s)") as bar:
        if output_format == "mbox":
            export = MboxExport(archive, query, progress=bar.update)
            _write_atomically(output, export)
            written, failures = export.written, export.missing
        else:
            output.mkdir(parents=True, exist_ok=True)
            written = 0
            for document in oldest_first(archive, query):
                bar.update(1)
                target = output / eml_filename(document)
                if target.exists():
                    skipped += 1
                    continue
                try:  # one message that cannot be rebuilt (or read) must not stop the rest
                    _write_atomically(target, MessageSource(archive, document).chunks(b"\r\n"))
                except (DatabaseUnavailable, OSError):
                    raise
                except Exception as error:
                    failures.append((str(document["_id"]), f"cannot be rebuilt ({type(error).__name__})"))
                    continue
                written += 1
    for email_id, why in failures:
        click.echo(f"  failed {email_id}: {why}", err=True)
    click.echo(f"exported {written} message(s) to {output}"
               + (f", skipped {skipped} already there" if output_format == "eml" else "")
               + f", failed {len(failures)}")
    if failures:
        click.echo(f"error: {len(failures)} message(s) are not in the export"
                   + (f" ({output} ends with a marker message naming them)" if output_format == "mbox" else "")
                   + "; they are still in the archive", err=True)
        sys.exit(1)


@click.command("import")
@with_appcontext
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def import_command(paths: tuple[Path, ...]):
    """Import .eml files, directories of them (recursively) and mbox files (mboxrd or mboxo).

    Each message is stored once however often it is imported; its date is its top Received:
    header's (else Date:). Files that are not mail (a README.md beside the messages) are
    skipped and listed. Exit 1 if any message failed, 3 if MongoDB went away (re-run to
    continue: what is already in is recognised as a duplicate).
    """
    require_database()  # a database lost midway is reported per message below, with the count so far
    archive = current_app.extensions["archive"]
    files, failed = find_import_files(paths)
    skipped: list[tuple[str, str]] = []
    stored = duplicates = deleted = 0
    with click.progressbar(length=sum(file.count for file in files), label="importing") as bar:
        for file in files:
            try:
                for label, raw in file.messages():
                    bar.update(1)
                    try:
                        result, _ = import_raw(archive, raw)
                    except NotAMessage as error:
                        (skipped if file.skipped_unless_mail else failed).append((label, str(error)))
                        continue
                    except DatabaseUnavailable:
                        click.echo(f"\nerror: MongoDB is unavailable (at {label}); stored {stored} so far. "
                                   f"Re-run the same command to continue ({database_hint(current_app.config['SETTINGS'])})",
                                   err=True)
                        sys.exit(EXIT_DATABASE_UNREACHABLE)
                    except Exception as error:  # one broken message never stops the rest
                        failed.append((label, f"cannot be stored ({type(error).__name__})"))
                        continue
                    duplicates += result.duplicate
                    deleted += result.deleted  # deleted within DELETE_TOMBSTONE_DAYS: not stored again
                    stored += not (result.duplicate or result.deleted)
            except OSError as error:
                failed.append((str(file.path), f"cannot read ({error.strerror or type(error).__name__})"))
    _record_cli("import", count=stored, details={"duplicates": duplicates, "failed": len(failed), "deleted": deleted,
                                                 "paths": [str(path)[:200] for path in paths[:20]]})
    tombstoned = f", deleted earlier so not stored {deleted}" if deleted else ""
    not_mail = f", skipped {len(skipped)} file(s) that are not mail" if skipped else ""
    click.echo(f"stored {stored}, duplicate {duplicates}, failed {len(failed)}{tombstoned}{not_mail}")
    for label, reason in skipped:
        click.echo(f"  skipped {label}: {reason}")
    for label, reason in failed:
        click.echo(f"  failed {label}: {reason}", err=True)
    if failed:
        sys.exit(1)


PURGE_BATCH = 200
PURGE_PREVIEW = 20


def _purge_line(document: dict) -> str:
    subject = document.get("subject")
    subject = subject if isinstance(subject, str) else ""
    return (f"{document['_id']}  {_iso(document['received_at'])}  {document.get('from_email') or '-'}  "
            f"{subject[:80]}")


def _purge_query(archive, before: datetime | None, q: str | None) -> dict:
    """What purge deletes: the listing's `q` filter (as GET /emails?q=) and/or received before."""
    query: dict = {}
    if q:
        try:
            query = dict(archive.filter_for(parse_filters({"q": q})))
        except ApiError as error:
            raise click.UsageError(f"--q: {error.message}") from None
    if before:
        bound = {"received_at": {"$lt": before.replace(tzinfo=timezone.utc)}}
        if "received_at" in query:
            query["$and"] = [*query.get("$and", []), bound]
        else:
            query.update(bound)
    return query


@click.command("purge")
@with_appcontext
@click.option("--before", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Only messages received before this date (UTC), e.g. 2025-01-01.")
@click.option("--q", "q", help="Only messages a search finds, in GET /emails?q= syntax, e.g. 'from:news@example.com'.")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted (also the default without --yes).")
@click.option("--yes", is_flag=True, help="Really delete.")
@needs_database
def purge_command(before: datetime | None, q: str | None, dry_run: bool, yes: bool):
    """Delete messages in bulk, with their unshared attachments; never messages on hold.

    In batches, oldest first; interrupted, it is resumed by running it again. Each deleted
    message's key is kept as a tombstone (DELETE_TOMBSTONE_DAYS), so a retry or replay of it
    is not stored again. Without --yes it only reports. --q finds what the search index
    holds: messages stored within the last moments may not be indexed yet.
    """
    if before is None and not q:
        raise click.UsageError("give --before DATE and/or --q QUERY (purging everything at once is not offered)")
    archive = current_app.extensions["archive"]
    query = _purge_query(archive, before, q)
    matching = {**query, **NOT_HELD}
    total = archive.emails.count_documents(matching)
    held = archive.emails.count_documents({**query, "hold": True})
    click.echo(f"{total} message(s) to delete; {held} on hold kept")
    if dry_run or not yes:
        for document in archive.emails.find(matching, DELETION_FIELDS).sort("received_at", 1).limit(PURGE_PREVIEW):
            click.echo(f"  would delete {_purge_line(document)}")
        if total > PURGE_PREVIEW:
            click.echo(f"  ... and {total - PURGE_PREVIEW} more")
        click.echo("dry run: nothing deleted (add --yes to delete)")
        return
    deleted = 0
    with click.progressbar(length=total, label="deleting", file=sys.stderr) as bar:
        while batch := list(archive.emails.find(matching, DELETION_FIELDS).sort("received_at", 1).limit(PURGE_BATCH)):
            removed = set(archive.deleter.delete_documents(batch))
            _record_cli("purge", email_ids=[str(i) for i in removed], count=len(removed),
                        details={"before": _iso(before.replace(tzinfo=timezone.utc)) if before else None, "q": q})
            for document in batch:
                if document["_id"] in removed:
                    click.echo(f"deleted {_purge_line(document)}")
            deleted += len(removed)
            bar.update(len(batch))
    click.echo(f"ok: deleted {deleted} message(s); {held} on hold kept")


def register_commands(app: Flask) -> None:
    for command in (check_command, create_indexes_command, reindex_command, send_sample_command, gc_blobs_command,
                    spool_cli, notify_cli, export_command, import_command, purge_command):
        app.cli.add_command(command)
    app.cli.add_command(imap_cli)  # the IMAP view's commands (imap/cli.py)
    register_access_commands(app)
    app.cli.add_command(audit_cli)
    for command in OUTBOUND_COMMANDS:
        app.cli.add_command(command)


# --- the audit trail (access/audit.py) ---------------------------------------------------------

audit_cli = AppGroup("audit", help="The tamper-evident audit trail: verify its chain, trim old entries.")


def _record_cli(action: str, **fields) -> None:
    """An audit entry for an operator command (the CLI actor). Without MongoDB the command
    itself has already failed; a failure here is reported, not hidden."""
    try:
        audit.record(action, principal=Principal.operator(via="cli"), **fields)
    except audit.AuditUnavailable:
        click.echo(f"error: the audit entry for this {action} could not be written (MongoDB unavailable)", err=True)
        sys.exit(EXIT_DATABASE_UNREACHABLE)


def _anchor(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise click.BadParameter(f"{value!r} is not SEQ:HASH as `improvmx-archive audit verify` prints the head")
    return int(seq), digest.lower()


@audit_cli.command("verify")
@with_appcontext
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH",
              help="An entry noted earlier (the head verify printed); checks it was not rewritten. Repeatable.")
def audit_verify_command(anchors: tuple[str, ...]):
    """Check the whole chain; exit 1 naming the first entry edited, removed or reordered."""
    trail = current_app.extensions["audit_trail"]
    wanted = [_anchor(value) for value in anchors]
    try:
        total = trail.entries.estimated_document_count()
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            report = trail.verify(progress=bar.update, anchors=wanted)
    except PyMongoError as error:
        click.echo(f"error: MongoDB is unavailable ({type(error).__name__})", err=True)
        sys.exit(EXIT_DATABASE_UNREACHABLE)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.awaiting_trim:
        click.echo(f"{report.awaiting_trim} entr{'y' if report.awaiting_trim == 1 else 'ies'} below the trim "
                   "record await deletion (an interrupted trim); not checked")
    if not report.ok:
        click.echo(f"FAILED after {report.checked} good entr{'y' if report.checked == 1 else 'ies'}: "
                   f"{report.problem}", err=True)
        sys.exit(1)
    span = f"entries {report.first} to {report.last}" if report.checked else "no entries"
    click.echo(f"ok: {report.checked} entr{'y' if report.checked == 1 else 'ies'} verified ({span})")
    if report.head:
        click.echo(f"head: {report.head['seq']}:{report.head['hash']}  (note it elsewhere; "
                   "check it later with --anchor)")


@audit_cli.command("trim")
@with_appcontext
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Remove entries older than this many days (default AUDIT_RETENTION_DAYS).")
def audit_trim_command(days: float | None):
    """Remove the oldest entries (older than AUDIT_RETENTION_DAYS); what remains still verifies."""
    days = days or current_app.config["SETTINGS"].audit_retention_days
    if not days:
        raise click.UsageError("AUDIT_RETENTION_DAYS is 0 (keep forever); give --days to trim anyway")
    trail = current_app.extensions["audit_trail"]
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    try:
        with click.progressbar(length=trail.entries.estimated_document_count(), label="checking",
                               file=sys.stderr) as bar:
            removed = trail.trim(cutoff, progress=bar.update)
    except audit.TrimRefused as refused:
        click.echo(f"refused: {refused}; nothing was trimmed", err=True)
        sys.exit(1)
    except PyMongoError as error:
        click.echo(f"error: MongoDB is unavailable ({type(error).__name__})", err=True)
        sys.exit(EXIT_DATABASE_UNREACHABLE)
    click.echo(f"ok: removed {removed} entr{'y' if removed == 1 else 'ies'} older than {days:g} day(s)")


def register_access_commands(app: Flask) -> None:
    """`flask users ...` and `flask keys ...` (access/commands.py)."""
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)
    for group in (users_cli, keys_cli):
        for command in group.commands.values():
            if not getattr(command.callback, "database_errors_in_one_line", False):
                command.callback = _database_errors_in_one_line(command.callback)


def _database_errors_in_one_line(callback):
    """A command's callback (already in the app context): MongoDB gone is the one-line error
    and exit 3, as for every other operator command, not a traceback."""
    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except (ConnectionFailure, DatabaseUnavailable):
            database_unreachable(current_app.config["SETTINGS"])
    run.database_errors_in_one_line = True
    return run
