"""Every change to people, keys and passwords, and every sign-in, in one function each.

The CLI (access/commands.py) and the UI pages (ui/team.py, ui/auth.py) call these and never
the stores directly, so each change has one place where it is checked, done and (for the
audit trail) recorded: each writes one audit entry after the change is made (names, roles,
grants, key ids and scopes; never a password, hash or key). `actor` is the Principal doing it: a person, an operator session or
key, or CLI_ACTOR for `flask users ...` and `flask keys ...` on the server itself.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app

from . import audit
from .keys import Keys
from .passwords import check_new_password, hash_password, needs_rehash, verify_password
from .people import People, PeopleError
from .principal import ADMIN, CLI_ACTOR, MEMBER, Principal  # noqa: F401  (CLI_ACTOR: callers' actor on the CLI)

log = logging.getLogger(__name__)



class WrongPassword(ValueError):
    """The current password given to change one's own password did not match."""


def _who(actor: Principal) -> str:
    """The actor for a log line: a name, never a key; `cli` for commands on the server."""
    return "cli" if actor.via == "cli" else actor.name


def _people() -> People:
    return current_app.extensions["people"]


def _keys() -> Keys:
    return current_app.extensions["keys"]


def _end_sessions(person_id: str, keep: str | None = None) -> int:
    """End a person's UI sessions (all but `keep`), when the UI is mounted."""
    sessions = current_app.extensions.get("ui_sessions")
    return sessions.end_person(person_id, keep=keep) if sessions else 0


def person_named(name: str) -> dict[str, Any]:
    """The person called name (without their password hash); PeopleError if there is none."""
    person = _people().by_name(name)
    if person is None:
        raise PeopleError(f"no person named {name!r}")
    person.pop("password_hash", None)
    return person


# People -----------------------------------------------------------------------------------

def add_person(actor: Principal, name: str, email: str, *, admin: bool = False) -> dict[str, Any]:
    person = _people().add(name, email, ADMIN if admin else MEMBER)
    log.info("person added name=%s role=%s by=%s", name, person["role"], _who(actor))
    audit.record("person_add", principal=actor, details={"name": name, "email": person["email"], "role": person["role"]})
    return person


def grant(actor: Principal, name: str, grants: list[str]) -> dict[str, Any]:
    person = _people().grant(name, grants)
    log.info("grants added name=%s grants=%s by=%s", name, ",".join(grants), _who(actor))
    audit.record("person_grant", principal=actor, details={"name": name, "grants": list(grants)})
    return person


def revoke_grants(actor: Principal, name: str, grants: list[str]) -> dict[str, Any]:
    person = _people().revoke(name, grants)
    log.info("grants revoked name=%s grants=%s by=%s", name, ",".join(grants), _who(actor))
    audit.record("person_revoke", principal=actor, details={"name": name, "grants": list(grants)})
    return person


def set_disabled(actor: Principal, name: str, disabled: bool) -> dict[str, Any]:
    """Disable (their keys and sessions stop on their next request; sessions are ended) or enable."""
    person = _people().set_disabled(name, disabled)
    if disabled:
        _end_sessions(str(person["_id"]))
    log.info("person %s name=%s by=%s", "disabled" if disabled else "enabled", name, _who(actor))
    audit.record("person_disable" if disabled else "person_enable", principal=actor, details={"name": name})
    return person


def set_role(actor: Principal, name: str, role: str) -> dict[str, Any]:
    person = _people().set_role(name, role)
    log.info("role set name=%s role=%s by=%s", name, role, _who(actor))
    audit.record("person_role", principal=actor, details={"name": name, "role": role})
    return person


# Passwords --------------------------------------------------------------------------------

def set_password(actor: Principal, name: str, password: str, *, keep_session: str | None = None) -> dict[str, Any]:
    """Set a person's password (PasswordError if it is unacceptable) and end their other
    UI sessions: whoever knew the old one is signed out everywhere."""
    person = person_named(name)
    _people().set_password_hash(name, hash_password(password))
    ended = _end_sessions(str(person["_id"]), keep=keep_session)
    log.info("password set name=%s by=%s sessions_ended=%d", name, _who(actor), ended)
    audit.record("password_set", principal=actor, details={"name": name, "sessions_ended": ended})
    return person


def change_own_password(principal: Principal, current: str, new: str, *, keep_session: str) -> None:
    """A person changes their own password: the current one is required (WrongPassword),
    the new one must be acceptable (PasswordError); their other sessions end."""
    check_new_password(new)
    person = _people().by_id(principal.person_id or "")
    if person is None or not verify_password(person.get("password_hash"), current):
        log.warning("own password change refused (wrong current password) name=%s", principal.name)
        audit.record("password_set", "refused", principal=principal, details={"name": principal.name})
        raise WrongPassword("The current password is not right, so the password was not changed.")
    set_password(principal, person["name"], new, keep_session=keep_session)


# Sign-in ----------------------------------------------------------------------------------

def sign_in_with_password(email: str, password: str, ip: str) -> dict[str, Any] | None:
    """The person an email and password stand for, or None. An unknown address, a wrong
    password, a person without a password and a disabled person all take the same work
    (one argon2 verification) and give the same None. The hash is renewed when its
    parameters are out of date."""
    person = _people().by_email(email) if email and len(email) <= 320 else None
    stored = person.get("password_hash") if person else None
    matched = verify_password(stored, password)
    if not matched or person is None or person.get("disabled"):
        reason = "wrong email or password" if not matched else "disabled"
        log.warning("failed sign-in ip=%s reason=%s", ip, reason)
        audit.record("signin", "failed", ip=ip, details={"method": "password", "reason": reason,
                                                          **_attempted_address(email)})
        return None
    if needs_rehash(stored):
        _people().set_password_hash(person["name"], hash_password(password, check=False))
    log.info("UI sign-in ip=%s name=%s", ip, person["name"])
    audit.record("signin", principal=Principal.for_person(person, via="session"), ip=ip,
                 details={"method": "password"})
    person.pop("password_hash", None)
    return person


def sign_in_with_operator_key(key: str, ip: str) -> bool:
    """Whether key is one of API_KEY's operator keys (a UI sign-in as the operator)."""
    matched = current_app.extensions["authenticator"].is_operator_key(key)
    if matched:
        log.info("UI sign-in ip=%s name=operator", ip)
        audit.record("signin", principal=Principal.operator(via="session"), ip=ip, details={"method": "operator key"})
    else:
        log.warning("failed authentication ip=%s path=/ui/login reason=wrong key", ip)
        audit.record("signin", "failed", ip=ip, details={"method": "operator key", "reason": "wrong key"})
    return matched


def sign_in_blocked(ip: str, path: str) -> None:
    """A sign-in refused before any check because the address is locked out."""
    log.warning("refused blocked ip=%s path=%s", ip, path)
    audit.record("signin", "blocked", ip=ip)


def sign_out(principal: Principal, token: str | None) -> None:
    current_app.extensions["ui_sessions"].end(token)
    audit.record("signout", principal=principal)


def _attempted_address(email: str) -> dict[str, str]:
    """The address a failed sign-in tried, when it looks like one (a password typed into the
    email field by mistake must not land in the trail)."""
    email = (email or "").strip()
    if "@" in email and " " not in email and len(email) <= 320:
        return {"email": email.lower()}
    return {}


# Keys -------------------------------------------------------------------------------------

def create_key(actor: Principal, person_name: str, label: str, scopes: list[str] | str,
               expires_days: float | None = None) -> tuple[str, dict[str, Any]]:
    """A new personal key for person_name: returns the token (show it once) and its record
    (without the hash). KeyRequestError or PeopleError say what is wrong."""
    person = person_named(person_name)
    token, record = _keys().create(str(person["_id"]), label, scopes, expires_days)
    record = {field: value for field, value in record.items() if field != "hash"}
    log.info("key created id=%s owner=%s scopes=%s by=%s", record["_id"], person_name,
             ",".join(record["scopes"]), _who(actor))
    audit.record("key_create", principal=actor, details={"key_id": record["_id"], "owner": person_name,
                                                          "name": record["name"], "scopes": record["scopes"]})
    return token, record


def revoke_key(actor: Principal, key_id: str, *, own_only: bool = False) -> dict[str, Any] | None:
    """Revoke a key (only one of actor's own when own_only); None when there is no such key
    (or it is someone else's and own_only is set)."""
    person_id = actor.person_id if own_only else None
    if own_only and person_id is None:
        return None
    record = _keys().revoke(key_id, person_id=person_id)
    if record is not None:
        log.info("key revoked id=%s by=%s", key_id, _who(actor))
        audit.record("key_revoke", principal=actor, details={"key_id": key_id, "owner_id": record.get("person_id")})
    return record
