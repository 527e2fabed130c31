"""`flask users ...` and `flask keys ...`: manage people, their grants, passwords and keys from
the server. Every change goes through access/team.py, as the UI's do. Errors print one line
and exit 1."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from ..times import as_utc
from .keys import KeyRequestError
from .passwords import PasswordError
from .people import PeopleError
from .principal import ADMIN, MEMBER, SCOPES
from . import team

users_cli = AppGroup("users", help="People: add, grant or revoke aliases, disable, set passwords, list.")
keys_cli = AppGroup("keys", help="Personal API keys: create (shown once), list, revoke.")

_REFUSALS = (PeopleError, PasswordError, KeyRequestError)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(change, *args, **kwargs):
    """Run a team change; a refusal is one clear line on stderr and exit status 1."""
    try:
        return change(*args, **kwargs)
    except _REFUSALS as error:
        _fail(str(error))


def _when(moment: datetime | None) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M") if moment else "-"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _grants(person: dict[str, Any]) -> str:
    return ", ".join(person.get("grants") or ()) or "-"


@users_cli.command("add")
@click.argument("name")
@click.option("--email", required=True, help="The address the person signs in with.")
@click.option("--admin", is_flag=True, help="An admin sees all mail and manages people (default: a member).")
def users_add_command(name: str, email: str, admin: bool):
    """Add a person (a member, or an admin with --admin). Then grant aliases and set a password."""
    person = _run(team.add_person, team.CLI_ACTOR, name, email, admin=admin)
    click.echo(f"ok: added {person['name']} <{person['email']}> as {person['role']}")
    if person["role"] == MEMBER:
        click.echo(f"next: flask users grant {name} ALIAS... (a member sees nothing until granted an alias)")


@users_cli.command("grant")
@click.argument("name")
@click.argument("aliases", nargs=-1, required=True)
def users_grant_command(name: str, aliases: tuple[str, ...]):
    """Let NAME see mail to each ALIAS (support@example.com) or whole domain (*@example.com)."""
    person = _run(team.grant, team.CLI_ACTOR, name, list(aliases))
    click.echo(f"ok: {name} now sees {_grants(person)}")


@users_cli.command("revoke")
@click.argument("name")
@click.argument("aliases", nargs=-1, required=True)
def users_revoke_command(name: str, aliases: tuple[str, ...]):
    """Stop NAME seeing mail to each ALIAS (takes effect on their next request)."""
    person = _run(team.revoke_grants, team.CLI_ACTOR, name, list(aliases))
    click.echo(f"ok: {name} now sees {_grants(person)}")


@users_cli.command("disable")
@click.argument("name")
def users_disable_command(name: str):
    """Disable NAME: their keys and sessions stop working on their next request."""
    _run(team.set_disabled, team.CLI_ACTOR, name, True)
    click.echo(f"ok: {name} disabled")


@users_cli.command("enable")
@click.argument("name")
def users_enable_command(name: str):
    """Enable NAME again (their keys that are not revoked or expired work again)."""
    _run(team.set_disabled, team.CLI_ACTOR, name, False)
    click.echo(f"ok: {name} enabled")


@users_cli.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice([ADMIN, MEMBER]))
def users_set_role_command(name: str, role: str):
    """Make NAME an admin (sees everything) or a member (sees their grants)."""
    _run(team.set_role, team.CLI_ACTOR, name, role)
    click.echo(f"ok: {name} is now {role}")


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_new_password() -> str:
    """Twice at a hidden prompt on a terminal; the first line of stdin otherwise (scripts)."""
    if _interactive():
        return click.prompt("New password", hide_input=True, confirmation_prompt="Repeat it")
    return sys.stdin.readline().rstrip("\r\n")


@users_cli.command("set-password")
@click.argument("name")
def users_set_password_command(name: str):
    """Set NAME's password for the UI (prompted twice, hidden; or the first line of stdin).
    Their open UI sessions end."""
    _run(team.person_named, name)
    password = _read_new_password()
    _run(team.set_password, team.CLI_ACTOR, name, password)
    click.echo(f"ok: password set for {name}; their UI sessions were ended")


@users_cli.command("list")
def users_list_command():
    """Every person: name, email, role, grants, disabled, live keys."""
    people = current_app.extensions["people"].list()
    live = {}
    for key in current_app.extensions["keys"].all():
        if not key.get("revoked_at"):
            live[key["person_id"]] = live.get(key["person_id"], 0) + 1
    if not people:
        click.echo("no people yet: add one with flask users add NAME --email ADDRESS")
        return
    _table(["NAME", "EMAIL", "ROLE", "GRANTS", "DISABLED", "KEYS"],
           [[p["name"], p["email"], p.get("role", MEMBER), _grants(p), "yes" if p.get("disabled") else "no",
             str(live.get(str(p["_id"]), 0))] for p in people])


def _days(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        _fail("--expires is a number of days, e.g. 90")


@keys_cli.command("create")
@click.option("--user", "user", required=True, help="The person the key acts for (it never sees more than they do).")
@click.option("--name", "label", required=True, help="A label, e.g. 'billing script on host X'.")
@click.option("--scope", "scopes", default="read", show_default=True,
              help=f"Comma-separated: {', '.join(SCOPES)}.")
@click.option("--expires", "expires", default=None, metavar="DAYS", help="Days until it stops working (default: never).")
def keys_create_command(user: str, label: str, scopes: str, expires: str | None):
    """Create a personal API key and print it once."""
    token, record = _run(team.create_key, team.CLI_ACTOR, user, label, scopes, _days(expires))
    click.echo(token)
    click.echo(f"ok: key {record['_id']} for {user} ({','.join(record['scopes'])}"
               f"{', expires ' + _when(record['expires_at']) if record['expires_at'] else ''}); "
               "it will not be shown again: store it now", err=True)


@keys_cli.command("list")
@click.option("--user", "user", default=None, help="Only this person's keys.")
def keys_list_command(user: str | None):
    """Keys (never the key itself): id, owner, name, scopes, created, last used, expires, revoked."""
    people = {str(p["_id"]): p["name"] for p in current_app.extensions["people"].list()}
    store = current_app.extensions["keys"]
    keys = store.of_person(str(_run(team.person_named, user)["_id"])) if user else store.all()
    if not keys:
        click.echo("no keys")
        return
    _table(["ID", "OWNER", "NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
           [[k["_id"], people.get(k["person_id"], "?"), k["name"], ",".join(k["scopes"]), _when(k["created_at"]),
             _when(k.get("last_used_at")), _when(k.get("expires_at")), _when(k.get("revoked_at"))] for k in keys])


@keys_cli.command("revoke")
@click.argument("key_id")
def keys_revoke_command(key_id: str):
    """Revoke a key by its id: it answers 401 from its next request on."""
    record = team.revoke_key(team.CLI_ACTOR, key_id)
    if record is None:
        _fail(f"no key with id {key_id!r} (see flask keys list)")
    click.echo(f"ok: key {key_id} ({record['name']}) revoked")
