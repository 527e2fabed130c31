"""Sending under real gunicorn (several workers, each with a background sender) on a real
SecantusDB, through a real TLS relay: a worker SIGKILLed mid-send loses nothing and never
causes a second delivery on its own."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import pytest
from bson import ObjectId
from pymongo import MongoClient

from devtools import processes
from devtools.smtp_relay import PASSWORD, USERNAME, Relay, make_ca
from improvmx_archive.outbound.outbox import COLLECTION
from tests.polling import wait_until

pytestmark = pytest.mark.slow

KEY = "sending-crash-key-0123456789"
LEASE_SECONDS = 3


def call(server, method: str, path: str, body=None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def stack(tmp_path, secantus_uri, secantus_db_name):
    certificates = make_ca(tmp_path / "ca")
    relay = Relay(certificates, mode="starttls").start()
    env = {"API_KEY": KEY, "MONGO_URI": secantus_uri, "MONGO_DB": secantus_db_name, "RATELIMIT_ENABLED": "false",
           "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp_path / "spool"), "WEB_CONCURRENCY": "3",
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(relay.port), "SMTP_USERNAME": USERNAME,
           "SMTP_PASSWORD": PASSWORD, "SMTP_CA_FILE": str(certificates.ca), "SMTP_IP_FAMILY": "ipv4",
           "DOMINIO": "example.com", "SEND_RETRY_SECONDS": "1", "SEND_LEASE_SECONDS": str(LEASE_SECONDS)}
    server = processes.gunicorn(env, tmp_path / "gunicorn.log").start()
    mongo = MongoClient(secantus_uri, tz_aware=True)
    try:
        yield server, relay, mongo[secantus_db_name][COLLECTION]
    finally:
        server.stop()
        relay.stop()
        mongo.close()
    assert PASSWORD not in (tmp_path / "gunicorn.log").read_text()


def send(server, subject: str) -> str:
    status, answer = call(server, "POST", "/send", {"from": "support@example.com", "to": "x@example.net",
                                                    "subject": subject, "text": "T"})
    assert status == 202, answer
    return answer["send_id"]


def holder_pid(sends, send_id: str) -> int:
    item = wait_until(lambda: sends.find_one({"_id": ObjectId(send_id), "status": "sending"}), "a claim")
    return int(item["holder"].rsplit(":", 1)[1])


def status_of(server, send_id: str) -> dict:
    return call(server, "GET", f"/outbox/{send_id}")[1]["send"]


def deliveries_of(relay: Relay, subject: str) -> int:
    return sum(f"Subject: {subject}\r\n".encode() in delivery.data for delivery in relay.deliveries)


def test_a_worker_killed_before_the_body_is_resent_once(stack):
    server, relay, sends = stack
    held = threading.Event()
    relay.behaviour.hold_at_rcpt = held
    send_id = send(server, "before-body")
    wait_until(relay.waiting.is_set, "the relay to hold RCPT")
    os.kill(holder_pid(sends, send_id), signal.SIGKILL)
    relay.behaviour.hold_at_rcpt = None
    held.set()
    wait_until(lambda: status_of(server, send_id)["status"] == "sent", "another worker to send it")
    assert deliveries_of(relay, "before-body") == 1
    assert status_of(server, send_id)["attempts"] == 2


def test_a_worker_killed_during_the_body_leaves_it_unknown_until_a_person_retries(stack):
    server, relay, sends = stack
    held = threading.Event()
    relay.behaviour.hold_after_data = held
    send_id = send(server, "during-body")
    wait_until(relay.waiting.is_set, "the relay to take the body")
    pid = holder_pid(sends, send_id)
    wait_until(lambda: sends.find_one({"_id": ObjectId(send_id), "phase": "body"}), "phase body recorded")
    os.kill(pid, signal.SIGKILL)
    relay.behaviour.hold_after_data = None
    held.set()
    item = wait_until(lambda: (found := status_of(server, send_id))["status"] == "unknown" and found,
                      "the lease to expire into unknown")
    assert "may or may not have been delivered" in item["last_reply"]
    time.sleep(LEASE_SECONDS + 4)  # several sender passes on every worker: none may resend it
    assert status_of(server, send_id)["status"] == "unknown"
    assert deliveries_of(relay, "during-body") == 1

    status, answer = call(server, "POST", f"/outbox/{send_id}/retry")
    assert status == 200 and answer["send"]["status"] == "queued"
    wait_until(lambda: status_of(server, send_id)["status"] == "sent", "the person's retry")
    assert deliveries_of(relay, "during-body") == 2


def test_many_sends_across_workers_are_each_delivered_once(stack):
    server, relay, _ = stack
    ids = [send(server, f"burst-{n}") for n in range(12)]
    wait_until(lambda: all(status_of(server, i)["status"] == "sent" for i in ids), "every send", 90)
    assert all(deliveries_of(relay, f"burst-{n}") == 1 for n in range(12))
    wait_until(lambda: call(server, "GET", "/emails?q=in:sent&limit=50")[1]["count"] == 12, "12 sent copies")
