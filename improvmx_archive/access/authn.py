"""From a presented credential to a Principal: operator keys (API_KEY), personal keys, and
the `require_access(scope)` guard every protected route wears.

The shared brute-force lockout (security.Lockout) counts every guess; a known key that was
revoked or has expired is no guess: it answers 401 without counting. Nothing here caches a
person or a key beyond the request, so a change takes effect on the very next request.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from flask import current_app, g, request
from pymongo.errors import PyMongoError

from ..errors import ApiError
from ..security import LOCKED_OUT_MESSAGE, Lockout, client_ip, key_matches, retry_after
from . import audit
from .keys import Keys, looks_like_personal_key
from .people import People
from .principal import Principal

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 1000
_REFUSED_KEY = {"revoked": "API key revoked", "expired": "API key expired",
                "disabled": "API key's owner is disabled"}
_WRONG_KEY = (403, "Invalid API key", True, "wrong key")


@dataclass
class Refused(Exception):
    """A credential was refused: the status and message to answer, and whether it counts
    toward the lockout (a guess) or not (a known key that was revoked or expired)."""

    status: int
    message: str
    counted: bool
    reason: str  # for the log line: malformed, wrong key, revoked, expired, disabled


class Authenticator:
    """Turns a token into a Principal; shared by the API, the UI and the IMAP server."""

    def __init__(self, operator_keys: tuple[str, ...], people: People, keys: Keys):
        self.operator_keys = operator_keys
        self.people = people
        self.keys = keys

    def is_operator_key(self, token: str) -> bool:
        return bool(token) and len(token) <= MAX_TOKEN_LENGTH and key_matches(token, self.operator_keys)

    def principal_for_key(self, token: str, via: str = "key") -> Principal:
        """The principal a bearer token stands for; raises Refused. Personal keys read MongoDB
        (PyMongoError propagates); operator keys never do."""
        if self.is_operator_key(token):
            return Principal.operator(via)
        if not looks_like_personal_key(token) or len(token) > MAX_TOKEN_LENGTH:
            raise Refused(*_WRONG_KEY)
        found = self.keys.check(token)
        if found.refusal == "unknown":
            raise Refused(*_WRONG_KEY)
        if found.refusal:
            raise Refused(401, _REFUSED_KEY[found.refusal], False, found.refusal)
        person = self.people.active(found.key["person_id"])
        if person is None:
            raise Refused(401, _REFUSED_KEY["disabled"], False, "disabled")
        self.keys.touch(found.key["_id"])
        return Principal.for_person(person, key=found.key, via=via)


def _bearer_token() -> str:
    """The token of the Authorization header; ApiError 401 when it is missing or malformed
    (a missing header guesses nothing, so it is not counted; a malformed one is)."""
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "Missing Authorization header; send 'Authorization: Bearer <API key>'",
                       {"WWW-Authenticate": 'Bearer realm="improvmx-webhook"'})
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Refused(401, "Malformed Authorization header; expected 'Bearer <API key>'", True, "malformed")
    return token


def identify_bearer() -> Principal | None:
    """The principal of a valid bearer key, or None; never raises, counts nothing.

    The rate limiter calls this before the route's guard (require_access), so that a valid
    key is counted per person and never against the per-address RATELIMIT_GLOBAL. The guard
    then reuses the answer (g.identified) instead of looking the key up a second time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        principal = current_app.extensions["authenticator"].principal_for_key(token)
    except (Refused, PyMongoError):
        return None
    g.identified = (token, principal)
    return principal


def _unavailable() -> ApiError:
    return ApiError(503, "Service temporarily unavailable", {"Retry-After": "30"})


def authenticate_request(operator_keys: tuple[str, ...] | None = None) -> Principal:
    """The request's principal from its bearer token, under the shared lockout.

    A block in force wins. While MongoDB is down an operator key still passes (so the owner
    can read GET /'s spool depth during an outage); anything needing the database answers 503.
    `operator_keys` replaces API_KEY for routes with keys of their own (METRICS_TOKEN)."""
    lockout: Lockout = current_app.extensions["lockout"]
    authenticator: Authenticator = current_app.extensions["authenticator"]
    ip = client_ip()
    try:
        until = lockout.blocked_until(ip)
    except PyMongoError:
        try:
            token = _bearer_token()  # a missing header is still a plain 401
        except Refused:
            raise _unavailable() from None
        if authenticator.is_operator_key(token) if operator_keys is None else key_matches(token, operator_keys):
            log.warning("lockout state unavailable (MongoDB); admitting an operator key ip=%s", ip)
            return Principal.operator()
        raise _unavailable() from None
    if until:
        log.warning("refused blocked ip=%s path=%s", ip, request.path)
        raise ApiError(429, LOCKED_OUT_MESSAGE, retry_after(until))
    try:
        token = _bearer_token()
        if operator_keys is not None:
            if not key_matches(token, operator_keys):
                raise Refused(*_WRONG_KEY)
            return Principal.operator()
        identified = g.get("identified")
        if identified and identified[0] == token:
            return identified[1]
        return authenticator.principal_for_key(token)
    except Refused as refused:
        if refused.counted:
            log.warning("failed authentication ip=%s path=%s reason=%s", ip, request.path, refused.reason)
            try:
                lockout.record_failure(ip)
            except PyMongoError:
                log.error("authentication state unavailable (MongoDB) ip=%s", ip)
                raise _unavailable() from None
        else:
            log.warning("refused key ip=%s path=%s reason=%s", ip, request.path, refused.reason)
        audit.record_done("auth", "failed" if refused.counted else "refused",
                          details={"reason": refused.reason, "path": request.path})
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if refused.status == 401 else None
        raise ApiError(refused.status, refused.message, headers) from None
    except PyMongoError:
        log.error("key store unavailable (MongoDB) ip=%s", ip)
        raise _unavailable() from None


def require_access(scope: str):
    """Decorator: the route runs for a principal whose key allows `scope` (g.principal);
    429 while blocked, 401 missing/malformed/revoked/expired, 403 wrong key or scope."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate_request()
            if not principal.allows(scope):
                audit.record_done("auth", "refused", principal=principal,
                                  details={"reason": f"no {scope} scope", "path": request.path})
                raise ApiError(403, f"This API key lacks the '{scope}' scope")
            g.principal = principal
            return view(*args, **kwargs)

        wrapper.requires_api_key = True
        wrapper.required_scope = scope
        wrapper.identify_caller = identify_bearer
        return wrapper

    return decorate


def require_admin(view):
    """Decorator after require_access: the route is for admins (and operator keys) only."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not g.principal.is_admin:
            raise ApiError(403, "Only an admin may do this")
        return view(*args, **kwargs)

    return wrapper


def require_metrics_access(view):
    """Decorator for /metrics: METRICS_TOKEN when set (a scraper then holds no key that could
    read mail), otherwise an admin's or operator's key with the read scope; same lockout."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        tokens = current_app.config["SETTINGS"].metrics_tokens
        principal = authenticate_request(tokens or None)
        if not (principal.is_admin and principal.allows("read")):
            raise ApiError(403, "Only an admin's key (or METRICS_TOKEN) may read the metrics")
        g.principal = principal
        return view(*args, **kwargs)

    wrapper.requires_api_key = True
    return wrapper


def current_principal() -> Principal:
    """The principal a guard put on this request (API or UI)."""
    return g.principal
