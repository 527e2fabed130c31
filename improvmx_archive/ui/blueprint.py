"""The UI blueprint and what every UI request shares: CSRF on every POST, the session guard,
the UI's response headers and its readable error pages."""

from __future__ import annotations

import functools
import logging

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from flask_limiter import ExemptionScope, RateLimitExceeded
from flask_wtf.csrf import CSRFError, CSRFProtect
from pymongo.errors import PyMongoError
from werkzeug.exceptions import HTTPException

from ..access.principal import Principal
from ..db import DatabaseUnavailable
from ..errors import MESSAGES, ApiError
from ..mailio import Unrebuildable
from ..ratelimit import configured_limit, identify_blueprint_callers, limiter
from ..security import CSP_UI
from .sessions import COOKIE_NAME, UiSession

log = logging.getLogger(__name__)

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")
csrf = CSRFProtect()

# The UI answers to its own limit (a page loads its frame, images, stylesheet and script),
# not to RATELIMIT_GLOBAL, which is sized for API clients.
limiter.exempt(bp, flags=ExemptionScope.APPLICATION)
limiter.limit(configured_limit("RATELIMIT_UI"))(bp)


@bp.before_request
def _refuse_cross_site_posts():
    """Every state change is a POST carrying the form's CSRF token; a browser that says the
    request comes from another site is refused before the token is even looked at."""
    if request.method != "POST":
        return
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        log.warning("cross-site UI POST refused path=%s", request.path)
        return render_error(403, "This form was submitted from another site, so nothing was changed.")
    csrf.protect()


@bp.after_request
def _ui_headers(response):
    """The UI's pages get the UI policy (the message frame sets its own first; downloads keep
    the API's). Referrer same-origin lets Flask-WTF check the Referer of HTTPS form posts and
    leaks nothing to other sites."""
    if response.mimetype == "text/html" and "Content-Disposition" not in response.headers:
        response.headers.setdefault("Content-Security-Policy", CSP_UI)
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.vary.add("Cookie")
    return response


def principal_of(session: UiSession) -> Principal | None:
    """Who a live session stands for, read afresh (a disabled person's session ends here)."""
    if session.person_id is None:
        return Principal.operator(via="session")
    person = current_app.extensions["people"].active(session.person_id)
    return Principal.for_person(person, via="session") if person else None


def _session_and_principal() -> tuple[UiSession | None, Principal | None]:
    """The request's live session and who it stands for, looked up once per request."""
    if "ui_caller" not in g:
        session = current_app.extensions["ui_sessions"].resume(request.cookies.get(COOKIE_NAME))
        g.ui_caller = (session, principal_of(session) if session else None)
    return g.ui_caller


def _identify_session() -> Principal | None:
    """For the rate limiter: a signed-in reader counts per person (RATELIMIT_UI), others per address."""
    try:
        return _session_and_principal()[1]
    except PyMongoError:
        return None


identify_blueprint_callers(bp.name, _identify_session)


def signed_in(view):
    """Decorator: the view runs only within a live session (g.ui_session, g.principal);
    otherwise the reader is sent to the sign-in page and comes back afterwards."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        session, principal = _session_and_principal()
        if principal is None:
            if request.method == "GET":
                return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
            return render_error(401, "Your session has ended. Sign in again, then repeat what you did.")
        g.ui_session = session
        g.principal = principal
        return view(*args, **kwargs)

    wrapper.requires_ui_session = True
    return wrapper


def render_error(status: int, message: str, headers: dict[str, str] | None = None):
    return render_template("ui/error.html", status=status, title=MESSAGES.get(status, "Error"),
                           message=message), status, headers or {}


@bp.errorhandler(CSRFError)
def _csrf_error(error: CSRFError):
    log.warning("UI POST without a valid CSRF token path=%s reason=%s", request.path, error.description)
    return render_error(400, "This form has expired or did not come from this site, so nothing was "
                             "changed. Reload the page and try again.")


@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    return render_error(error.status, error.message, error.headers)


@bp.errorhandler(RateLimitExceeded)  # the app's JSON handler is registered for 429 itself
@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    status = error.code or 500
    return render_error(status, MESSAGES.get(status, error.name))


@bp.errorhandler(DatabaseUnavailable)
@bp.errorhandler(PyMongoError)
def _database_error(error: Exception):
    log.error("UI request failed: database unavailable (%s)", type(error).__name__)
    return render_error(503, "The archive's database is not reachable right now. Try again in a minute.",
                        {"Retry-After": "30"})


@bp.errorhandler(Exception)
def _unexpected(error: Exception):
    log.exception("unhandled error in the UI")
    return render_error(500, "Something went wrong on our side. The error has been logged.")


@bp.errorhandler(Unrebuildable)
def _unrebuildable(error: Unrebuildable):
    """The Source tab of a message the rebuild fails on: say so, the other tabs still work."""
    return render_error(500, f"This message is stored, but it {error.reason} as MIME, so its source cannot be "
                             "shown. Its other tabs and attachments still work; the error has been logged.")
