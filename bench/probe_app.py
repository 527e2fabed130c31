"""The archive with one part of the webhook path switched off, for `python -m bench.webhook_path`.

Measurement only (never served in production): PROBE names what is removed, comma-separated:
``no-tombstone-check`` (Deleter.bury_if_deleted), ``no-request-hooks`` (every app-level
before/after-request function: request log, metrics, security and rate-limit headers).
"""

from __future__ import annotations

import os

from improvmx_archive import create_app

app = create_app()
_probe = set(filter(None, os.environ.get("PROBE", "").split(",")))
if "no-tombstone-check" in _probe:
    app.extensions["archive"].deleter.bury_if_deleted = lambda key, email_id: None
if "no-request-hooks" in _probe:
    app.before_request_funcs[None] = []
    app.after_request_funcs[None] = []
