"""Search on a real MongoDB-protocol server over a socket (SecantusDB): the whole query table,
cursor paging across inserts, the background pass under its lease, and plans that use the
token index."""

from __future__ import annotations

import time

import pytest
from bson import ObjectId

from improvmx_archive.indexer import SearchIndexer, backlog
from improvmx_archive.listing import parse_filters
from improvmx_archive.maintenance import Maintenance
from tests.search_corpus import BAD_QUERIES, CORPUS, QUERIES
from tests.unit.test_search import _walk, found, search, store_corpus

pytestmark = pytest.mark.slow


@pytest.fixture
def client(secantus_app):
    return secantus_app.test_client()


def test_every_query_of_the_table(secantus_app, client, auth):
    ids = store_corpus(secantus_app)
    answers = {q: found(client, auth, ids, q=q) for q, _ in QUERIES}
    assert {q: answers[q] for q, expected in QUERIES if answers[q] != expected} == {}
    for q, problem in BAD_QUERIES:
        response = client.get("/emails", query_string={"q": q}, headers=auth)
        assert response.status_code == 400 and problem in response.get_json()["error"], q


def test_cursor_paging_across_inserts(secantus_app, client, auth):
    archive = secantus_app.extensions["archive"]
    ids = store_corpus(secantus_app)
    first = search(client, auth, limit=2)
    for i in range(3):
        archive.ingest({**CORPUS["newsletter"], "subject": f"arrived later {i}"})
    seen = [e["id"] for e in first["emails"]] + _walk(client, auth, limit=2, cursor=first["next"])
    assert sorted(seen) == sorted(ids.values()) and len(seen) == len(set(seen))
    tampered = first["next"][:-1] + ("A" if first["next"][-1] != "A" else "B")
    assert client.get("/emails", query_string={"cursor": tampered}, headers=auth).status_code == 400


def _stages(plan: dict) -> list[tuple[str, str | None]]:
    found_stages = [(plan.get("stage"), plan.get("indexName"))]
    for child in [plan.get("inputStage"), *plan.get("inputStages", [])]:
        if child:
            found_stages += _stages(child)
    return found_stages


@pytest.mark.parametrize("q", ["invoice", "from:acme", '"quarterly report"', "quart*", "report -invoice",
                               "message-id:<inv-1@acme-corp.com>", "filename:rapport* larger:1KB"])
def test_searches_walk_the_token_index(secantus_app, q):
    store_corpus(secantus_app)
    archive = secantus_app.extensions["archive"]
    query = archive.filter_for(parse_filters({"q": q}))
    plan = archive.page_cursor(query, 0, 10).explain()["queryPlanner"]["winningPlan"]
    assert ("IXSCAN", "by_token") in _stages(plan), plan


def test_cursor_pages_of_a_word_and_of_the_plain_list_are_index_ranges(secantus_app, client, auth):
    """Page 2 costs what page 1 costs: a bound on received_at, never a collection scan."""
    from improvmx_archive.listing import up_to

    ids = store_corpus(secantus_app)
    archive = secantus_app.extensions["archive"]
    database = secantus_app.extensions["database"]
    moment = database.emails.find_one({"_id": ObjectId(ids["resume"])})["received_at"]
    for params, index in (({"q": "me"}, "by_token"), ({}, "newest_first")):
        query = up_to(archive.filter_for(parse_filters(params)), moment)
        plan = archive.page_cursor(query, 0, 3).explain()["queryPlanner"]["winningPlan"]
        assert ("IXSCAN", index) in _stages(plan), (params, plan)
    database.emails.update_many({}, {"$set": {"received_at": moment}})  # every message ties
    assert _walk(client, auth, limit=2) == sorted(ids.values(), reverse=True)
    assert _walk(client, auth, limit=1, q="me") == sorted(
        (ids[n] for n in ("invoice", "resume", "cyrillic", "cjk")), reverse=True)


def test_the_background_pass_indexes_new_mail_within_seconds(secantus_app, client, auth, tmp_path):
    archive = secantus_app.extensions["archive"]
    workers = [Maintenance(archive, secantus_app.extensions["spool"], replay_interval=3600, gc_interval=0,
                           index_interval=0.5) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        email_id = archive.ingest(CORPUS["invoice"]).email_id
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not found(client, auth, {"invoice": email_id}, q="trimestriel"):
            time.sleep(0.2)
        assert found(client, auth, {"invoice": email_id}, q="trimestriel") == ["invoice"]
        assert backlog(secantus_app.extensions["database"]).pending == 0
    finally:
        for worker in workers:
            worker.stop()


def test_the_indexer_catches_up_on_a_backlog_in_batches(secantus_app, client, auth):
    archive = secantus_app.extensions["archive"]
    for i in range(25):
        archive.ingest({**CORPUS["newsletter"], "subject": f"burst {i}"})
    assert backlog(secantus_app.extensions["database"]).pending == 25
    assert SearchIndexer(archive, batch_size=10).index_pending() == 25
    assert search(client, auth, q="burst newsletter", limit=1)["total"] == 0
    assert search(client, auth, q="burst", limit=1)["total"] == 25
