"""Sign-in (a person's email and password, or one of the operator keys in API_KEY) and
sign-out. A wrong password or key counts toward the same shared brute-force lockout as the
API's bearer check, and a blocked address gets the same 429. The checks themselves are
access/team.py's (sign_in_with_password, sign_in_with_operator_key)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import current_app, redirect, render_template, request, session, url_for

from ..access import team
from ..security import LOCKED_OUT_MESSAGE, Lockout, client_ip, retry_after
from .blueprint import bp, principal_of, render_error, signed_in
from .sessions import COOKIE_NAME, COOKIE_PATH

log = logging.getLogger(__name__)

WRONG_PASSWORD = "That email and password do not match. Check both and try again."

def safe_next(target: str | None) -> str:
    """Only a path inside the UI: never another host, scheme or protocol-relative URL."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("ui.inbox")


def _login_page(status: int = 200, error: str | None = None, headers: dict[str, str] | None = None):
    return (render_template("ui/login.html", error=error, next=request.values.get("next", ""),
                            email=request.form.get("email", "").strip()[:320]), status, headers or {})


@bp.get("/login")
def login():
    live = current_app.extensions["ui_sessions"].resume(request.cookies.get(COOKIE_NAME))
    if live and principal_of(live):  # a disabled person's session is no reason to skip the form
        return redirect(safe_next(request.args.get("next")))
    return _login_page()


@bp.post("/login")
def login_submit():
    """A person signs in with email and password; an operator with an API_KEY key (the key
    field wins when both are filled). Either failure counts toward the lockout."""
    lockout: Lockout = current_app.extensions["lockout"]
    ip = client_ip()
    key = request.form.get("key", "").strip()
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    until = lockout.blocked_until(ip)
    if until:
        log.warning("refused blocked ip=%s path=%s", ip, request.path)
        return render_error(429, LOCKED_OUT_MESSAGE, retry_after(until))
    sessions = current_app.extensions["ui_sessions"]
    user_agent = request.headers.get("User-Agent", "")
    if key:
        if not team.sign_in_with_operator_key(key, ip):
            lockout.record_failure(ip)
            return _login_page(403, "That key is not one of this archive's API keys.")
        token, opened = sessions.open(operator_key=key, ip=ip, user_agent=user_agent)
    elif email and password:
        person = team.sign_in_with_password(email, password, ip)
        if person is None:
            lockout.record_failure(ip)
            return _login_page(403, WRONG_PASSWORD)
        token, opened = sessions.open(person_id=str(person["_id"]), ip=ip, user_agent=user_agent)
    else:
        return _login_page(400, "Enter your email and password (or one of this archive's API keys).")
    session.pop("csrf_token", None)  # a fresh CSRF token for the signed-in session
    response = redirect(safe_next(request.form.get("next")), 303)
    response.set_cookie(COOKIE_NAME, token, expires=opened.expires_at, path=COOKIE_PATH,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    return response


@bp.post("/logout")
@signed_in
def logout():
    current_app.extensions["ui_sessions"].end(request.cookies.get(COOKIE_NAME))
    session.clear()
    response = redirect(url_for("ui.login"), 303)
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=request.is_secure, httponly=True,
                           samesite="Strict")
    return response
