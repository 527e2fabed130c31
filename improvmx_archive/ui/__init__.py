"""The web UI under /ui/: server-rendered pages over the same archive functions as the API.

Sessions live in MongoDB (sessions.py); CSRF tokens come from Flask-WTF, signed with a
secret derived from the configured API keys so that every worker and host agrees on it
without one more setting (see docs/security.md for what that means for key rotation).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask, request, send_from_directory
from flask.sessions import SecureCookieSessionInterface

from ..config import Settings
from ..ratelimit import limiter
from . import auth, inbox, message, overview  # noqa: F401  (their routes join the blueprint)
from . import team  # noqa: F401  (account, keys and people pages)
from .blueprint import bp, csrf
from .formatting import FILTERS
from .inbox import list_url
from .message import message_url
from .sessions import COOKIE_PATH, UiSessions
from .stats import TimedCache

_SECRET_CONTEXT = b"improvmx-archive ui secret v1"


def derive_secret_key(api_keys: tuple[str, ...]) -> bytes:
    """The same secret on every worker and host that has the same keys, whatever their order."""
    return hmac.new(_SECRET_CONTEXT, "\n".join(sorted(api_keys)).encode(), hashlib.sha256).digest()


class _PerRequestSecureSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session (it holds only the CSRF token), marked Secure whenever
    the request came over HTTPS (as ProxyFix reports it behind Caddy)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def register_ui(app: Flask, settings: Settings) -> None:
    """Mount /ui/ unless UI_ENABLED is false (then every /ui/ URL is the app's plain 404)."""
    if not settings.ui_enabled:
        return
    lifetime = timedelta(hours=settings.ui_session_hours)
    app.secret_key = derive_secret_key(settings.api_keys)
    app.config.update(
        SESSION_COOKIE_NAME="ui_csrf",
        SESSION_COOKIE_PATH=COOKIE_PATH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # only the UI's forms; the API has no cookies to ride on
        WTF_CSRF_TIME_LIMIT=int(lifetime.total_seconds()),
    )
    app.session_interface = _PerRequestSecureSessions()
    app.extensions["ui_sessions"] = UiSessions(app.extensions["database"], settings.api_keys, lifetime)
    app.extensions["ui_stats"] = TimedCache()
    csrf.init_app(app)
    app.jinja_env.filters.update(FILTERS)
    app.jinja_env.globals.update(list_url=list_url, message_url=message_url)
    app.register_blueprint(bp)
    app.add_url_rule("/favicon.ico", "favicon", limiter.exempt(_favicon))


def _favicon():
    """The UI's icon where every browser asks for it first (also linked from each page); no
    rate limit, since browsers fetch it on their own."""
    return send_from_directory(bp.static_folder, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)
