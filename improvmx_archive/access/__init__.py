"""People, keys, the visibility rule and the audit trail: who is asking and what they may see.

The door is small on purpose:
- principal.py   Principal: who is asking (an operator key, or a person through a key or a
                 session), with role, grants and scopes; loaded afresh on every request.
- visibility.py  the visibility rule: one MongoDB filter per principal, and who may send as whom.
- scoped.py      ScopedArchive: the archive as one principal sees it; every web, IMAP and
                 sending read goes through it, so the rule is enforced in one place.
- authn.py       bearer keys to a Principal, require_access(scope) for routes, g.principal.
- people.py      the people store (name, email, role, grants, disabled, password hash).
- keys.py        personal API keys: shown once, kept as a SHA-256, scoped, expiring, revocable.
- passwords.py   argon2id password hashes for signing in to the UI.
- team.py        every change to people, keys and passwords and every sign-in, one function each.
- commands.py    `users` and `keys` operator commands, over team.py.
- audit.py       the hash-chained audit trail: record(), verify, trim, GET /audit's pages.
"""
