"""Issue 3 over real HTTP: limits and lockout hold across gunicorn workers and app instances.

Three gunicorns (3 workers each, the shipped gunicorn.conf.py) share one SecantusDB
database, and with it the flask-limiter windows and the lockout state, as production does:
  direct_a, direct_b  TRUSTED_PROXY_COUNT=0: nothing in front, clients connect directly;
  proxied             TRUSTED_PROXY_COUNT=1: the test plays Caddy, appending the address of
                      the client it forwards to X-Forwarded-For, after whatever the client sent.
Each test speaks from its own loopback address (127.0.0.x), so tests share nothing but the
servers. To choose the worker that serves a request, the test pauses the other workers
(SIGSTOP) while it is sent; the app's log line ([pid], request id) confirms who served it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.people import People
from improvmx_archive.sample import payload_from_mime, sample_mime

pytestmark = pytest.mark.slow

API_KEY = "multiworker-key-0123456789abcdef"
SECRET = "multiworker-secret-0123456789"
WORKERS = 3
IMPROVMX_IP = "15.237.103.194"
TRUSTED_SENDER = "127.0.0.10"
BEARER = {"Authorization": f"Bearer {API_KEY}"}
BAD_KEY = {"Authorization": "Bearer guessed-key-0123456789abcdef"}
LOCKED = {"success": False, "error": "Too many failed attempts. Please try again later."}
LIST_LIMITED = {"success": False, "error": "Rate limit exceeded: 20 per 1 minute"}
GLOBAL_LIMITED = {"success": False, "error": "Rate limit exceeded: 50 per 1 hour"}
SOURCE_REFUSED = {"success": False, "error": "Source address not allowed"}
TOO_LARGE = {"success": False, "error": "Request body too large"}
# Generous: a worker still loading the app under a busy CI machine must not fail a test.
REPLY_TIMEOUT = 90


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    request_id: str

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    process: processes.ManagedProcess

    @property
    def port(self) -> int:
        return self.process.port

    def log(self) -> str:
        return self.process.log_text()

    def worker_pids(self) -> list[str]:
        return sorted(set(re.findall(r"Booting worker with pid: (\d+)", self.log())))

    def pid_for(self, request_id: str) -> str:
        """The worker that served the request, from the app's per-request log line."""
        found = re.search(rf"\[(\d+)\] INFO improvmx_archive\.request: request id={request_id} ", self.log())
        assert found, f"no request log line for {request_id}"
        return found.group(1)

    def send(self, method: str, path: str, *, ip: str, headers: dict | None = None, body=None) -> Reply:
        """One request on a fresh connection from `ip`, so the kernel hands it to any worker."""
        request_id = uuid.uuid4().hex
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REPLY_TIMEOUT, source_address=(ip, 0))
        try:
            connection.request(method, path, body=body,
                               headers={"Connection": "close", "X-Request-ID": request_id, **(headers or {})})
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read(), request_id)
        finally:
            connection.close()

    @contextmanager
    def only(self, pid: str):
        """Pause every other worker, so the one left accepts whatever is sent meanwhile."""
        others = [int(other) for other in self.worker_pids() if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)

    def send_via(self, pid: str, method: str, path: str, **kwargs) -> Reply:
        """send(), served by worker `pid` (checked against the app's log)."""
        with self.only(pid):
            reply = self.send(method, path, **kwargs)
        assert self.pid_for(reply.request_id) == pid
        return reply


def start(tmp: Path, name: str, uri: str, database: str, proxy_count: int) -> Server:
    env = {
        "API_KEY": API_KEY,
        "MONGO_URI": uri,
        "MONGO_DB": database,
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_STORAGE_URI": uri,
        "RATELIMIT_GLOBAL": "200 per day;50 per hour",
        "RATELIMIT_LIST": "20 per minute",
        "RATELIMIT_WEBHOOK": "5 per minute",
        "TRUSTED_PROXY_COUNT": str(proxy_count),
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOWED_IPS": f"{IMPROVMX_IP},{TRUSTED_SENDER}",
        "MAX_BODY_MB": "1",
        "SPOOL_DIR": str(tmp / f"spool-{name}"),
        "WEB_CONCURRENCY": str(WORKERS),
        "LOG_LEVEL": "INFO",
    }
    server = Server(processes.gunicorn(env, tmp / f"gunicorn-{name}.log").start())
    deadline = time.monotonic() + 60
    while len(server.worker_pids()) < WORKERS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn {name} did not boot {WORKERS} workers; log:\n{server.log()}")
        time.sleep(0.1)
    for pid in server.worker_pids():
        assert server.send_via(pid, "GET", "/readyz", ip="127.0.0.1").status == 200
    return server


@pytest.fixture(scope="module")
def database_name():
    return f"security_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def servers(secantus_server, tmp_path_factory, database_name):
    tmp = tmp_path_factory.mktemp("security-multiworker")
    uri = processes.mongo_uri(secantus_server.port)
    started = {}
    try:
        for name, proxy_count in (("direct_a", 0), ("direct_b", 0), ("proxied", 1)):
            started[name] = start(tmp, name, uri, database_name, proxy_count)
        yield started
    finally:
        for server in started.values():
            server.process.stop()
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(database_name)


@pytest.fixture(scope="module")
def personal_key(servers, secantus_server, database_name):
    """A new person's key: a valid key is counted per person, so a test that spends a
    route's budget with a key needs a key of its own."""
    mongo = MongoClient(processes.mongo_uri(secantus_server.port), serverSelectionTimeoutMS=5000, tz_aware=True)
    people, keys = People(mongo[database_name]), Keys(mongo[database_name])

    def bearer(name: str) -> dict[str, str]:
        person = people.add(name, f"{name}@archive.test", role="admin")
        return {"Authorization": f"Bearer {keys.create(str(person['_id']), name, ['read', 'write'])[0]}"}

    yield bearer
    mongo.close()


@pytest.fixture
def direct_a(servers):
    return servers["direct_a"]


@pytest.fixture
def direct_b(servers):
    return servers["direct_b"]


@pytest.fixture
def proxied(servers):
    return servers["proxied"]


# --- (a) the list limit holds across workers ----------------------------------------------------

def test_21st_list_in_a_minute_is_refused_whichever_worker_serves_it(direct_a, personal_key):
    ip, pids, bearer = "127.0.0.11", direct_a.worker_pids(), personal_key("lister")
    assert len(pids) == WORKERS
    statuses = [direct_a.send_via(pids[n % WORKERS], "GET", "/emails", ip=ip, headers=bearer).status
                for n in range(20)]
    assert statuses == [200] * 20
    for pid in pids:
        refused = direct_a.send_via(pid, "GET", "/emails", ip=ip, headers=bearer)
        assert (refused.status, refused.json()) == (429, LIST_LIMITED)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("20", "0")
        assert refused.headers["X-Content-Type-Options"] == "nosniff"


# --- (b) the lockout holds across workers ------------------------------------------------------

def test_sixth_bad_key_in_five_minutes_blocks_the_ip_on_every_worker(direct_a):
    ip, pids = "127.0.0.12", direct_a.worker_pids()
    statuses = [direct_a.send_via(pids[n % WORKERS], "GET", "/emails", ip=ip, headers=BAD_KEY).status
                for n in range(5)]
    assert statuses == [403] * 5
    for pid in pids:
        for headers in (BAD_KEY, BEARER):
            blocked = direct_a.send_via(pid, "GET", "/emails", ip=ip, headers=headers)
            assert (blocked.status, blocked.json()) == (429, LOCKED)
            assert 890 <= int(blocked.headers["Retry-After"]) <= 900
    assert direct_a.send("GET", "/emails", ip="127.0.0.112", headers=BEARER).status == 200


# --- (c) two instances on one database ---------------------------------------------------------

def test_two_instances_share_the_rate_limit(direct_a, direct_b, database_name, secantus_uri, personal_key):
    ip, bearer = "127.0.0.13", personal_key("shared")
    statuses = [server.send("GET", "/emails", ip=ip, headers=bearer).status
                for server in (direct_a, direct_b) for _ in range(10)]
    assert statuses == [200] * 20
    for server in (direct_a, direct_b):
        refused = server.send("GET", "/emails", ip=ip, headers=bearer)
        assert (refused.status, refused.json()) == (429, LIST_LIMITED)
    with MongoClient(secantus_uri, serverSelectionTimeoutMS=5000) as client:
        assert client[database_name].ratelimit_windows.count_documents({}) > 0


def test_two_instances_share_the_lockout(direct_a, direct_b):
    ip = "127.0.0.14"
    statuses = [direct_a.send("GET", "/emails", ip=ip, headers=BAD_KEY).status for _ in range(3)]
    statuses += [direct_b.send("GET", "/emails", ip=ip, headers=BAD_KEY).status for _ in range(2)]
    assert statuses == [403] * 5
    for server in (direct_a, direct_b):
        blocked = server.send("GET", "/emails", ip=ip, headers=BEARER)
        assert (blocked.status, blocked.json()) == (429, LOCKED)


# --- (d) X-Forwarded-For cannot be used to pick an address -----------------------------------

def test_without_a_proxy_a_spoofed_forwarded_for_changes_nothing(direct_a):
    ip = "127.0.0.15"  # without a key: RATELIMIT_GLOBAL per address (a valid key is counted per person)
    statuses = [direct_a.send("GET", "/emails", ip=ip, headers={"X-Forwarded-For": f"203.0.113.{n}"}
                              ).status for n in range(50)]
    assert statuses == [401] * 50
    refused = direct_a.send("GET", "/emails", ip=ip, headers={"X-Forwarded-For": "203.0.113.99"})
    assert (refused.status, refused.json()) == (429, GLOBAL_LIMITED)

    ip = "127.0.0.16"
    for n in range(5):
        direct_a.send("GET", "/emails", ip=ip, headers={**BAD_KEY, "X-Forwarded-For": f"203.0.113.{n}"})
    blocked = direct_a.send("GET", "/emails", ip=ip, headers={**BEARER, "X-Forwarded-For": "127.0.0.112"})
    assert (blocked.status, blocked.json()) == (429, LOCKED)

    forged = direct_a.send("POST", f"/webhook/{SECRET}", ip="127.0.0.17", body=b'{"subject": "forged"}',
                           headers={"Content-Type": "application/json", "X-Forwarded-For": TRUSTED_SENDER})
    assert (forged.status, forged.json()) == (403, SOURCE_REFUSED)


def test_behind_a_proxy_only_the_address_it_appended_counts(proxied):
    """The test is the proxy here: it connects from 127.0.0.1 and appends the real client."""
    client, other = "198.51.100.7", "198.51.100.8"

    def forwarded(spoofed: str, real: str) -> dict:
        return {"X-Forwarded-For": f"{spoofed}, {real}"}

    # Without a key, so that the address is what counts (a valid key is counted per person).
    statuses = [proxied.send("GET", "/emails", ip="127.0.0.1", headers=forwarded(f"10.0.0.{n}", client)
                             ).status for n in range(50)]
    assert statuses == [401] * 50
    refused = proxied.send("GET", "/emails", ip="127.0.0.1", headers=forwarded("10.0.0.99", client))
    assert (refused.status, refused.json()) == (429, GLOBAL_LIMITED)

    for n in range(5):
        proxied.send("GET", "/emails", ip="127.0.0.1", headers={**BAD_KEY, **forwarded(f"10.0.1.{n}", other)})
    blocked = proxied.send("GET", "/emails", ip="127.0.0.1", headers={**BEARER, "X-Forwarded-For": other})
    assert (blocked.status, blocked.json()) == (429, LOCKED)
    innocent = proxied.send("GET", "/emails", ip="127.0.0.1", headers={**BEARER, **forwarded(other, "198.51.100.9")})
    assert innocent.status == 200

    mail = json.dumps(payload_from_mime(sample_mime(subject="via proxy"))).encode()
    headers = {"Content-Type": "application/json"}
    forged = proxied.send("POST", f"/webhook/{SECRET}", ip="127.0.0.1", body=mail,
                          headers={**headers, **forwarded(IMPROVMX_IP, "198.51.100.10")})
    assert (forged.status, forged.json()) == (403, SOURCE_REFUSED)
    real = proxied.send("POST", f"/webhook/{SECRET}", ip="127.0.0.1", body=mail,
                        headers={**headers, "X-Forwarded-For": IMPROVMX_IP})
    assert real.status == 200


# --- the webhook's limit, body cap and logs over the real socket --------------------------------

def test_webhook_limit_spares_the_allowlisted_sender_only(direct_a, direct_b):
    mail = json.dumps(payload_from_mime(sample_mime(subject="allowlisted"))).encode()
    headers = {"Content-Type": "application/json"}
    for server in (direct_a, direct_b) * 4:
        assert server.send("POST", f"/webhook/{SECRET}", ip=TRUSTED_SENDER, body=mail, headers=headers).status == 200
    statuses = [server.send("POST", f"/webhook/{SECRET}", ip="127.0.0.18", body=mail, headers=headers).status
                for server in (direct_a, direct_b, direct_a, direct_b, direct_a)]
    assert statuses == [403] * 5
    refused = direct_b.send("POST", f"/webhook/{SECRET}", ip="127.0.0.18", body=mail, headers=headers)
    assert (refused.status, refused.json()) == (429, {"success": False, "error": "Rate limit exceeded: 5 per 1 minute"})


def raw_exchange(port: int, head: bytes, body_parts) -> bytes:
    """Send a request head and body parts, never finishing the body, then read the answer.

    The answer can only arrive if the server refused the body without waiting for the rest.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT,
                                  source_address=(TRUSTED_SENDER, 0)) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def parse_raw(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_announced_oversize_body_is_refused_before_it_is_sent(direct_a):
    head = (f"POST /webhook/{SECRET} HTTP/1.1\r\nHost: archive\r\nContent-Type: application/json\r\n"
            f"Content-Length: {70 * 2**20}\r\n\r\n").encode()
    assert parse_raw(raw_exchange(direct_a.port, head, [b'{"subject": "' + b"x" * 65536])) == (413, TOO_LARGE)


def test_chunked_oversize_body_is_cut_off_at_the_limit(direct_a):
    head = (f"POST /webhook/{SECRET} HTTP/1.1\r\nHost: archive\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"x" * 65536
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 17
    assert parse_raw(raw_exchange(direct_a.port, head, parts)) == (413, TOO_LARGE)


def test_logs_mask_the_secret_and_never_hold_a_key(servers):
    """Checked last over every request the module sent: gunicorn's access log and the app's."""
    for server in servers.values():
        server.send("POST", f"/webhook/{SECRET}", ip="127.0.0.19", body=b"{}",
                    headers={"Content-Type": "application/json"})
        log = server.log()
        assert re.search(r'"POST /webhook/\*\*\* HTTP/1\.1" \d{3} ', log)
        assert "path=/webhook/*** status=" in log
        for secret in (SECRET, API_KEY, BAD_KEY["Authorization"].split()[1]):
            assert secret not in log
