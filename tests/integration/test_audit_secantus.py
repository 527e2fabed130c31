"""The audit trail on a real server (SecantusDB over TCP): 8 concurrent writers on two app
instances, each with its own MongoClient as two hosts would have, leave one chain that
verifies with every entry there; `flask purge` records what it deleted."""

from __future__ import annotations

import threading
import time

import pytest
from pymongo import MongoClient

from improvmx_archive import create_app
from improvmx_archive.access.audit import ENTRIES, AuditTrail
from tests.conftest import API_KEY, make_settings

pytestmark = pytest.mark.slow

WRITERS = 8
READS_EACH = 15
BEARER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def two_hosts(tmp_path, secantus_uri, secantus_db_name):
    clients = [MongoClient(secantus_uri, serverSelectionTimeoutMS=5000, tz_aware=True) for _ in range(2)]
    apps = [create_app(make_settings(tmp_path, MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name,
                                     RATELIMIT_ENABLED="false"), mongo_client=client) for client in clients]
    yield apps
    clients[0].drop_database(secantus_db_name)
    for client in clients:
        client.close()


def test_eight_writers_on_two_instances_leave_one_chain_with_nothing_lost(two_hosts, sample_payload):
    email_id = two_hosts[0].test_client().post("/webhook", json=sample_payload).get_json()["email_id"]
    failures: list[str] = []
    start = threading.Barrier(WRITERS)

    def writer(number: int):
        client = two_hosts[number % 2].test_client()
        start.wait()
        for _ in range(READS_EACH):
            reply = client.get(f"/emails/{email_id}", headers=BEARER)
            if reply.status_code != 200:
                failures.append(f"writer {number}: {reply.status_code}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    trail = AuditTrail(two_hosts[1].extensions["database"])
    report = trail.verify()
    assert report.ok, str(report.problem)
    assert report.checked == WRITERS * READS_EACH
    assert trail.entries.count_documents({"action": "view", "email_ids": email_id}) == WRITERS * READS_EACH
    assert sorted(e["_id"] for e in trail.entries.find({}, {"_id": 1})) == list(range(1, WRITERS * READS_EACH + 1))
    deadline = time.monotonic() + 10  # the head record is written unacknowledged: it may trail briefly
    while trail.state.find_one({"_id": "head"})["seq"] != WRITERS * READS_EACH:
        assert time.monotonic() < deadline, "the head record never reached the last entry"
        time.sleep(0.05)


def test_purge_records_the_deleted_ids_as_the_cli(secantus_app, sample_payload):
    client = secantus_app.test_client()
    email_id = client.post("/webhook", json=sample_payload).get_json()["email_id"]
    result = secantus_app.test_cli_runner().invoke(args=["purge", "--before", "2999-01-01", "--yes"])
    assert result.exit_code == 0, result.output
    entry = secantus_app.extensions["database"][ENTRIES].find_one({"action": "purge"})
    assert entry["email_ids"] == [email_id] and entry["count"] == 1
    assert entry["actor"] == {"name": "operator", "person_id": None, "key_id": None, "via": "cli"}
    assert AuditTrail(secantus_app.extensions["database"]).verify().ok


def test_trim_on_a_real_server_keeps_a_chain_that_verifies(secantus_app):
    from datetime import datetime, timedelta, timezone

    trail = secantus_app.extensions["audit_trail"]
    actor = {"name": "ana", "person_id": "p1", "key_id": None, "via": "key"}
    for days in (400, 400, 400, 2, 1):
        trail.append(actor=actor, action="view", at=datetime.now(timezone.utc) - timedelta(days=days))
    runner = secantus_app.test_cli_runner()
    result = runner.invoke(args=["audit", "trim", "--days", "30"])
    assert result.exit_code == 0 and "removed 3 entries" in result.output, result.output
    assert sorted(e["_id"] for e in trail.entries.find({}, {"_id": 1})) == [4, 5]
    verified = runner.invoke(args=["audit", "verify"])
    assert verified.exit_code == 0 and "ok: 2 entries verified (entries 4 to 5)" in verified.output
    trail.entries.delete_one({"_id": 4})
    failed = runner.invoke(args=["audit", "verify"])
    assert failed.exit_code == 1 and "entry 4: missing" in failed.output
