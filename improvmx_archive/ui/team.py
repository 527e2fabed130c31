"""The team pages: a person's account (password) and keys, and the admins' People page.

Every change is a CSRF-protected POST that works without JavaScript, answered by a redirect
with a notice (or the page again with what was wrong); a new key's token is shown once, on
the page that answers its POST. Changes go through access/team.py, as the CLI's do. Members
asking for People get the same 404 as any unknown page.
"""

from __future__ import annotations

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from ..access import team
from ..access.keys import KeyRequestError
from ..access.passwords import MIN_LENGTH, PasswordError, check_new_password
from ..access.people import PeopleError, valid_grant
from ..access.principal import ADMIN, MEMBER, SCOPES
from .blueprint import bp, signed_in

_REFUSALS = (PeopleError, PasswordError, KeyRequestError)
EXPIRY_CHOICES = (("", "Never"), ("30", "In 30 days"), ("90", "In 90 days"), ("365", "In a year"))


def _admin_only() -> None:
    if not g.principal.is_admin:
        abort(404)


def _own_keys() -> list[dict]:
    if g.principal.person_id is None:
        return []
    return current_app.extensions["keys"].of_person(g.principal.person_id)


# Account ----------------------------------------------------------------------------------

def _account_page(status: int = 200, error: str | None = None):
    return render_template("ui/account.html", error=error, min_length=MIN_LENGTH), status


@bp.get("/account")
@signed_in
def account():
    return _account_page()


@bp.post("/account/password")
@signed_in
def change_password():
    """Current password required; the person's other sessions end, this one stays."""
    if g.principal.person_id is None:
        return _account_page(400, "An operator session has no password: it signs in with an API key.")
    new, repeated = request.form.get("new_password", ""), request.form.get("repeat_password", "")
    if new != repeated:
        return _account_page(400, "The new password and its repetition differ, so nothing was changed.")
    try:
        team.change_own_password(g.principal, request.form.get("current_password", ""), new,
                                 keep_session=g.ui_session.id)
    except team.WrongPassword as error:
        return _account_page(403, str(error))
    except PasswordError as error:
        return _account_page(400, f"Not changed: {error}.")
    flash("Password changed. Your other sessions were signed out.")
    return redirect(url_for("ui.account"), 303)


# Keys -------------------------------------------------------------------------------------

def _keys_page(status: int = 200, error: str | None = None, created: tuple[str, dict] | None = None):
    return render_template("ui/keys.html", keys=_own_keys(), scopes=SCOPES, expiry_choices=EXPIRY_CHOICES,
                           error=error, created=created), status


@bp.get("/keys")
@signed_in
def keys():
    return _keys_page()


@bp.post("/keys")
@signed_in
def create_key():
    """A new key for the signed-in person; the answer shows its token, once."""
    if g.principal.person_id is None:
        return _keys_page(400, "An operator session has no keys of its own.")
    expiry = request.form.get("expires", "").strip()
    if expiry and not expiry.isdigit():
        return _keys_page(400, "Expiry is a number of days.")
    try:
        token, record = team.create_key(g.principal, g.principal.name, request.form.get("name", ""),
                                        request.form.getlist("scopes"), float(expiry) if expiry else None)
    except _REFUSALS as error:
        return _keys_page(400, f"No key was created: {error}.")
    return _keys_page(201, created=(token, record))


@bp.post("/keys/<key_id>/revoke")
@signed_in
def revoke_own_key(key_id: str):
    record = team.revoke_key(g.principal, key_id, own_only=True)
    if record is None:
        abort(404)
    flash(f"Key “{record['name']}” revoked: it stops working on its next request.")
    return redirect(url_for("ui.keys"), 303)


# People (admins) --------------------------------------------------------------------------

def _people_page(status: int = 200, error: str | None = None):
    people = current_app.extensions["people"].list()
    keys_by_person: dict[str, list[dict]] = {}
    for key in current_app.extensions["keys"].all():
        keys_by_person.setdefault(key["person_id"], []).append(key)
    return render_template("ui/people.html", people=people, keys_by_person=keys_by_person, roles=(MEMBER, ADMIN),
                           error=error, min_length=MIN_LENGTH), status


def _people_change(change, *args, done: str, **kwargs):
    """Run one change for the People page: back to the list with a notice, or the page
    again with why nothing changed."""
    try:
        change(g.principal, *args, **kwargs)
    except _REFUSALS as error:
        return _people_page(400, f"Nothing was changed: {error}.")
    flash(done)
    return redirect(url_for("ui.people"), 303)


def _words(field: str) -> list[str]:
    return request.form.get(field, "").replace(",", " ").split()


@bp.get("/people")
@signed_in
def people():
    _admin_only()
    return _people_page()


@bp.post("/people")
@signed_in
def add_person():
    _admin_only()
    name, email = request.form.get("name", "").strip(), request.form.get("email", "").strip()
    grants, password = _words("grants"), request.form.get("password", "")
    try:  # everything checked first, so a refusal leaves no half-made person behind
        grants = [valid_grant(item) for item in grants]
        if password:
            check_new_password(password)
        team.add_person(g.principal, name, email, admin=request.form.get("role") == ADMIN)
    except _REFUSALS as error:
        return _people_page(400, f"Nobody was added: {error}.")
    if grants:
        team.grant(g.principal, name, grants)
    if password:
        team.set_password(g.principal, name, password)
    flash(f"{name} added." + ("" if password else " Set a password so they can sign in."))
    return redirect(url_for("ui.people"), 303)


@bp.post("/people/<name>/grants")
@signed_in
def grant(name: str):
    _admin_only()
    grants = _words("grants")
    if not grants:
        return _people_page(400, "Nothing was changed: name an alias (support@example.com) or a domain (*@example.com).")
    return _people_change(team.grant, name, grants, done=f"{name} now also sees {', '.join(grants)}.")


@bp.post("/people/<name>/grants/revoke")
@signed_in
def revoke_grant(name: str):
    _admin_only()
    grants = request.form.getlist("grant")
    if not grants:
        return _people_page(400, "Nothing was changed: choose a grant to remove.")
    return _people_change(team.revoke_grants, name, grants, done=f"{name} no longer sees {', '.join(grants)}.")


def _not_oneself(name: str, what: str):
    """An admin does not disable or demote themselves from the UI (another admin, or
    `flask users` on the server, can): a slip of the mouse must not lock them out."""
    if g.principal.person_id is not None and name == g.principal.name:
        return _people_page(400, f"You cannot {what} yourself here: ask another admin, or use flask users on the server.")
    return None


@bp.post("/people/<name>/disabled")
@signed_in
def set_disabled(name: str):
    _admin_only()
    disabled = request.form.get("disabled") == "true"
    if disabled and (refused := _not_oneself(name, "disable")):
        return refused
    return _people_change(team.set_disabled, name, disabled,
                          done=f"{name} {'disabled: their keys and sessions stop now' if disabled else 'enabled'}.")


@bp.post("/people/<name>/role")
@signed_in
def set_role(name: str):
    _admin_only()
    role = request.form.get("role", "")
    if role != ADMIN and (refused := _not_oneself(name, "demote")):
        return refused
    return _people_change(team.set_role, name, role, done=f"{name} is now {role}.")


@bp.post("/people/<name>/password")
@signed_in
def set_password(name: str):
    _admin_only()
    return _people_change(team.set_password, name, request.form.get("password", ""),
                          done=f"Password set for {name}; their sessions were signed out.")


@bp.post("/people/keys/<key_id>/revoke")
@signed_in
def revoke_any_key(key_id: str):
    _admin_only()
    record = team.revoke_key(g.principal, key_id)
    if record is None:
        abort(404)
    flash(f"Key “{record['name']}” revoked: it stops working on its next request.")
    return redirect(url_for("ui.people"), 303)
