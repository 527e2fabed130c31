"""Who may sign in over IMAP, and the one place IMAP events go to the audit trail.

The login is the person's email address (or `operator` for a key from API_KEY), the
password a key with the `imap` scope, checked by the same Authenticator as the API on every
login (a revoked key is refused on its next login). Wrong guesses count in the shared
brute-force lockout by client address, like the API's and the UI's.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from pymongo.errors import PyMongoError

from ..access.audit import ANONYMOUS, AuditTrail
from ..access.authn import Authenticator, Refused
from ..access.principal import OPERATOR_NAME, Principal
from ..security import Lockout

log = logging.getLogger("improvmx_archive.imap.audit")

IMAP_SCOPE = "imap"


def record(trail: AuditTrail, action: str, outcome: str, *, principal: Principal | None = None,
           email_ids: Iterable[Any] = (), ip: str | None = None, detail: str | None = None) -> None:
    """Every IMAP login and message fetch passes here, and only here: one log line and one
    audit entry (`imap_login`, `imap_fetch`), written in a worker thread before the answer
    goes out. PyMongoError propagates, so a fetch that cannot be recorded is not served.
    Never given a password or key."""
    actor = principal.actor() if principal else dict(ANONYMOUS)
    ids = [str(email_id) for email_id in email_ids]
    log.info("imap %s %s actor=%s ip=%s messages=%d%s", action, outcome,
             actor["name"], ip or "-", len(ids), f" detail={detail}" if detail else "")
    trail.append(actor=actor, action=f"imap_{action}", outcome=outcome, ip=ip, route="imap", email_ids=ids,
                 count=len(ids) if ids else None, details={"reason": detail} if detail else None)


class LoginRefused(Exception):
    """A refused login; `text` is what the tagged NO says (never why exactly a key failed)."""

    def __init__(self, text: str, reason: str):
        super().__init__(text)
        self.text = text
        self.reason = reason  # for metrics and logs: blocked, wrong, scope, revoked, unavailable


FAILED = "[AUTHENTICATIONFAILED] Invalid credentials"
BLOCKED = "[AUTHENTICATIONFAILED] Too many failed attempts. Please try again later."
UNAVAILABLE = "[UNAVAILABLE] The archive is unavailable; try again shortly"


def check_login(authenticator: Authenticator, lockout: Lockout, username: str, password: str,
                ip: str) -> Principal:
    """The principal for an IMAP login; raises LoginRefused. Blocking (MongoDB)."""
    try:
        if lockout.blocked_until(ip):
            raise LoginRefused(BLOCKED, "blocked")
        try:
            principal = authenticator.principal_for_key(password, via="imap")
        except Refused as refused:
            if refused.counted:
                lockout.record_failure(ip)
            raise LoginRefused(FAILED, refused.reason.replace(" ", "-")) from None
        login = username.strip().lower()
        matches = (login == OPERATOR_NAME) if principal.is_operator else \
            bool(principal.email) and login == principal.email.strip().lower()
        if not matches:
            lockout.record_failure(ip)  # a real key with someone else's name is still a guess
            raise LoginRefused(FAILED, "wrong-user")
        if not principal.allows(IMAP_SCOPE):
            raise LoginRefused("[AUTHENTICATIONFAILED] This key lacks the 'imap' scope", "scope")
        return principal
    except PyMongoError:
        raise LoginRefused(UNAVAILABLE, "unavailable") from None
