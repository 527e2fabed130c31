"""Processes, HTTP and memory measurement shared by the figures.

The three systems (the archive, the naive receiver, the parse-only ceiling) run as real
gunicorn processes with identical settings, each on its own loopback port and its own
database of one shared MongoDB-compatible server.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import shutil

import psutil

from devtools.processes import ManagedProcess, gunicorn_serving, mongo_uri, secantus

API_KEY = "bench-api-key-0123456789abcdef"
APP_SPECS = {
    "ours": "app:app",
    "naive": "bench.naive_app:create_naive_app()",
    "ceiling": "bench.naive_app:create_ceiling_app()",
    "original": "bench.original_app:app",
}
# The reference receivers' processes import bench/reference_site/sitecustomize.py first.
REFERENCE_SITE = Path(__file__).resolve().parent / "reference_site"
# Only when the repo has no gunicorn.conf.py yet: a plain sync gunicorn that lets a 50 MB
# upload finish on a slow machine.
FALLBACK_ARGS = ["--timeout", "300", "--workers", "4"]


# ---------------------------------------------------------------- statistics

def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation): p99 of 50 samples is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float]) -> dict[str, float | None]:
    """Min, median, max and the relative half-range, for figures measured over rounds."""
    if not values:
        return {"min": None, "median": None, "max": None, "rel_spread": None}
    mid = statistics.median(values)
    return {"min": min(values), "median": mid, "max": max(values),
            "rel_spread": (max(values) - min(values)) / 2 / mid if mid else None}


# ---------------------------------------------------------------- HTTP

@dataclass
class Reply:
    status: int
    body: bytes  # empty when the body was streamed to nowhere (sink=True)
    size: int  # body bytes received
    header_bytes: int  # status line and headers as sent on the wire
    seconds: float

    def json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            return {}


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int, timeout: float = 600.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                sink: bool = False, chunk: int = 256 * 1024) -> Reply:
        """Send one request and read the whole answer. With sink=True the body is read in
        chunks and discarded (only its length is kept), as a streaming client would."""
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            conn = self._connection()
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                if sink:
                    data, size = b"", 0
                    while True:
                        piece = response.read(chunk)
                        if not piece:
                            break
                        size += len(piece)
                else:
                    data = response.read()
                    size = len(data)
                elapsed = time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                self.close()
                if attempt == 2 or body is not None and isinstance(error, BrokenPipeError):
                    return Reply(599, str(error).encode(), 0, 0, time.perf_counter() - started)
                continue
            header_bytes = len(f"HTTP/1.1 {response.status} {response.reason}\r\n") + sum(
                len(k) + len(v) + 4 for k, v in response.getheaders()) + 2
            if response.will_close:
                self.close()
            return Reply(response.status, data, size, header_bytes, elapsed)
        raise AssertionError("unreachable")


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def send_all(port: int, bodies: list[bytes], concurrency: int, path: str = "/webhook") -> dict:
    """POST every body with `concurrency` sender threads; each sender takes the next body.

    Returns wall time, per-request latencies and outcome counts.
    """
    lock = threading.Lock()
    position = iter(range(len(bodies)))
    latencies: list[float] = [0.0] * len(bodies)
    outcomes: list[str] = [""] * len(bodies)

    def sender() -> None:
        client = Client(port)
        try:
            while True:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                reply = client.request("POST", path, bodies[index])
                latencies[index] = reply.seconds
                ok = reply.status == 200 and reply.json().get("success") is True
                outcomes[index] = "ok" if ok else f"http {reply.status}"
        finally:
            client.close()

    threads = [threading.Thread(target=sender) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"wall": wall, "latencies": latencies, "outcomes": outcomes,
            "ok": outcomes.count("ok"), "failed": len(outcomes) - outcomes.count("ok")}


# ---------------------------------------------------------------- memory

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value, _unit = line.split()
                out[key.rstrip(":")] = int(value) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs '5'); False where not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def worker_pids(server: ManagedProcess) -> list[int]:
    master = psutil.Process(server.proc.pid)
    return [child.pid for child in master.children(recursive=False)]


class RssSampler:
    """Samples the summed RSS of processes every few milliseconds (a cross-check of VmHWM,
    and the one true peak of several workers together: their own peaks fall at different times)."""

    def __init__(self, *pids: int, interval: float = 0.005):
        self.pids, self.interval = pids, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        procs = [psutil.Process(pid) for pid in self.pids]
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(proc.memory_info().rss for proc in procs))
            except psutil.Error:
                return
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- processes

@dataclass
class Bench:
    """The shared database server and the gunicorn processes started from it."""

    workdir: Path
    mongo_uri: str | None = None
    workers: int | None = None
    db_prefix: str = "bench"
    servers: list[ManagedProcess] = field(default_factory=list)
    database: ManagedProcess | None = None

    def start_database(self) -> str:
        if self.mongo_uri is None:
            self._start_secantus()
        return self.mongo_uri

    def _start_secantus(self) -> None:
        self.database = secantus(self.workdir / "secantus-data", log_path=self.workdir / "logs" / "secantus.log")
        self.database.start(timeout=60)
        self.mongo_uri = mongo_uri(self.database.port)

    def fresh_database(self) -> bool:
        """Give the next figure an empty SecantusDB (a new process, a new data directory).

        SecantusDB's query and write costs grow with everything the server holds, not just the
        collection queried (after the ingest figure's ~3 GB, a 1,000-message listing took
        seconds), so figures must not inherit each other's data. A given --mongo-uri server is
        shared; its bench databases are dropped instead. Returns True if a new server started.
        """
        if self.database is None:
            return False
        self.database.stop(timeout=120)
        shutil.rmtree(self.workdir / "secantus-data", ignore_errors=True)
        self._start_secantus()
        return True

    def reset(self) -> None:
        """An empty database server for what follows: a new SecantusDB, or (--mongo-uri) the
        bench databases dropped."""
        if not self.fresh_database():
            drop_bench_databases(self.mongo_uri, self.db_prefix)

    def db_name(self, system: str, figure: str) -> str:
        return f"{self.db_prefix}_{figure}_{system}"

    def env(self, system: str, figure: str, **extra: str) -> dict[str, str]:
        spool = self.workdir / "spool" / f"{figure}-{system}"
        spool.mkdir(parents=True, exist_ok=True)
        return {
            "MONGO_URI": self.mongo_uri,
            "MONGO_DB": self.db_name(system, figure),
            "API_KEY": API_KEY,
            "RATELIMIT_ENABLED": "false",
            # No maintenance thread (spool replay, sweeps) competing with the measured work.
            "BACKGROUND_TASKS": "false",
            "SPOOL_DIR": str(spool),
            "PYTHONUNBUFFERED": "1",
            **({} if APP_SPECS[system] == "app:app" else {"PYTHONPATH": str(REFERENCE_SITE)}),
            **extra,
        }

    def gunicorn_args(self, workers: int | None) -> list[str]:
        args = [] if _has_config() else list(FALLBACK_ARGS)
        workers = workers or self.workers
        if workers:
            args += ["--workers", str(workers)]
        return args

    def start(self, system: str, figure: str, workers: int | None = None, **env: str) -> ManagedProcess:
        server = gunicorn_serving(
            APP_SPECS[system], self.env(system, figure, **env),
            log_path=self.workdir / "logs" / f"{figure}-{system}.log",
            extra_args=self.gunicorn_args(workers),
        )
        server.start(timeout=60)
        self.servers.append(server)
        _wait_ready(server)
        return server

    @contextmanager
    def running(self, systems: tuple[str, ...], figure: str, workers: int | None = None,
                **env: str) -> Iterator[dict[str, ManagedProcess]]:
        started = {}
        try:
            for system in systems:
                started[system] = self.start(system, figure, workers, **env)
            yield started
        finally:
            for server in started.values():
                self.stop(server)

    def stop(self, server: ManagedProcess) -> None:
        server.stop(timeout=60)
        if server in self.servers:
            self.servers.remove(server)

    def close(self) -> None:
        for server in list(self.servers):
            self.stop(server)
        if self.database is not None:
            self.database.stop(timeout=60)


def drop_bench_databases(uri: str, prefix: str) -> None:
    import pymongo

    client = pymongo.MongoClient(uri)
    try:
        for name in client.list_database_names():
            if name.startswith(prefix + "_"):
                client.drop_database(name)
    finally:
        client.close()


def _has_config() -> bool:
    from devtools.processes import REPO_ROOT
    return (REPO_ROOT / "gunicorn.conf.py").exists()


def _wait_ready(server: ManagedProcess, timeout: float = 60.0) -> None:
    """Wait until every worker has booted (the port opens before the workers import the app)."""
    deadline = time.monotonic() + timeout
    client = Client(server.port, timeout=30)
    try:
        while time.monotonic() < deadline:
            try:
                reply = client.request("GET", "/__bench_ready__")
                if reply.status in (200, 401, 404, 405):
                    return
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"{server.name} never answered; log:\n{server.log_text()[-3000:]}")


def _git_head() -> str:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "app.py", "improvmx_archive", "gunicorn.conf.py"],
                           capture_output=True, text=True, cwd=root).stdout.strip()
    return f"{head} (app files modified after it)" if dirty else head


def environment_facts(mongo: str) -> dict:
    """The machine the figures come from."""
    import platform

    import pymongo

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server_version = ""
    try:
        client = pymongo.MongoClient(mongo, serverSelectionTimeoutMS=5000)
        server_version = client.server_info().get("version", "")
        client.close()
    except Exception:  # noqa: BLE001 - informational only
        pass
    secantus_version = ""
    try:
        from importlib.metadata import version
        secantus_version = version("secantusdb")
    except Exception:  # noqa: BLE001
        pass
    gunicorn_conf = _has_config()
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pymongo": pymongo.version,
        "server_version_reported": server_version,
        "secantusdb": secantus_version,
        "gunicorn_conf": "gunicorn.conf.py" if gunicorn_conf else "fallback flags " + " ".join(FALLBACK_ARGS),
        "git_head": _git_head(),
    }
