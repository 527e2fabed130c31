"""Notifications of new mail against a real local HTTP receiver and a real SecantusDB.

The receiver fails its first attempts, then goes down for a while; meanwhile the app is
restarted and a spooled message is replayed. Every stored message must be announced with a
valid signature; a duplicate delivery must announce nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools import processes
from devtools.processes import free_port
from improvmx_archive import notify
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.polling import wait_until

pytestmark = pytest.mark.slow

SECRET = "notify-secret-0123456789abcdef"
CREDENTIAL = "pa55-in-url-userinfo"
TOKEN = "token-in-url-query"
PATIENCE_SECONDS = 120  # the crash test waits out real backoff (10 s, then 20 s)


@dataclass
class Received:
    delivery: str
    signature: str
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A webhook receiver on a loopback port that can fail requests or be down entirely."""

    port: int = field(default_factory=free_port)
    fail_next: int = 0
    status: int = 204
    location: str = ""
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failing = receiver.fail_next > 0
                    receiver.fail_next -= failing
                    answer = 500 if failing else receiver.status
                    receiver.received.append(Received(self.headers["X-Archive-Delivery"],
                                                      self.headers["X-Archive-Signature"], body, answer))
                self.send_response(answer)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def acknowledged(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if 200 <= r.answered < 300]


def valid(received: Received) -> bool:
    fields = dict(part.split("=", 1) for part in received.signature.split(","))
    expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(fields["v1"], expected) and abs(time.time() - int(fields["t"])) < 300


@pytest.fixture
def fast_retries(monkeypatch):
    for name, seconds in (("BACKOFF_BASE_SECONDS", 0.2), ("BACKOFF_CAP_SECONDS", 1.0), ("IDLE_POLL_SECONDS", 0.2),
                          ("FAILURE_PAUSE_CAP_SECONDS", 0.3)):
        monkeypatch.setattr(notify, name, seconds)


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.up()
    yield receiver
    if receiver.server is not None:
        receiver.down()


@pytest.fixture
def start_app(make_secantus_app, receiver):
    """Build (and later stop) apps that notify the receiver, with background tasks on."""
    started = []
    url = f"http://user:{CREDENTIAL}@127.0.0.1:{receiver.port}/hook?key={TOKEN}"

    def start():
        app = make_secantus_app(RATELIMIT_ENABLED="false", BACKGROUND_TASKS="on", SPOOL_REPLAY_INTERVAL="1",
                                NOTIFY_URL=url, NOTIFY_SECRET=SECRET, PUBLIC_URL="https://archive.example")
        started.append(app)
        return app

    yield start
    for app in started:
        stop(app)


def stop(app) -> None:
    app.extensions["notifier"].stop()
    app.extensions["maintenance"].stop()


def payload(n: int) -> dict:
    message = payload_from_mime(sample_mime())
    message["subject"] = f"announce me {n}"
    return message


def test_every_stored_message_is_announced_across_failures_downtime_and_a_restart(
        start_app, receiver, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="improvmx_archive")
    receiver.fail_next = 3
    app = start_app()
    client = app.test_client()
    first = [payload(n) for n in range(4)]
    ids = [client.post("/webhook", json=message).get_json()["email_id"] for message in first]
    duplicate = client.post("/webhook", json=first[0]).get_json()
    assert duplicate["duplicate"] is True and duplicate["email_id"] == ids[0]
    wait_until(lambda: len(receiver.acknowledged()) >= 2, "the first announcements", PATIENCE_SECONDS)

    receiver.down()
    ids += [client.post("/webhook", json=payload(n)).get_json()["email_id"] for n in range(4, 7)]
    time.sleep(1)  # attempts against the closed port fail and are rescheduled
    stop(app)  # the restart: whatever was in flight is in MongoDB only

    app = start_app()
    ids.append(str(app.extensions["spool"].put(payload(7))))  # announced once replayed into MongoDB
    wait_until(lambda: app.extensions["archive"].emails.count_documents({}) == 8, "the spool replay", PATIENCE_SECONDS)
    receiver.up()
    wait_until(lambda: {json.loads(r.body)["email_id"] for r in receiver.acknowledged()} == set(ids),
               "every message announced", PATIENCE_SECONDS)

    acknowledged = receiver.acknowledged()
    assert all(valid(r) for r in receiver.received)
    # once acknowledged, never again: the duplicate delivery announced nothing
    assert sorted(json.loads(r.body)["email_id"] for r in acknowledged) == sorted(ids)
    assert any(r.answered == 500 for r in receiver.received)
    body = json.loads(next(r.body for r in acknowledged if json.loads(r.body)["email_id"] == ids[1]))
    assert body == {"event": "message.stored", "email_id": ids[1], "received_at": body["received_at"],
                    "from": "alice@example.org", "to": ["inbox@example.com"], "subject": "announce me 1",
                    "size": body["size"], "has_attachments": True, "url": f"https://archive.example/emails/{ids[1]}"}
    deliveries = {r.delivery for r in acknowledged}
    assert len(deliveries) == len(ids)
    outbox = app.extensions["outbox"]
    wait_until(lambda: outbox.counts() == {"unsent": 0, "pending": 0, "failed": 0}, "the outbox to drain",
               PATIENCE_SECONDS)
    logged = caplog.text
    assert CREDENTIAL not in logged and TOKEN not in logged and "/hook" not in logged
    assert "retrying later" in logged


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(start_app, receiver, fast_retries, monkeypatch):
    elsewhere = Receiver()
    elsewhere.up()
    try:
        monkeypatch.setattr(notify, "BACKOFF_BASE_SECONDS", 30.0)
        receiver.status, receiver.location = 307, f"http://127.0.0.1:{elsewhere.port}/hook"
        app = start_app()
        app.test_client().post("/webhook", json=payload(0))
        wait_until(lambda: receiver.received, "the first attempt", PATIENCE_SECONDS)
        outbox = app.extensions["outbox"]
        # The sender records the outcome after the answer arrives: wait for that, not a fixed time.
        wait_until(lambda: (outbox.outbox.find_one({}) or {}).get("last_result"), "the attempt's recorded outcome",
                   PATIENCE_SECONDS)
        item = outbox.outbox.find_one({})
        assert item["status"] == "pending" and item["last_result"] == "HTTP 307"
        assert elsewhere.received == [] and len(receiver.received) == 1
    finally:
        elsewhere.down()


def test_notifications_survive_killing_gunicorn_while_the_receiver_is_down(
        secantus_uri, secantus_db_name, receiver, tmp_path):
    """The same, across a crash: gunicorn is SIGKILLed while notifications wait for a dead
    receiver, and a new gunicorn on the same database delivers them."""
    env = {"API_KEY": "notify-crash-key-0123456789", "MONGO_URI": secantus_uri, "MONGO_DB": secantus_db_name,
           "RATELIMIT_ENABLED": "false", "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp_path / "spool"),
           "WEB_CONCURRENCY": "2", "NOTIFY_URL": f"http://127.0.0.1:{receiver.port}/hook", "NOTIFY_SECRET": SECRET}

    def post(server, message) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            connection.request("POST", "/webhook", body=json.dumps(message),
                               headers={"Content-Type": "application/json"})
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    receiver.fail_next = 2
    first = processes.gunicorn(env, tmp_path / "first.log").start()
    try:
        messages = [payload(n) for n in range(6)]
        ids = [post(first, message)["email_id"] for message in messages[:3]]
        assert post(first, messages[0])["duplicate"] is True
        wait_until(lambda: receiver.acknowledged(), "a first announcement", PATIENCE_SECONDS)
        receiver.down()
        ids += [post(first, message)["email_id"] for message in messages[3:]]
        time.sleep(1)
    finally:
        first.kill()

    second = processes.gunicorn(env, tmp_path / "second.log").start()
    try:
        time.sleep(1)
        receiver.up()
        wait_until(lambda: {json.loads(r.body)["email_id"] for r in receiver.acknowledged()} == set(ids),
                   "every message announced after the crash", PATIENCE_SECONDS)
    finally:
        second.stop()
    assert all(valid(r) for r in receiver.received)
    assert sorted(json.loads(r.body)["email_id"] for r in receiver.acknowledged()) == sorted(ids)
