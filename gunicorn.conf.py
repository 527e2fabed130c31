"""Gunicorn settings for the ImprovMX webhook archive: `gunicorn -c gunicorn.conf.py app:app`.

Nothing here names a path or a user, so the same file serves a checkout, CI and the systemd
unit. Two settings come from the environment (GUNICORN_BIND, WEB_CONCURRENCY); any other one
can be changed through gunicorn's own GUNICORN_CMD_ARGS or the command line, which gunicorn
applies after this file.
"""

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys

from gunicorn import glogging
from gunicorn.errors import HaltServer

# Loopback only by default: Caddy on the same host is the only client. On a scaled-out app
# host GUNICORN_BIND adds the private address Caddy dials (comma-separated binds, e.g.
# "127.0.0.1:42010,10.0.0.11:42010").
bind = [addr.strip() for addr in os.environ.get("GUNICORN_BIND", "127.0.0.1:42010").split(",") if addr.strip()]


def _cores() -> int:
    """CPUs this process may run on (honours cpusets and systemd's AllowedCPUs=)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * _cores() + 1)

# gthread, not sync: Caddy streams request bodies to us unbuffered, so a client uploading a
# 70 MB message over a slow link holds its worker for minutes. A sync worker would be
# blocked for all of that (gunicorn's docs warn of slow-client denial of service behind a
# non-buffering proxy); a gthread worker parks the slow upload on one thread and keeps
# serving on the others. Threads rather than gevent/eventlet because pymongo is
# thread-safe and needs no monkey patching.
worker_class = "gthread"
threads = 4

# No preload_app: each worker builds the app (its own MongoClient, pymongo clients are not
# fork-safe, and its own background threads) after the fork. The code is shared instead:
# the master imports the application's modules, never the app (see _share_application_code).
preload_app = False

# gthread workers heartbeat from their main loop, not per request, so `timeout` only catches
# a wedged worker; it is generous because decoding a 70 MB payload's base64 attachments is
# CPU-bound. graceful_timeout lets an in-flight 70 MB upload at ~5 Mbit/s finish during a
# reload or stop (the systemd unit's TimeoutStopSec is longer still).
timeout = 120
graceful_timeout = 120
# Longer than the idle time of Caddy's upstream connections (keepalive 30s in the
# Caddyfile), so gunicorn never closes a connection Caddy is about to reuse.
keepalive = 75

# Recycle workers now and then to cap slow memory growth; the jitter keeps them from all
# restarting at once.
max_requests = 2000
max_requests_jitter = 200

proc_name = "improvmx-webhook"

# Check the settings in the master before any worker is forked. A worker that exits on a
# configuration error is simply forked again, many times a second, while the master keeps
# listening (gunicorn halts only for its own boot-error codes), and systemd sees it "active".
# The check runs in a child interpreter, before the master imports the code it shares
# (_share_application_code): settings or code that cannot load then stop the start or the
# reload with one line, and never leave the master holding half-imported modules.
_SETTINGS_CHECK = [sys.executable, "-c", "from improvmx_archive.config import exit_if_invalid; exit_if_invalid()"]


def _settings_error() -> str | None:
    """The one-line configuration error, or None when the settings are valid."""
    result = subprocess.run(_SETTINGS_CHECK, capture_output=True, text=True, timeout=60)
    if result.returncode == 0:
        return None
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "configuration check failed"


def on_starting(server) -> None:
    """In the master, before it listens or forks: a configuration error stops start-up;
    then the metrics directory is emptied (see _fresh_metrics_directory) and the
    application's code imported for the workers to share."""
    error = _settings_error()
    if error:
        print(error, file=sys.stderr, flush=True)
        sys.exit(2)
    _fresh_metrics_directory()
    _share_application_code(server)


def on_reload(server) -> None:
    """On HUP, before new workers are forked: a broken configuration stops the service with
    the message rather than leaving it up with workers that can never boot; otherwise the
    shared code is imported afresh, so the new workers run the code now on disk."""
    error = _settings_error()
    if error:
        raise HaltServer(error, 2)
    _share_application_code(server)


# Shared code. Each worker would otherwise import the same ~25 MiB of modules (Flask,
# pymongo, the archive's own) on its own, 2 x cores + 1 times on a small VPS that also runs
# MongoDB. The master imports them once before it forks, so the workers share those pages
# copy-on-write; gc.freeze() keeps the collector from writing to (and so copying) them.
# Importing a module has no side effect here: no client, no thread, no settings read (the
# settings check above imports the package in a child first, so broken code never gets here).
# A HUP drops every module the import brought (the standard library's excepted) and imports
# them again. A dependency upgraded with compiled code needs a restart, not a reload: the
# installer restarts the service whenever requirements change. Another app served with this
# file (the benchmarks' reference receivers) shares nothing, and neither does a server run
# with --reload (e.g. `./dev.sh --reload`): it restarts workers from the master on a file
# change, and a master holding the code would hand them the old one.
_SHARED_CODE = {"app:app": "improvmx_archive"}  # the served app -> the package its workers import


def _share_application_code(server) -> None:
    """Import (again, after a HUP) the application's modules in the master."""
    import gc
    import importlib

    entry = _SHARED_CODE.get(getattr(server.app, "app_uri", None))
    if entry is None or server.cfg.reload:
        return
    gc.unfreeze()
    shared = getattr(server, "shared_packages", set())
    for name in [name for name in sys.modules if name.partition(".")[0] in shared]:
        del sys.modules[name]
    gc.collect()
    before = set(sys.modules)
    importlib.import_module(entry)
    server.shared_packages = {name.partition(".")[0] for name in set(sys.modules) - before} - \
        set(sys.stdlib_module_names) - {"gunicorn", "__main__"}
    gc.freeze()


# Stop signals (TERM, INT, QUIT) must work at every moment of a worker's life. gunicorn would
# lose one that arrives between the fork and the worker's own handlers (the worker then runs
# on until graceful_timeout), so the master blocks them just before the fork. The new worker
# then, first thing, unblocks them with a handler that simply exits: while it boots it has no
# request to finish, and a boot that hangs or fails (MongoDB unreachable, an import error)
# must not make it deaf to a stop. Once booted it takes gunicorn's graceful handlers.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_while_booting(signum, frame) -> None:
    os._exit(0)


def _stop_means_exit() -> None:
    for stop in _STOP_SIGNALS:
        signal.signal(stop, _exit_while_booting)


def pre_fork(server, worker) -> None:
    """In the master, just before it forks a worker."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def post_fork(server, worker) -> None:
    """In the worker, right after the fork: stop signals work from here on, and the worker
    gets SIGTERM (a graceful stop) if its master dies, so none outlives a killed master."""
    _stop_means_exit()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != server.pid:  # the master died before the request above took effect
        os._exit(0)
    # gunicorn installs its graceful handlers before it loads the app; keep exiting on a stop
    # until the app has loaded.
    install_gunicorn_handlers = worker.init_signals

    def init_signals() -> None:
        install_gunicorn_handlers()
        _stop_means_exit()

    worker.init_signals = init_signals


def post_worker_init(worker) -> None:
    """In the worker, once the app is loaded: a stop now lets requests in flight finish."""
    signal.signal(signal.SIGTERM, worker.handle_exit)
    signal.signal(signal.SIGINT, worker.handle_quit)
    signal.signal(signal.SIGQUIT, worker.handle_quit)


# And in the master right after the fork.
os.register_at_fork(after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS))

# systemd manages the process (signals HUP/TERM/TTIN/TTOU); gunicorn's control socket would
# otherwise be created under the service user's $HOME, which the unit makes inaccessible.
control_socket_disable = True

# Both logs go to stdout/stderr, i.e. the journal under systemd.
accesslog = "-"
errorlog = "-"
# %(h)s is REMOTE_ADDR after the app's ProxyFix rewrote it in place, i.e. the client address
# the app saw (the right-most X-Forwarded-For entry, which Caddy sets); xff= shows the header
# as Caddy sent it and rid= ties the line to the app's own request log.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms xff="%({x-forwarded-for}i)s" rid=%({x-request-id}o)s "%(a)s"'

# The segment after /webhook/ (WEBHOOK_SECRET) or after a web UI message's /inline/ (an
# image grant): the characters RFC 3986 allows in a path segment.
_SECRET_IN_PATH = re.compile(r"(/webhook/|/ui/emails/[0-9a-fA-F]{24}/inline/)[A-Za-z0-9._~%!$&'()*+,;=:@-]+")
# Request headers and environ keys whose values are credentials; dropped from the log atoms
# so not even a custom access_log_format can print them.
_CREDENTIAL_ATOMS = ("{authorization}i", "{http_authorization}e", "{proxy-authorization}i",
                     "{http_proxy_authorization}e", "{cookie}i", "{http_cookie}e")


def mask_secrets(text: str) -> str:
    """Replace the secret in /webhook/<secret> (WEBHOOK_SECRET) and UI image grants with ***."""
    return _SECRET_IN_PATH.sub(r"\1***", text)


class _MaskSecretsFilter(logging.Filter):
    """Render each record and mask secret webhook paths before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_secrets(record.getMessage()), ()
        return True


class ArchiveLogger(glogging.Logger):
    """gunicorn's logger, minus credentials: the webhook secret in request paths (access and
    error log alike) is masked and credential headers are not available to the format."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, _MaskSecretsFilter) for f in log.filters):
                log.addFilter(_MaskSecretsFilter())

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in _CREDENTIAL_ATOMS:
            atoms.pop(key, None)
        return atoms


logger_class = ArchiveLogger


# Prometheus metrics across workers (improvmx_archive/metrics.py): every worker keeps its
# values in files under PROMETHEUS_MULTIPROC_DIR, which must be empty when the service
# starts (stale files would add a previous run's counts). Under systemd it is
# $RUNTIME_DIRECTORY/metrics (tmpfs, removed at stop); elsewhere a fresh temporary
# directory removed at exit, unless the operator names one.
_METRICS_TEMPORARY_PREFIX = "improvmx-metrics-"


def _metrics_directory() -> str:
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "metrics")
    return tempfile.mkdtemp(prefix=_METRICS_TEMPORARY_PREFIX)


def _fresh_metrics_directory() -> None:
    """In the master, before the first worker: an empty metrics directory for this run."""
    directory = _metrics_directory()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def child_exit(server, worker) -> None:
    """In the master when a worker exits: drop its live gauges from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics directory if _fresh_metrics_directory made it (decided by its name, as a HUP
    re-reads this file and forgets any variable set here)."""
    import shutil
    import tempfile

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.dirname(directory) == tempfile.gettempdir() and \
            os.path.basename(directory).startswith(_METRICS_TEMPORARY_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
