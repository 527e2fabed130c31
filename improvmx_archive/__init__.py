"""ImprovMX Webhook Archive: receive ImprovMX webhooks, archive every message, serve it back."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

# pymongo uses pyOpenSSL whenever it is installed (it is, for the IMAP view's Twisted TLS),
# and with it loads cryptography and requests (OCSP) into every web worker. The stdlib ssl path
# it falls back to is the one this service has always used: keep it, before pymongo loads.
sys.modules.setdefault("pymongo.pyopenssl_context", None)  # type: ignore[assignment]

import click  # noqa: E402
from flask import Flask
from flask.cli import AppGroup
from flask_cors import CORS
from pymongo.errors import PyMongoError
from werkzeug.middleware.proxy_fix import ProxyFix

from .access.audit import AuditTrail
from .access.authn import Authenticator
from .access.keys import Keys
from .access.people import People
from .admission import LargeBodyGate
from .archive import Archive
from .config import Settings
from .db import make_client
from .errors import register_error_handlers
from .maintenance import start_background_tasks
from .metrics import ArchiveGauges, register_metrics
from .notify import Outbox
from .outbound.outbox import SendOutbox
from .ratelimit import register_rate_limits
from .retention import gauge_reader as retention_gauges
from .requestlog import configure_logging, register_request_log
from .routes import audit as audit_routes  # not `audit`: that name is access.audit's
from .routes import docs, emails, health, transfer, webhook
from .routes import outbound as outbound_routes
from .routes import metrics as metrics_routes  # not `metrics`: that name is the metrics module
from .security import Lockout, register_security
from .spool import Spool
from .ui import register_ui

log = logging.getLogger(__name__)

EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                   "X-RateLimit-Reset", "Content-Disposition", "X-Content-SHA256"]


def create_app(settings: Settings | None = None, *, mongo_client=None) -> Flask:
    """Build the app from validated settings (read from the environment when not given).

    Tests pass a mongomock client; production lets the app open its own MongoClient.
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.cli = CommandsOnDemand(app)
    register_config(app, settings)
    register_request_log(app)
    register_metrics(app)
    register_extensions(app, settings, mongo_client)
    register_blueprints(app)
    register_ui(app, settings)
    register_security(app)
    register_error_handlers(app)
    return app


def register_config(app: Flask, settings: Settings) -> None:
    configure_logging(settings)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    if settings.trusted_proxy_count:
        count = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)


def register_extensions(app: Flask, settings: Settings, mongo_client) -> None:
    operator_command = click.get_current_context(silent=True) is not None  # loaded by `flask ...`
    client = mongo_client if mongo_client is not None else make_client(settings, operator=operator_command)
    database = client[settings.mongo_db]
    app.extensions["mongo_client"] = client
    app.extensions["database"] = database
    app.extensions["archive"] = Archive(database, announce_new_mail=bool(settings.notify_urls),
                                        tombstone_period=timedelta(days=settings.delete_tombstone_days))
    app.extensions["outbox"] = Outbox(database, settings.notify_urls, settings.public_url,
                                      timedelta(hours=settings.notify_max_hours))
    app.extensions["send_outbox"] = SendOutbox(database, retry_seconds=settings.sending.retry_seconds,
                                               max_hours=settings.sending.max_hours,
                                               lease=timedelta(seconds=settings.sending.lease_seconds))
    app.extensions["lockout"] = Lockout(database)
    app.extensions["people"] = People(database)
    app.extensions["keys"] = Keys(database)
    app.extensions["authenticator"] = Authenticator(settings.api_keys, app.extensions["people"],
                                                    app.extensions["keys"])
    app.extensions["audit_trail"] = AuditTrail(database)
    app.extensions["spool"] = Spool(settings.spool_dir)
    # The slot files live beside the spool: local disk, writable under the systemd unit.
    app.extensions["large_bodies"] = LargeBodyGate(settings.spool_dir, settings.large_body_slots,
                                                   settings.large_body_bytes, settings.large_body_wait)
    app.extensions["archive_gauges"] = ArchiveGauges(
        database, readers=[app.extensions["outbox"].publish_gauges, retention_gauges(database),
                           app.extensions["send_outbox"].publish_gauges])
    try:
        app.extensions["archive"].ensure_indexes()
        app.extensions["people"].ensure_indexes()
        app.extensions["keys"].ensure_indexes()
        app.extensions["send_outbox"].ensure_indexes()
        app.extensions["audit_trail"].ensure_indexes()
    except PyMongoError:
        # An operator command reports this itself at once (cli.require_database), not after a second wait.
        app.extensions["database_unreachable_at_start"] = operator_command
        if not operator_command:
            log.warning("MongoDB unreachable at start-up; indexes will be created by `improvmx-archive create-indexes` "
                        "or the next start")
    register_rate_limits(app, settings)
    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), supports_credentials=False,
             allow_headers=["Authorization", "Content-Type"], expose_headers=EXPOSED_HEADERS,
             methods=["GET", "PATCH", "DELETE", "OPTIONS"], max_age=600)
    start_background_tasks(app)


def register_blueprints(app: Flask) -> None:
    for module in (health, webhook, emails, transfer, docs, metrics_routes):
        app.register_blueprint(module.bp)
    app.register_blueprint(outbound_routes.bp)
    app.register_blueprint(audit_routes.bp)


class CommandsOnDemand(AppGroup):
    """`app.cli` that imports cli.py (and the import/export code it pulls in) when a `flask`
    command is first looked up: a gunicorn worker, which never runs one, does not load it."""

    def __init__(self, app: Flask):
        super().__init__()
        self._app, self._loaded = app, False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            from .cli import register_commands

            register_commands(self._app)

    def get_command(self, ctx, name):
        self._load()
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)
