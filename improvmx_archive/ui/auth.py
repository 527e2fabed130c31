"""Sign-in with one of the API keys, and sign-out. A wrong key counts toward the same shared
brute-force lockout as the API's bearer check, and a blocked address gets the same 429."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import current_app, redirect, render_template, request, session, url_for

from ..security import LOCKED_OUT_MESSAGE, Lockout, client_ip, key_matches, retry_after
from .blueprint import bp, render_error, signed_in
from .sessions import COOKIE_NAME, COOKIE_PATH

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 1000


def safe_next(target: str | None) -> str:
    """Only a path inside the UI: never another host, scheme or protocol-relative URL."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("ui.inbox")


def _login_page(status: int = 200, error: str | None = None, headers: dict[str, str] | None = None):
    return render_template("ui/login.html", error=error, next=request.values.get("next", "")), status, headers or {}


@bp.get("/login")
def login():
    sessions = current_app.extensions["ui_sessions"]
    if sessions.resume(request.cookies.get(COOKIE_NAME)):
        return redirect(safe_next(request.args.get("next")))
    return _login_page()


@bp.post("/login")
def login_submit():
    lockout: Lockout = current_app.extensions["lockout"]
    ip = client_ip()
    presented = request.form.get("key", "").strip()
    until = lockout.blocked_until(ip)
    if until:
        log.warning("refused blocked ip=%s path=%s", ip, request.path)
        return render_error(429, LOCKED_OUT_MESSAGE, retry_after(until))
    if not presented:
        return _login_page(400, "Enter one of this archive's API keys.")
    keys = current_app.config["SETTINGS"].api_keys
    if len(presented) > MAX_KEY_LENGTH or not key_matches(presented, keys):
        log.warning("failed authentication ip=%s path=%s reason=wrong key", ip, request.path)
        lockout.record_failure(ip)
        return _login_page(403, "That key is not one of this archive's API keys.")
    token, opened = current_app.extensions["ui_sessions"].open(
        operator_key=presented, ip=ip, user_agent=request.headers.get("User-Agent", ""))
    session.pop("csrf_token", None)  # a fresh CSRF token for the signed-in session
    response = redirect(safe_next(request.form.get("next")), 303)
    response.set_cookie(COOKIE_NAME, token, expires=opened.expires_at, path=COOKIE_PATH,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    log.info("UI sign-in ip=%s", ip)
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
