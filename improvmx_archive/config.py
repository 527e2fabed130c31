"""Settings read once from the environment (and a `.env` file), validated up front.

Every mistake an operator can make here stops start-up with a one-line ConfigError that
names the variable, so the service never runs half-configured or with an open API.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus, urlsplit

from dotenv import dotenv_values
from limits import parse_many

DEFAULT_DB = "webmail_improvmx"
MB = 1024 * 1024

# ImprovMX sends every webhook from this address (its webhook documentation, "Security").
IMPROVMX_SOURCE_IP = "15.237.103.194"

DEFAULT_LIMITS = {
    "RATELIMIT_GLOBAL": "200 per day;50 per hour",
    "RATELIMIT_WEBHOOK": "200 per minute",
    "RATELIMIT_DOCS": "60 per minute",
    "RATELIMIT_HEALTH": "30 per minute",
    "RATELIMIT_LIST": "20 per minute",
    "RATELIMIT_DETAIL": "30 per minute",
    "RATELIMIT_DOWNLOAD": "10 per minute",
    "RATELIMIT_METRICS": "60 per minute",
    "RATELIMIT_UI": "300 per minute",
    "RATELIMIT_IMPORT": "60 per minute",
    # Every API request made with a valid key, counted per person (all their keys) or for the
    # operator keys together, instead of RATELIMIT_GLOBAL's per-address count (docs/security.md).
    "RATELIMIT_AUTHENTICATED": "2000 per hour;20000 per day",
}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable and what to do."""


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _number(env: dict[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}")
    return value


def _whole_megabytes(env: dict[str, str], name: str, default: int) -> int:
    """A whole number of MB: Caddy's matching body cap compares integers, and both must agree."""
    value = _number(env, name, default, 1)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number of megabytes")
    return int(value)


def _csv(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def _mongo_uri(env: dict[str, str]) -> str:
    """MONGO_URI wins; otherwise the guide's MONGO_USER/MONGO_PASS/MONGO_HOST, safely quoted."""
    uri = env.get("MONGO_URI", "").strip()
    if uri:
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError("MONGO_URI must start with mongodb:// or mongodb+srv://")
        return uri
    host = env.get("MONGO_HOST", "").strip()
    if not host:
        raise ConfigError("Set MONGO_URI (or MONGO_HOST with MONGO_USER and MONGO_PASS)")
    user = env.get("MONGO_USER", "")
    password = env.get("MONGO_PASS", "")
    if bool(user) != bool(password):
        raise ConfigError("MONGO_USER and MONGO_PASS must be set together")
    credentials = f"{quote_plus(user)}:{quote_plus(password)}@" if user else ""
    return f"mongodb://{credentials}{host}/"


def _limit(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip() or DEFAULT_LIMITS[name]
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"{name} is not a rate limit such as '30 per minute': {value!r}") from None
    return value


def _networks(env: dict[str, str], name: str) -> tuple[ipaddress._BaseNetwork, ...]:
    networks = []
    for item in _csv(env.get(name)):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name} holds {item!r}, which is not an IP address or CIDR") from None
    return tuple(networks)


def _spool_dir(env: dict[str, str]) -> Path:
    if env.get("SPOOL_DIR", "").strip():
        return Path(env["SPOOL_DIR"].strip())
    if env.get("STATE_DIRECTORY", "").strip():
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "spool"
    return Path("spool")


def _background_tasks(env: dict[str, str]) -> str:
    """BACKGROUND_TASKS: auto (in gunicorn workers only, not in flask commands or tests),
    true or false."""
    raw = env.get("BACKGROUND_TASKS", "").strip().lower()
    if raw in {"", "auto"}:
        return "auto"
    try:
        return "on" if _flag(env, "BACKGROUND_TASKS", True) else "off"
    except ConfigError:
        raise ConfigError(f"BACKGROUND_TASKS must be auto, true or false, not {raw!r}") from None


def _tokens(env: dict[str, str], name: str) -> tuple[str, ...]:
    tokens = tuple(_csv(env.get(name)))
    if any(len(token) < 16 for token in tokens):
        raise ConfigError(f"{name}: every token must be at least 16 characters long")
    return tokens


def _notify_urls(env: dict[str, str]) -> tuple[str, ...]:
    """NOTIFY_URL: absolute http(s) URLs; the error never repeats a URL (it may hold credentials)."""
    urls = tuple(_csv(env.get("NOTIFY_URL")))
    for position, url in enumerate(urls, 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"NOTIFY_URL: entry {position} is not an absolute http:// or https:// URL")
    if len(set(urls)) != len(urls):
        raise ConfigError("NOTIFY_URL lists the same URL twice")
    return urls


def _public_url(env: dict[str, str]) -> str:
    url = env.get("PUBLIC_URL", "").strip().rstrip("/")
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise ConfigError("PUBLIC_URL must be the archive's absolute https:// address, e.g. https://mail.example.com")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment, already validated."""

    mongo_uri: str
    mongo_db: str = DEFAULT_DB
    api_keys: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    mongo_timeout_ms: int = 5000
    max_body_bytes: int = 70 * MB
    large_body_bytes: int = 8 * MB  # bodies above this wait for one of large_body_slots
    large_body_slots: int = 2  # per host; 0: no limit
    large_body_wait: float = 60.0  # seconds a large body waits for a slot before going ahead
    trusted_proxy_count: int = 1
    webhook_secret: str = ""
    webhook_allowed_networks: tuple[ipaddress._BaseNetwork, ...] = ()
    cors_origins: tuple[str, ...] = ()
    ratelimit_enabled: bool = True
    ratelimit_storage_uri: str = ""
    limits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    spool_dir: Path = Path("spool")
    spool_replay_interval: float = 30.0
    background_tasks: str = "auto"  # "auto": only in gunicorn workers; "on"; "off"
    blob_gc_interval: float = 6 * 3600.0  # seconds; 0 turns periodic orphan collection off
    search_index_interval: float = 2.0  # seconds between passes of the search indexer
    metrics_tokens: tuple[str, ...] = ()  # empty: any API key may scrape /metrics
    ui_enabled: bool = True
    ui_session_hours: float = 12.0
    public_url: str = ""  # the archive's external address, for links in notifications
    notify_urls: tuple[str, ...] = ()
    notify_secret: str = ""
    notify_max_hours: float = 24.0
    delete_tombstone_days: float = 7.0
    retention_days: float = 0.0  # 0: keep forever
    retention_keep_unprocessed: bool = False
    retention_interval: float = 3600.0  # seconds between retention passes across all hosts
    audit_retention_days: float = 365.0  # audit entries older than this are trimmed; 0: kept forever
    log_level: str = "INFO"
    sending: "SendingSettings" = field(default_factory=lambda: SendingSettings())

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv_path: str | None = ".env") -> "Settings":
        """Read settings; variables in the real environment override those in .env (or in
        the file IMPROVMX_ENV_FILE names, as the operator command sets it)."""
        env = {}
        named = (os.environ if environ is None else environ).get(ENV_FILE_VARIABLE)
        if named and dotenv_path == ".env":
            env.update(_named_env_file(named))
        elif dotenv_path and Path(dotenv_path).is_file():
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ if environ is None else environ)

        api_keys = tuple(_csv(env.get("API_KEY")))
        if not api_keys:
            raise ConfigError("API_KEY is not set: set it to a long random token (comma-separate several to rotate)")
        if any(len(key) < 16 for key in api_keys):
            raise ConfigError("API_KEY: every key must be at least 16 characters long")

        mongo_uri = _mongo_uri(env)
        ratelimit_enabled = _flag(env, "RATELIMIT_ENABLED", True)
        storage_uri = env.get("RATELIMIT_STORAGE_URI", "").strip() or mongo_uri
        if not storage_uri.startswith(("mongodb://", "mongodb+srv://", "redis://", "rediss://", "memory://")):
            raise ConfigError("RATELIMIT_STORAGE_URI must be a mongodb:// or redis:// URI (shared by every "
                              "worker) or memory:// (one count per process: tests only)")
        cors_origins = tuple(_csv(env.get("CORS_ORIGINS")))
        if "*" in cors_origins:
            raise ConfigError("CORS_ORIGINS must list origins explicitly; '*' is refused")
        secret = env.get("WEBHOOK_SECRET", "").strip()
        if secret and (len(secret) < 16 or "/" in secret):
            raise ConfigError("WEBHOOK_SECRET must be at least 16 characters and contain no '/'")
        notify_urls = _notify_urls(env)
        notify_secret = env.get("NOTIFY_SECRET", "").strip()
        if notify_urls and len(notify_secret) < 16:
            raise ConfigError("NOTIFY_SECRET must be set (at least 16 characters) when NOTIFY_URL is")
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")

        return cls(
            mongo_uri=mongo_uri,
            mongo_db=env.get("MONGO_DB", "").strip() or DEFAULT_DB,
            api_keys=api_keys,
            domains=tuple(domain.lower().lstrip("@") for domain in _csv(env.get("DOMINIO"))),
            mongo_timeout_ms=int(_number(env, "MONGO_TIMEOUT_MS", 5000, 100)),
            max_body_bytes=_whole_megabytes(env, "MAX_BODY_MB", 70) * MB,
            large_body_bytes=_whole_megabytes(env, "LARGE_BODY_MB", 8) * MB,
            large_body_slots=int(_number(env, "LARGE_BODY_SLOTS", 2, 0)),
            large_body_wait=_number(env, "LARGE_BODY_WAIT", 60, 0),
            trusted_proxy_count=int(_number(env, "TRUSTED_PROXY_COUNT", 1, 0)),
            webhook_secret=secret,
            webhook_allowed_networks=_networks(env, "WEBHOOK_ALLOWED_IPS"),
            cors_origins=cors_origins,
            ratelimit_enabled=ratelimit_enabled,
            ratelimit_storage_uri=storage_uri,
            limits={name: _limit(env, name) for name in DEFAULT_LIMITS},
            spool_dir=_spool_dir(env),
            spool_replay_interval=_number(env, "SPOOL_REPLAY_INTERVAL", 30, 1),
            background_tasks=_background_tasks(env),
            blob_gc_interval=_number(env, "BLOB_GC_INTERVAL", 6 * 3600, 0),
            search_index_interval=_number(env, "SEARCH_INDEX_INTERVAL", 2, 0.5),
            metrics_tokens=_tokens(env, "METRICS_TOKEN"),
            ui_enabled=_flag(env, "UI_ENABLED", True),
            ui_session_hours=_number(env, "UI_SESSION_HOURS", 12, 0.1),
            public_url=_public_url(env),
            notify_urls=notify_urls,
            notify_secret=notify_secret,
            notify_max_hours=_number(env, "NOTIFY_MAX_HOURS", 24, 0.1),
            delete_tombstone_days=_number(env, "DELETE_TOMBSTONE_DAYS", 7, 0.01),
            retention_days=_number(env, "RETENTION_DAYS", 0, 0),
            retention_keep_unprocessed=_flag(env, "RETENTION_KEEP_UNPROCESSED", False),
            retention_interval=_number(env, "RETENTION_INTERVAL", 3600, 60),
            audit_retention_days=_number(env, "AUDIT_RETENTION_DAYS", 365, 0),
            log_level=log_level,
            sending=_sending(env),
        )


EXIT_CONFIG_ERROR = 2

# The settings file to read instead of ./.env: the operator command `improvmx-archive` points
# it at the service's own, so a command run from any directory sees what the service sees.
ENV_FILE_VARIABLE = "IMPROVMX_ENV_FILE"


def _named_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return {k: v for k, v in dotenv_values(stream=handle).items() if v is not None}
    except PermissionError:
        raise ConfigError(f"{ENV_FILE_VARIABLE}: {path} is not readable by this user; run the command as root "
                          "(sudo) or as the service user") from None
    except OSError as error:
        raise ConfigError(f"{ENV_FILE_VARIABLE}: cannot read {path} ({error.strerror or type(error).__name__})") from None


def error_line(error: ConfigError) -> str:
    """The one line an operator sees for a configuration error, wherever start-up stops."""
    return f"improvmx-webhook: configuration error: {error}"



def exit_if_invalid() -> None:
    """Exit 2 with the one-line message when the settings are invalid. gunicorn's master runs
    this (in a child interpreter, so the master never imports the app) before it forks a
    worker: a configuration error then stops the service instead of boot-looping workers."""
    try:
        Settings.from_env()
    except ConfigError as error:
        print(error_line(error), file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)


# Sending through ImprovMX's SMTP relay (outbound/): off until a host and credentials are set.
SMTP_SECURITY_MODES = ("starttls", "tls", "plain")
SMTP_IP_FAMILIES = ("any", "ipv4", "ipv6")
DEFAULT_SMTP_PORTS = {"starttls": 587, "tls": 465, "plain": 25}


@dataclass(frozen=True)
class SmtpLogin:
    """One SMTP login. The password is kept out of repr so no log or traceback shows it."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class SendingSettings:
    """SMTP_* and SEND_* settings. `logins` maps an alias (or `@domain`) to its own login
    from SMTP_CREDENTIALS_FILE; `login` (SMTP_USERNAME/SMTP_PASSWORD) serves every other From."""

    host: str = "smtp.improvmx.com"
    port: int = 587
    security: str = "starttls"
    login: SmtpLogin | None = None
    logins: dict[str, SmtpLogin] = field(default_factory=dict, repr=False)
    ip_family: str = "any"
    ca_file: str = ""
    connect_timeout: float = 5.0
    timeout: float = 60.0
    daily_limit: int = 200
    retry_seconds: float = 60.0
    max_hours: float = 48.0
    max_bytes: int = 20 * MB
    lease_seconds: float = 600.0  # a sender silent this long is taken for dead (outbound/outbox.py)

    @property
    def enabled(self) -> bool:
        return bool(self.host and (self.login or self.logins))

    def login_for(self, address: str) -> SmtpLogin | None:
        """The login to send From this address: its own, its domain's, else the default."""
        address = address.strip().lower()
        domain = "@" + address.rsplit("@", 1)[-1]
        return self.logins.get(address) or self.logins.get(domain) or self.login


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _smtp_logins(env: dict[str, str]) -> dict[str, SmtpLogin]:
    """SMTP_CREDENTIALS_FILE: a JSON object {"alias@x.com" or "@x.com": {"username", "password"}}.
    Errors name the file and the entry, never a password."""
    path = env.get("SMTP_CREDENTIALS_FILE", "").strip()
    if not path:
        return {}
    import json
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"SMTP_CREDENTIALS_FILE {path} cannot be read ({error.strerror})") from None
    except ValueError:
        raise ConfigError(f"SMTP_CREDENTIALS_FILE {path} is not valid JSON") from None
    if not isinstance(entries, dict):
        raise ConfigError("SMTP_CREDENTIALS_FILE must hold a JSON object of address -> {username, password}")
    logins = {}
    for address, entry in entries.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry.get(k)
                                                  for k in ("username", "password")) or "@" not in address:
            raise ConfigError(f"SMTP_CREDENTIALS_FILE: entry {address!r} needs an address (or @domain) "
                              "and a non-empty username and password")
        logins[address.strip().lower()] = SmtpLogin(entry["username"], entry["password"])
    return logins


def _sending(env: dict[str, str]) -> SendingSettings:
    host = env.get("SMTP_HOST", "").strip() or "smtp.improvmx.com"
    security = env.get("SMTP_SECURITY", "").strip().lower() or "starttls"
    if security not in SMTP_SECURITY_MODES:
        raise ConfigError("SMTP_SECURITY must be starttls or tls")
    if security == "plain" and not _is_loopback(host):
        raise ConfigError("SMTP_SECURITY=plain is only allowed for a loopback SMTP_HOST; use starttls or tls")
    family = env.get("SMTP_IP_FAMILY", "").strip().lower() or "any"
    if family not in SMTP_IP_FAMILIES:
        raise ConfigError("SMTP_IP_FAMILY must be any, ipv4 or ipv6")
    username = env.get("SMTP_USERNAME", "").strip()
    password = env.get("SMTP_PASSWORD", "")
    if bool(username) != bool(password):
        raise ConfigError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
    ca_file = env.get("SMTP_CA_FILE", "").strip()
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f"SMTP_CA_FILE {ca_file} is not a readable file")
    port = int(_number(env, "SMTP_PORT", DEFAULT_SMTP_PORTS[security], 1))
    if port > 65535:
        raise ConfigError("SMTP_PORT must be a TCP port (1-65535)")
    return SendingSettings(
        host=host,
        port=port,
        security=security,
        login=SmtpLogin(username, password) if username else None,
        logins=_smtp_logins(env),
        ip_family=family,
        ca_file=ca_file,
        connect_timeout=_number(env, "SMTP_CONNECT_TIMEOUT", 5, 0.5),
        timeout=_number(env, "SMTP_TIMEOUT", 60, 1),
        daily_limit=int(_number(env, "SEND_DAILY_LIMIT", 200, 0)),
        retry_seconds=_number(env, "SEND_RETRY_SECONDS", 60, 1),
        max_hours=_number(env, "SEND_MAX_HOURS", 48, 0.01),
        max_bytes=int(_number(env, "SEND_MAX_MB", 20, 0.01) * MB),
        lease_seconds=_number(env, "SEND_LEASE_SECONDS", 600, 1),
    )
# ---------------------------------------------------------------------------------------------
# The IMAP view (improvmx-imap, improvmx_archive/imap/): its own block, read by that process and
# by `flask imap check`; the web service never needs it.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImapSettings:
    """IMAP_* settings: whether the IMAP view runs, where it listens, its certificate."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 993  # implicit TLS
    starttls_port: int = 0  # 0: no plain port (STARTTLS before any login)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int = 0  # 0: no /metrics listener of its own
    poll_interval: float = 10.0  # seconds between checks for new mail of a selected mailbox
    number_interval: float = 5.0  # seconds between passes of the UID numbering

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv_path: str | None = ".env") -> "ImapSettings":
        env = {}
        if dotenv_path and Path(dotenv_path).is_file():
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ if environ is None else environ)
        enabled = _flag(env, "IMAP_ENABLED", False)
        port = int(_number(env, "IMAP_PORT", 993, 1))
        starttls_port = int(_number(env, "IMAP_STARTTLS_PORT", 0, 0))
        if port > 65535 or starttls_port > 65535:
            raise ConfigError("IMAP_PORT and IMAP_STARTTLS_PORT must be TCP ports (1-65535)")
        if starttls_port and starttls_port == port:
            raise ConfigError("IMAP_STARTTLS_PORT must differ from IMAP_PORT")
        cert = env.get("IMAP_TLS_CERT", "").strip()
        key = env.get("IMAP_TLS_KEY", "").strip()
        if enabled and not (cert and key):
            raise ConfigError("IMAP_TLS_CERT and IMAP_TLS_KEY must name the certificate chain and key (PEM) "
                              "when IMAP_ENABLED is true: the IMAP view speaks only TLS")
        metrics_port = int(_number(env, "IMAP_METRICS_PORT", 0, 0))
        if metrics_port > 65535:
            raise ConfigError("IMAP_METRICS_PORT must be a TCP port (1-65535) or 0")
        return cls(
            enabled=enabled,
            host=env.get("IMAP_HOST", "").strip() or "0.0.0.0",
            port=port,
            starttls_port=starttls_port,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            metrics_port=metrics_port,
            poll_interval=_number(env, "IMAP_POLL_INTERVAL", 10, 1),
            number_interval=_number(env, "IMAP_NUMBER_INTERVAL", 5, 0.5),
        )
