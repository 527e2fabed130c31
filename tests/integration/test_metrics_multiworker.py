"""Metrics of a real 3-worker gunicorn: every scrape, on any worker, counts the whole host.

Webhooks are sent to chosen workers (the others paused, as in the security tests); then each
worker is scraped in turn. A worker killed and replaced by the master keeps its counts in
the host's total.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests.integration.test_security_multiworker import Server

pytestmark = pytest.mark.slow

API_KEY = "metrics-multiworker-key-0123456789"
WORKERS = 3
MESSAGES = 9
BEARER = {"Authorization": f"Bearer {API_KEY}"}


class LiveServer(Server):
    """Server whose worker list leaves out workers that have exited (one test kills one)."""

    def worker_pids(self) -> list[str]:
        return [pid for pid in super().worker_pids() if os.path.exists(f"/proc/{pid}")]


def _boot(server: Server, count: int, previous: set[str] = frozenset()) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        alive = [pid for pid in server.worker_pids() if pid not in previous]
        if len(alive) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not boot {count} workers; log:\n{server.log()}")
        time.sleep(0.1)
    for pid in alive:
        assert server.send_via(pid, "GET", "/readyz", ip="127.0.0.1").status == 200
    return alive


@pytest.fixture
def server(secantus_server, tmp_path):
    uri = processes.mongo_uri(secantus_server.port)
    database = f"metrics_{uuid.uuid4().hex[:12]}"
    env = {
        "API_KEY": API_KEY, "MONGO_URI": uri, "MONGO_DB": database, "RATELIMIT_ENABLED": "false",
        "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp_path / "spool"), "WEB_CONCURRENCY": str(WORKERS),
        "LOG_LEVEL": "INFO",
    }
    process = processes.gunicorn(env, tmp_path / "gunicorn.log").start()
    try:
        yield LiveServer(process)
    finally:
        process.stop()
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(database)


def scrape(server: Server, pid: str) -> dict[tuple, float]:
    reply = server.send_via(pid, "GET", "/metrics", ip="127.0.0.1", headers=BEARER)
    assert reply.status == 200, reply.body
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def stored(samples) -> float:
    return samples.get(("improvmx_webhook_deliveries_total", (("result", "stored"),)), 0.0)


def webhooks_ok(samples) -> float:
    key = ("improvmx_http_requests_total", (("method", "POST"), ("route", "/webhook"), ("status", "200")))
    return samples.get(key, 0.0)


def test_every_worker_reports_the_hosts_totals_even_after_a_worker_died(server):
    pids = _boot(server, WORKERS)
    assert len(pids) == WORKERS
    for n in range(MESSAGES):
        payload = payload_from_mime(sample_mime())
        payload["subject"] = f"metrics {n}"
        reply = server.send_via(pids[n % WORKERS], "POST", "/webhook", ip="127.0.0.1",
                                headers={"Content-Type": "application/json"}, body=json.dumps(payload))
        assert reply.status == 200 and reply.json()["duplicate"] is False

    for pid in pids:
        samples = scrape(server, pid)
        assert stored(samples) == MESSAGES, pid
        assert webhooks_ok(samples) == MESSAGES
        assert samples[("improvmx_archive_messages", ())] == MESSAGES
        assert samples[("improvmx_webhook_ingest_seconds_count", ())] == MESSAGES

    os.kill(int(pids[0]), signal.SIGKILL)
    replacements = _boot(server, 1, previous=set(pids))
    for pid in pids[1:] + replacements[:1]:
        assert stored(scrape(server, pid)) == MESSAGES, pid
