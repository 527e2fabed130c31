"""The IMAP process's own Prometheus metrics, served on IMAP_METRICS_PORT (one process: no
multiprocess directory; the web service's /metrics is gunicorn's and stays separate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
CONNECTIONS = Counter("imap_connections", "IMAP connections accepted", registry=REGISTRY)
CONNECTIONS_OPEN = Gauge("imap_connections_open", "IMAP connections open now", registry=REGISTRY)
LOGINS = Counter("imap_logins", "IMAP logins by result (ok, wrong-key, wrong-user, scope, revoked, blocked, "
                 "unavailable, ...)", ["result"], registry=REGISTRY)
COMMANDS = Counter("imap_commands", "IMAP commands received, by command", ["command"], registry=REGISTRY)
NUMBERED = Counter("imap_messages_numbered", "Messages given an IMAP UID by this process", registry=REGISTRY)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on port (loopback by default: scrape it locally or through a proxy)."""
    start_http_server(port, addr=host, registry=REGISTRY)
