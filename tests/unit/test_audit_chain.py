"""The audit trail's hash chain on mongomock: appends, verification of every kind of
tampering (edit, removal, reorder, rewrite with recomputed hashes), trimming, and the
failure cases of a crash between an append's or a trim's steps."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import mongomock
import pytest
from pymongo.errors import ServerSelectionTimeoutError

from improvmx_archive.access.audit import FLOOR, GENESIS, HEAD, AuditTrail, TrimRefused, entry_hash

ACTOR = {"name": "ana", "person_id": "p1", "key_id": "k_1", "via": "key"}
NOW = datetime.now(timezone.utc)


@pytest.fixture
def trail():
    return AuditTrail(mongomock.MongoClient(tz_aware=True).db)


def fill(trail: AuditTrail, count: int, *, days_ago: float = 0) -> list[dict]:
    return [trail.append(actor=ACTOR, action="view", email_ids=[f"{n:024x}"], ip="192.0.2.1",
                         details={"n": n}, at=NOW - timedelta(days=days_ago)) for n in range(count)]


def problem(trail: AuditTrail):
    report = trail.verify()
    assert not report.ok, "verification passed a tampered trail"
    return report.problem


def test_entries_chain_in_order_and_verify(trail):
    entries = fill(trail, 5)
    assert [e["_id"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == GENESIS
    assert all(later["prev"] == earlier["hash"] for earlier, later in zip(entries, entries[1:]))
    report = trail.verify()
    assert report.ok and (report.checked, report.first, report.last) == (5, 1, 5)
    assert report.head == {"seq": 5, "hash": entries[-1]["hash"]}
    stored = trail.entries.find_one({"_id": 3})
    assert stored["actor"] == ACTOR and stored["ip"] == "192.0.2.1" and stored["email_ids"] == [f"{2:024x}"]
    assert entry_hash(stored) == stored["hash"]


def test_an_edited_entry_is_named(trail):
    fill(trail, 6)
    trail.entries.update_one({"_id": 4}, {"$set": {"outcome": "refused"}})
    assert problem(trail).seq == 4 and "edited" in problem(trail).reason


def test_an_edit_with_a_recomputed_hash_is_named_by_the_broken_link(trail):
    fill(trail, 6)
    forged = trail.entries.find_one({"_id": 3})
    forged["actor"] = {"name": "someone-else", "person_id": None, "key_id": None, "via": "key"}
    forged["hash"] = entry_hash(forged)
    trail.entries.replace_one({"_id": 3}, forged)
    found = problem(trail)
    assert found.seq == 3 and "replaced or reordered" in found.reason


def test_a_removed_entry_is_named(trail):
    fill(trail, 6)
    trail.entries.delete_one({"_id": 2})
    found = problem(trail)
    assert found.seq == 2 and "missing" in found.reason


def test_removed_oldest_entries_without_a_trim_are_named(trail):
    fill(trail, 4)
    trail.entries.delete_many({"_id": {"$lt": 3}})
    found = problem(trail)
    assert found.seq == 1 and "without a trim" in found.reason


def test_removed_newest_entries_are_caught_by_the_head_record(trail):
    fill(trail, 6)
    trail.entries.delete_many({"_id": {"$gte": 5}})
    found = problem(trail)
    assert found.seq == 5 and "from the end" in found.reason


def test_two_swapped_entries_are_named_at_the_first(trail):
    fill(trail, 6)
    three, four = trail.entries.find_one({"_id": 3}), trail.entries.find_one({"_id": 4})
    trail.entries.replace_one({"_id": 3}, {**four, "_id": 3})
    trail.entries.replace_one({"_id": 4}, {**three, "_id": 4})
    found = problem(trail)
    assert found.seq == 3 and "edited" in found.reason


def test_swapped_sequence_numbers_with_rehashing_are_named(trail):
    """Both entries rewritten consistently with their new places: the links give it away."""
    fill(trail, 6)
    three, four = trail.entries.find_one({"_id": 3}), trail.entries.find_one({"_id": 4})
    moved_four = {**four, "_id": 3, "prev": three["prev"]}
    moved_four["hash"] = entry_hash(moved_four)
    moved_three = {**three, "_id": 4, "prev": moved_four["hash"]}
    moved_three["hash"] = entry_hash(moved_three)
    trail.entries.replace_one({"_id": 3}, moved_four)
    trail.entries.replace_one({"_id": 4}, moved_three)
    found = problem(trail)
    assert found.seq == 4 and "replaced or reordered" in found.reason


def test_anchors_catch_a_rewrite_of_the_whole_tail(trail):
    """Rewriting an entry and everything after it (hashes and head recomputed) leaves a chain
    that verifies on its own: only an anchor kept elsewhere catches it."""
    fill(trail, 5)
    anchor = (3, trail.entries.find_one({"_id": 3})["hash"])
    prev = trail.entries.find_one({"_id": 2})["hash"]
    for seq in range(3, 6):
        entry = trail.entries.find_one({"_id": seq})
        entry.update(outcome="refused", prev=prev)
        entry["hash"] = prev = entry_hash(entry)
        trail.entries.replace_one({"_id": seq}, entry)
    trail.state.update_one({"_id": HEAD}, {"$set": {"hash": prev}})
    assert trail.verify().ok
    report = trail.verify(anchors=[anchor])
    assert not report.ok and report.problem.seq == 3 and "anchor" in report.problem.reason


def test_trim_removes_old_entries_and_the_rest_still_verifies(trail):
    fill(trail, 4, days_ago=400)
    fill(trail, 3)
    assert trail.trim(NOW - timedelta(days=365)) == 4
    assert sorted(e["_id"] for e in trail.entries.find()) == [5, 6, 7]
    report = trail.verify()
    assert report.ok and (report.checked, report.first) == (3, 5)
    fill(trail, 1)
    assert trail.verify().ok
    trail.entries.delete_one({"_id": 5})  # removing the new first entry is not a trim
    found = problem(trail)
    assert found.seq == 5 and "missing" in found.reason


def test_trim_keeps_the_newest_entry_even_when_all_are_old(trail):
    fill(trail, 3, days_ago=400)
    assert trail.trim(NOW) == 2
    assert [e["_id"] for e in trail.entries.find()] == [3]
    assert fill(trail, 1)[0]["_id"] == 4
    assert trail.verify().ok


def test_a_trim_interrupted_after_moving_the_floor_verifies_and_finishes_next_time(trail):
    fill(trail, 5, days_ago=400)
    fill(trail, 2)
    # the floor moved (first step) but the crash came before the delete
    trail.state.insert_one({"_id": FLOOR, "seq": 6, "prev": trail.entries.find_one({"_id": 5})["hash"]})
    report = trail.verify()
    assert report.ok and report.awaiting_trim == 5 and report.first == 6
    assert trail.trim(NOW - timedelta(days=365)) == 5
    assert trail.verify().ok and trail.verify().awaiting_trim == 0


def test_trim_refuses_to_delete_tampered_evidence(trail):
    fill(trail, 4, days_ago=400)
    fill(trail, 1)
    trail.entries.update_one({"_id": 2}, {"$set": {"action": "list"}})
    with pytest.raises(TrimRefused, match="entry 2"):
        trail.trim(NOW - timedelta(days=365))
    assert trail.entries.count_documents({}) == 5


def test_an_append_after_a_crash_before_the_head_update_steps_over(trail, monkeypatch):
    fill(trail, 2)
    monkeypatch.setattr(trail, "_advance_head", lambda seq, digest: None)
    fill(trail, 2)  # entries 3 and 4 written, the head still says 2
    monkeypatch.undo()
    assert trail.state.find_one({"_id": HEAD})["seq"] == 2
    assert trail.verify().ok  # a lagging head is no tampering
    assert fill(trail, 1)[0]["_id"] == 5
    assert trail.verify().ok and trail.state.find_one({"_id": HEAD})["seq"] == 5


def test_a_missing_head_record_is_a_warning_not_a_failure(trail):
    fill(trail, 3)
    trail.state.delete_one({"_id": HEAD})
    report = trail.verify()
    assert report.ok and report.warnings
    assert fill(trail, 1)[0]["_id"] == 4  # steps over the entries it finds
    assert trail.verify().ok


def test_concurrent_appenders_neither_fork_nor_lose_entries(trail):
    threads, each = 8, 25
    written: list[int] = []
    lock = threading.Lock()

    def writer(n):
        for _ in range(each):
            entry = trail.append(actor={**ACTOR, "name": f"w{n}"}, action="view")
            with lock:
                written.append(entry["_id"])

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(written) == list(range(1, threads * each + 1))
    report = trail.verify()
    assert report.ok and report.checked == threads * each


def test_two_hosts_with_concurrent_threads_share_one_chain():
    """Two AuditTrail objects (two hosts: separate group commits) on one database."""
    database = mongomock.MongoClient(tz_aware=True).db
    hosts = [AuditTrail(database), AuditTrail(database)]
    failures: list[BaseException] = []

    def writer(n):
        try:
            for _ in range(20):
                hosts[n % 2].append(actor={**ACTOR, "name": f"w{n}"}, action="view")
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    assert sorted(e["_id"] for e in database.audit_trail.find()) == list(range(1, 161))
    assert hosts[0].verify().ok


def test_threads_appending_together_share_a_write(trail, monkeypatch):
    """Group commit: while one insert is in flight, the others queue and go in one batch."""
    calls: list[int] = []
    insert_many = trail.entries.insert_many
    gate = threading.Event()

    def slow_insert_many(documents, **kwargs):
        calls.append(len(documents))
        gate.wait(5)
        return insert_many(documents, **kwargs)

    monkeypatch.setattr(trail.entries, "insert_many", slow_insert_many)
    threads = [threading.Thread(target=trail.append, kwargs={"actor": ACTOR, "action": "view"}) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(trail._queue) < 5 and time.monotonic() < deadline:  # the first write holds, five wait
        time.sleep(0.01)
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1, 5]
    assert trail.verify().ok and trail.entries.count_documents({}) == 6


def test_a_failed_write_reaches_every_waiting_thread_and_the_next_append_works(trail, monkeypatch):
    fill(trail, 1)

    def down(*args, **kwargs):
        raise ServerSelectionTimeoutError("no servers")

    monkeypatch.setattr(trail.entries, "insert_many", down)
    with pytest.raises(ServerSelectionTimeoutError):
        fill(trail, 1)
    monkeypatch.undo()
    assert fill(trail, 1)[0]["_id"] == 2 and trail.verify().ok


def test_the_maintenance_trim_runs_under_a_lease_on_one_worker(trail):
    from improvmx_archive.access.audit import AuditRetention
    from improvmx_archive.lease import Lease

    fill(trail, 3, days_ago=400)
    fill(trail, 2)
    first = AuditRetention(trail, Lease(trail.database, "audit-trim"), 365)
    second = AuditRetention(trail, Lease(trail.database, "audit-trim"), 365)  # another worker or host
    assert first.run_if_due() == 3
    fill(trail, 1, days_ago=400)  # (out of order in time: stays, it follows a younger entry)
    assert second.run_if_due() == 0  # the lease is held for the interval
    assert trail.verify().ok and trail.verify().first == 4


def test_audit_retention_days_setting(tmp_path):
    from improvmx_archive.config import ConfigError
    from tests.conftest import make_settings

    assert make_settings(tmp_path).audit_retention_days == 365
    assert make_settings(tmp_path, AUDIT_RETENTION_DAYS="30").audit_retention_days == 30
    assert make_settings(tmp_path, AUDIT_RETENTION_DAYS="0").audit_retention_days == 0
    with pytest.raises(ConfigError, match="AUDIT_RETENTION_DAYS"):
        make_settings(tmp_path, AUDIT_RETENTION_DAYS="a year")


def test_an_entry_renumbered_with_a_string_is_named(trail):
    fill(trail, 3)
    moved = trail.entries.find_one({"_id": 3})
    trail.entries.delete_one({"_id": 3})
    trail.entries.insert_one({**moved, "_id": "3"})
    found = problem(trail)
    assert found.seq == 3 and "missing" in found.reason
