"""`flask imap check`: the IMAP view's settings, certificate and numbering, before a start."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from pymongo.errors import PyMongoError

from ..config import ConfigError, ImapSettings
from .numbering import STATE, STATE_ID, UID_FIELD

imap_cli = AppGroup("imap", help="The IMAP view (improvmx-imap): check its settings and certificate.")
EXPIRY_WARNING = timedelta(days=14)
EXIT_PROBLEM = 1


@imap_cli.command("check")
@with_appcontext
def imap_check_command():
    """IMAP_* settings valid, certificate and key loadable and matching, days until expiry,
    and how far UID numbering has got; exit 1 on any problem."""
    from .tls import certificate_expiry, load_context  # pyOpenSSL and Twisted: only for this command

    try:
        imap = ImapSettings.from_env()
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_PROBLEM)
    if not imap.enabled:
        click.echo("ok: IMAP_ENABLED is not true; the IMAP view is off (nothing else checked)")
        return
    ports = f"{imap.host}:{imap.port} (TLS)" + (f", {imap.host}:{imap.starttls_port} (STARTTLS)"
                                              if imap.starttls_port else "")
    click.echo(f"listening: {ports}" + (f"; metrics on 127.0.0.1:{imap.metrics_port}" if imap.metrics_port else ""))
    try:
        load_context(imap.tls_cert, imap.tls_key)
        expires = certificate_expiry(imap.tls_cert)
    except Exception as error:  # noqa: BLE001 - any unreadable or mismatched file is the same problem
        click.echo(f"error: IMAP_TLS_CERT/IMAP_TLS_KEY cannot be used ({type(error).__name__}: {error}); "
                   "both must be PEM files readable by the service user, the key matching the certificate",
                   err=True)
        sys.exit(EXIT_PROBLEM)
    left = expires - datetime.now(timezone.utc)
    if left <= timedelta(0):
        click.echo(f"error: the certificate {imap.tls_cert} expired on {expires:%Y-%m-%d}", err=True)
        sys.exit(EXIT_PROBLEM)
    warning = " (renew soon; `systemctl reload improvmx-imap` picks a new one up)" if left < EXPIRY_WARNING else ""
    click.echo(f"certificate: {imap.tls_cert}, expires {expires:%Y-%m-%d} ({left.days} days){warning}")
    database = current_app.extensions["database"]
    try:
        state = database[STATE].find_one({"_id": STATE_ID})
        waiting = database.emails.count_documents({UID_FIELD: None})
    except PyMongoError as error:
        click.echo(f"error: MongoDB is not reachable ({type(error).__name__})", err=True)
        sys.exit(EXIT_PROBLEM)
    if state is None:
        click.echo("numbering: not started yet (the first improvmx-imap start numbers every message)")
    else:
        click.echo(f"numbering: UIDVALIDITY {state['uidvalidity']}, UIDs published up to "
                   f"{state['visible_through']}, {waiting} message(s) waiting for a UID")
    click.echo("ok: the IMAP view is ready to start")
