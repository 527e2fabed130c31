"""People's passwords: argon2id (argon2-cffi, RFC 9106's low-memory profile), checked in
constant work whether or not the address is known, rehashed on sign-in when the parameters
change. A hash lives only in its person's `people` document, never in a log or a response.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024  # long enough for any passphrase, short enough that hashing stays cheap to refuse
_HASHER = PasswordHasher()  # argon2id; its defaults follow RFC 9106's recommendations


class PasswordError(ValueError):
    """A new password is unacceptable; the message says why (and never repeats it)."""


def check_new_password(password: str) -> str:
    """The password, if it may be set; PasswordError with a clear reason otherwise."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password is at least {MIN_LENGTH} characters long "
                            "(a few unrelated words make a good one)")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password is at most {MAX_LENGTH} characters long")
    if not password.strip():
        raise PasswordError("a password cannot be only spaces")
    return password


def hash_password(password: str, *, check: bool = True) -> str:
    """An argon2id hash (salt and parameters included) of a new password (checked first,
    unless it is one already accepted being rehashed)."""
    return _HASHER.hash(check_new_password(password) if check else password)


# The hash of a random password nobody knows, made with today's parameters: verified in place
# of a missing hash so that an unknown address costs the same work, from the very first
# sign-in of a worker (making one on demand would make that first answer slower).
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$ibnK9Dj6Tpz9Cz5t75a51A$VuifwccMBTP3mmaYUXxFRJjfcjYDUs9MFpD+1QO3WO8"


@functools.cache
def _dummy_hash() -> str:
    """_DUMMY_HASH, or (if the hasher's parameters have changed since) one made with them."""
    if not _HASHER.check_needs_rehash(_DUMMY_HASH):
        return _DUMMY_HASH
    return _HASHER.hash("no person has this password: it only spends the same time")


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether password matches stored_hash. Without a hash (unknown address, or a person
    who has none yet) a dummy hash is verified instead, so both take the same time."""
    presented = password[:MAX_LENGTH]  # an overlong one is still hashed: the answer must not come faster
    try:
        matched = _HASHER.verify(stored_hash or _dummy_hash(), presented)
    except (VerificationError, InvalidHashError):
        return False
    return matched and bool(stored_hash) and len(password) <= MAX_LENGTH


def needs_rehash(stored_hash: str) -> bool:
    """Whether a hash was made with other parameters than today's (rehash it on sign-in)."""
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
