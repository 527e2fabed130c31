"""Operator commands for sending: `flask outbox status|retry|cancel`, `flask send-test`, and the
SMTP part of `flask check`."""

from __future__ import annotations

import smtplib
import ssl
import sys
from datetime import datetime, timezone

import click
from bson import ObjectId
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from ..access.principal import CLI_ACTOR
from ..config import SendingSettings
from ..times import api_time
from . import smtp
from .compose import Draft, SendRefused, build, valid_address
from .outbox import CANCELLABLE, RETRYABLE, STATES, SendOutbox
from .service import audited

EXIT_SMTP_FAILED = 4
outbox_cli = AppGroup("outbox", help="The send outbox: status, retry and cancel.")


def check_relay(settings: SendingSettings, login_address: str | None = None) -> str | None:
    """Connect, encrypt (verifying the certificate) and log in; None when all worked, else why not.
    Never shows a password."""
    login = settings.login_for(login_address) if login_address else settings.login or next(
        iter(settings.logins.values()), None)
    try:
        client = smtp.open_session(settings, login)
    except smtplib.SMTPAuthenticationError as error:
        return f"login refused for {login.username if login else '?'} ({error.smtp_code})"
    except ssl.SSLCertVerificationError as error:
        return f"the certificate of {settings.host} was not accepted ({error.verify_message})"
    except (smtplib.SMTPException, OSError) as error:
        return f"{settings.host}:{settings.port} not usable ({type(error).__name__}: {error})"
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
    return None


def check_sending_line() -> tuple[bool, str]:
    """For `flask check`: (ok, one line) about sending."""
    settings = current_app.config["SETTINGS"]
    sending = settings.sending
    if not sending.enabled:
        return True, "sending: off (set SMTP_USERNAME and SMTP_PASSWORD to send through ImprovMX)"
    if not settings.domains:
        return False, "error: sending is configured but DOMINIO is empty: no alias may send"
    problem = check_relay(sending)
    if problem:
        return False, f"error: sending: {problem}"
    return True, (f"sending: {sending.host}:{sending.port} ({sending.security}, certificate verified, login ok), "
                  f"limit {sending.daily_limit} a day")


def _outbox() -> SendOutbox:
    return current_app.extensions["send_outbox"]


def _line(item) -> str:
    created = api_time(item["created_at"]) if item.get("created_at") else "?"
    reply = f" — {item['last_reply']}" if item.get("last_reply") else ""
    return (f"  {item['_id']}  {item['status']:<9} {created}  {item.get('sender')} -> "
            f"{len(item.get('recipients') or [])} recipient(s)  attempts {item.get('attempts', 0)}{reply}")


@outbox_cli.command("status")
@click.option("--all", "list_all", is_flag=True, help="List every send, not only those needing attention.")
def outbox_status_command(list_all: bool):
    """Sends by state, today's count against SEND_DAILY_LIMIT, and the sends that need a person
    (failed, unknown) or are still waiting."""
    outbox = _outbox()
    counts = outbox.counts()
    settings = current_app.config["SETTINGS"].sending
    click.echo("sends: " + ", ".join(f"{counts[state]} {state}" for state in STATES))
    click.echo(f"today (UTC): {outbox.used_today()} of {settings.daily_limit}; sending "
               f"{'on' if settings.enabled else 'off'}")
    wanted = None if list_all else {"$in": ["failed", "unknown", "queued", "retrying", "sending"]}
    query = {"status": wanted} if wanted else {}
    for item in outbox.sends.find(query, {"raw": 0}).sort("created_at", -1).limit(200):
        click.echo(_line(item))
    if counts["unknown"]:
        click.echo(f"{counts['unknown']} send(s) are unknown: the relay may have them. Check with the recipient, "
                   "then `flask outbox retry ID` or `flask outbox cancel ID`.")


def _send_id(value: str) -> ObjectId:
    if not ObjectId.is_valid(value):
        raise click.BadParameter("not a send id (24 hex characters)")
    return ObjectId(value)


@outbox_cli.command("retry")
@click.argument("send_id")
def outbox_retry_command(send_id: str):
    """Send a failed or unknown send again now (an unknown one may then arrive twice)."""
    item = _outbox().retry(_send_id(send_id), {}, CLI_ACTOR.actor())
    if item is None:
        click.echo(f"error: no send {send_id} in a state that can be retried ({', '.join(RETRYABLE)})", err=True)
        sys.exit(1)
    audited("send_retry", CLI_ACTOR, details={"send_id": send_id})
    click.echo(f"ok: {send_id} queued again")


@outbox_cli.command("cancel")
@click.argument("send_id")
def outbox_cancel_command(send_id: str):
    """Stop a queued, retrying or unknown send."""
    item = _outbox().cancel(_send_id(send_id), {}, CLI_ACTOR.actor())
    if item is None:
        click.echo(f"error: no send {send_id} in a state that can be cancelled ({', '.join(CANCELLABLE)})", err=True)
        sys.exit(1)
    audited("send_cancel", CLI_ACTOR, details={"send_id": send_id})
    click.echo(f"ok: {send_id} cancelled")


@click.command("send-test")
@with_appcontext
@click.option("--to", "recipient", required=True, help="Where the test message goes.")
@click.option("--from", "sender", help="The alias to send from (default: SMTP_USERNAME when it is an address).")
def send_test_command(recipient: str, sender: str | None):
    """Send one short message now, directly (not through the outbox), to prove the SMTP settings
    end to end; prints the relay's answer. Exit 4 when it was not accepted."""
    settings = current_app.config["SETTINGS"]
    sending = settings.sending
    if not sending.enabled:
        click.echo("error: sending is not configured (SMTP_USERNAME / SMTP_PASSWORD)", err=True)
        sys.exit(EXIT_SMTP_FAILED)
    sender = (sender or (sending.login.username if sending.login else "")).strip().lower()
    if not valid_address(sender) or not valid_address(recipient):
        click.echo("error: give --from ALIAS (an address) and --to ADDRESS", err=True)
        sys.exit(2)
    try:
        built = build(Draft(sender=sender, to=[recipient], subject="Test from the ImprovMX archive",
                            text=f"A test sent by `flask send-test` at {api_time(datetime.now(timezone.utc))}.\n"),
                      max_bytes=sending.max_bytes)
    except SendRefused as refused:
        click.echo(f"error: {refused.message}", err=True)
        sys.exit(2)
    outcome = smtp.deliver(sending, sending.login_for(sender), sender, built.recipients, built.raw, lambda: None)
    if outcome.result == smtp.SENT and not outcome.refused:
        click.echo(f"ok: {sending.host} accepted the test message {built.message_id}: {outcome.reply}")
        return
    click.echo(f"error: {outcome.result}: {outcome.reply}"
               + (f"; refused {outcome.refused}" if outcome.refused else ""), err=True)
    sys.exit(EXIT_SMTP_FAILED)


COMMANDS = (outbox_cli, send_test_command)
