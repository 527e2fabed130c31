"""Search through GET /emails?q=: every operator, phrases, prefixes, negation, accents and
scripts, hostile input, cursor paging, the indexer's lag and `flask reindex` (mongomock; the
same query table runs on SecantusDB in tests/integration/test_search_secantus.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from bson import ObjectId

from improvmx_archive.indexer import MAX_TOKENS, SearchIndexer, backlog, search_fields
from improvmx_archive.listing import parse_filters
from improvmx_archive.query import QueryError, parse
from improvmx_archive.tokens import words
from tests.search_corpus import BAD_QUERIES, CORPUS, QUERIES


def store_corpus(app) -> dict[str, str]:
    """The corpus stored through ingest and indexed; returns {name: email id}."""
    archive = app.extensions["archive"]
    ids = {name: archive.ingest(payload).email_id for name, payload in CORPUS.items()}
    SearchIndexer(archive).index_pending()
    return ids


def search(client, auth, **params) -> dict:
    response = client.get("/emails", query_string=params, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def found(client, auth, ids, **params) -> list[str]:
    by_id = {email_id: name for name, email_id in ids.items()}
    return [by_id[e["id"]] for e in search(client, auth, limit=100, **params)["emails"]]


@pytest.fixture
def corpus(app):
    return store_corpus(app)


@pytest.mark.parametrize("q, expected", QUERIES)
def test_query(client, auth, corpus, q, expected):
    assert found(client, auth, corpus, q=q) == expected


@pytest.mark.parametrize("q, problem", BAD_QUERIES)
def test_query_that_cannot_be_understood_is_a_400_naming_the_problem(client, auth, corpus, q, problem):
    response = client.get("/emails", query_string={"q": q}, headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and problem in body["error"], body


def test_parsing_never_needs_the_database_and_raises_query_errors():
    with pytest.raises(QueryError):
        parse('from:"x')
    assert parse("-subject:x").terms[0].negated is True
    with pytest.raises(QueryError) as raised:
        parse_filters({"q": "size:10"})
    assert raised.value.status == 400


def test_q_combines_with_every_other_parameter(app, client, auth, corpus):
    assert found(client, auth, corpus, q="invoice", from_email="billing@acme-corp.com") == ["invoice"]
    assert found(client, auth, corpus, q="invoice", from_email="zoe@example.org") == []
    assert found(client, auth, corpus, q="report", to="hidden@archive.test") == ["newsletter"]
    assert found(client, auth, corpus, q="report", subject="invoice") == ["invoice"]
    assert found(client, auth, corpus, q="report", has_attachments="true") == ["invoice"]
    client.patch(f"/emails/{corpus['invoice']}", json={"processed": True}, headers=auth)
    assert found(client, auth, corpus, q="report", processed="true") == ["invoice"]
    assert found(client, auth, corpus, q="is:processed") == ["invoice"]
    assert found(client, auth, corpus, q="-is:processed report") == ["newsletter"]
    assert found(client, auth, corpus, q="report", since="2020-01-01", until="2999-01-01") == ["newsletter", "invoice"]


def test_before_and_after_are_utc_days_of_received_at(app, client, auth, corpus):
    emails = app.extensions["database"].emails
    emails.update_one({"_id": ObjectId(corpus["invoice"])},
                      {"$set": {"received_at": datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)}})
    emails.update_one({"_id": ObjectId(corpus["resume"])},
                      {"$set": {"received_at": datetime(2026, 2, 28, 23, 59, 59, 999000, tzinfo=timezone.utc)}})
    assert found(client, auth, corpus, q="after:2026-03-01 before:2026-03-02") == ["invoice"]
    assert found(client, auth, corpus, q="before:2026-03-01") == ["resume"]
    assert found(client, auth, corpus, q="-after:2026-03-01") == ["resume"]
    assert found(client, auth, corpus, q="-before:2026-03-01 before:2026-04-01") == ["invoice"]


def test_total_is_exact_and_count_false_skips_it(client, auth, corpus):
    body = search(client, auth, q="report", limit=1)
    assert body["total"] == 2 and body["count"] == 1 and body["next"]
    assert search(client, auth, q="report", limit=1, count="false")["total"] is None
    assert search(client, auth, limit=1)["total"] == len(CORPUS)


def _walk(client, auth, cursor: str | None = None, **params) -> list[str]:
    """Every id from the page a cursor names (the first page without one) to the last."""
    seen = []
    while True:
        body = search(client, auth, **params, **({"cursor": cursor} if cursor else {}))
        seen += [e["id"] for e in body["emails"]]
        cursor = body["next"]
        if cursor is None:
            return seen


def test_cursor_pages_cover_every_match_once_in_order(client, auth, corpus):
    everything = [e["id"] for e in search(client, auth, limit=100)["emails"]]
    assert _walk(client, auth, limit=2) == everything
    newest_first = [corpus[n] for n in ("cjk", "cyrillic", "resume", "invoice")]
    assert _walk(client, auth, limit=1, q="to:me@archive.test") == newest_first
    last = search(client, auth, limit=len(CORPUS))
    assert last["next"] is None


def test_ties_on_received_at_are_paged_by_id(app, client, auth, corpus):
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    app.extensions["database"].emails.update_many({}, {"$set": {"received_at": moment}})
    pages = _walk(client, auth, limit=2)
    assert pages == sorted(corpus.values(), reverse=True)


def test_no_message_skipped_or_repeated_when_mail_arrives_between_pages(app, client, auth, corpus):
    archive = app.extensions["archive"]
    first = search(client, auth, limit=2)
    newer = [archive.ingest({**CORPUS["invoice"], "subject": f"new {i}"}).email_id for i in range(3)]
    SearchIndexer(archive).index_pending()
    seen = [e["id"] for e in first["emails"]]
    cursor = first["next"]
    while cursor:
        body = search(client, auth, limit=2, cursor=cursor)
        seen += [e["id"] for e in body["emails"]]
        cursor = body["next"]
    assert sorted(seen) == sorted(corpus.values()) and len(seen) == len(set(seen))
    assert _walk(client, auth, limit=3)[:3] == list(reversed(newer))


def test_a_tampered_or_reused_cursor_is_a_400(client, auth, corpus):
    cursor = search(client, auth, limit=1, q="report")["next"]
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    for params in ({"q": "report", "cursor": flipped}, {"q": "invoice", "cursor": cursor}, {"cursor": cursor},
                   {"q": "report", "cursor": "not-a-cursor"}, {"q": "report", "cursor": "$gt"},
                   {"q": "report", "cursor": cursor, "skip": "1"}):
        response = client.get("/emails", query_string=params, headers=auth)
        assert response.status_code == 400, params
        assert response.get_json()["success"] is False
    assert search(client, auth, q="  REPORT ", limit=1, cursor=cursor)["count"] == 1  # same query, respelt


def test_skip_keeps_working(client, auth, corpus):
    assert [e["id"] for e in search(client, auth, limit=2, skip=1, q="to:me@archive.test")["emails"]] == [
        corpus["cyrillic"], corpus["resume"]]


def test_a_message_is_searchable_once_indexed_and_subject_finds_it_at_once(app, client, auth):
    archive = app.extensions["archive"]
    email_id = archive.ingest(CORPUS["invoice"]).email_id
    assert found(client, auth, {"invoice": email_id}, q="invoice") == []
    assert found(client, auth, {"invoice": email_id}, subject="2026-03 FROM") == ["invoice"]
    waiting = backlog(app.extensions["database"])
    assert waiting.pending == 1 and waiting.oldest_seconds is not None
    health = client.get("/", headers=auth).get_json()
    assert health["search_index"]["pending"] == 1
    assert SearchIndexer(archive).index_pending() == 1
    assert backlog(app.extensions["database"]).as_dict() == {"pending": 0, "oldest_pending_seconds": None}
    assert found(client, auth, {"invoice": email_id}, q="invoice") == ["invoice"]
    assert found(client, auth, {"invoice": email_id}, subject="2026-03 FROM") == ["invoice"]


def test_search_fields_never_reach_the_api(client, auth, corpus):
    summary = search(client, auth, q="invoice")["emails"][0]
    detail = client.get(f"/emails/{corpus['invoice']}", headers=auth).get_json()["email"]
    for shown in (summary, detail):
        assert not {"tokens", "search", "search_pending", "search_version", "subject_trigrams"} & set(shown)


def test_tokens_are_bounded_and_the_body_counts_only_its_start():
    body = " ".join(f"w{i}" for i in range(5000))
    fields = search_fields({"subject": "Hello there", "text": body}, body[:4096])
    assert len(fields["tokens"]) <= MAX_TOKENS
    assert fields["tokens"][:2] == ["hello", "there"]
    kept = fields["search"]["b"].split()
    assert set(kept) <= set(fields["tokens"]) and "w4999" not in fields["tokens"]


def test_one_normaliser_for_both_sides():
    assert words("Ünïcödé — ﬁle_NAME.PDF") == ["unicode", "file", "name", "pdf"]
    assert words("x" * 300) == ["x" * 64]
    assert parse("Ünïcödé").terms[0].words == ("unicode",)


def test_prefixes_expand_through_the_vocabulary_not_the_token_array(app, client, auth, corpus):
    terms = app.extensions["database"].search_terms
    assert terms.find_one({"_id": "quarterly"}) and terms.find_one({"_id": "invoice"})
    query = app.extensions["archive"].filter_for(parse_filters({"q": "quart*"}))
    assert query["tokens"] == {"$in": ["quarterly"]}


def test_a_prefix_with_too_many_words_is_checked_on_candidates(app, client, auth):
    archive = app.extensions["archive"]
    ids = {f"m{i}": archive.ingest({"subject": f"word{i:03d} mail", "text": "x"}).email_id for i in range(120)}
    SearchIndexer(archive).index_pending()
    query = archive.filter_for(parse_filters({"q": "mail word*"}))
    assert query["tokens"] == "mail"
    assert len(found(client, auth, ids, q="mail word*")) == 100  # limit
    assert search(client, auth, q="word*", limit=1)["total"] == 120
    assert search(client, auth, q="-word0*", limit=1)["total"] == 20


def test_reindex_gives_older_messages_their_tokens_and_resumes(app, auth):
    archive = app.extensions["archive"]
    emails = app.extensions["database"].emails
    ids = [archive.ingest({"subject": f"legacy message {i}", "text": "old"}).email_id for i in range(7)]
    emails.update_many({}, {"$unset": {"search_pending": "", "subject_trigrams": ""}})  # as stored before search
    runner = app.test_cli_runner()
    client = app.test_client()
    assert search(client, auth, q="legacy")["total"] == 0
    from improvmx_archive.indexer import REINDEX_STATE, SEARCH_STATE, Reindex
    job = Reindex(archive, batch_size=3)
    next(job.batches())  # interrupted after one batch
    saved = app.extensions["database"][SEARCH_STATE].find_one({"_id": REINDEX_STATE})
    assert saved["position"] == ObjectId(ids[2])
    result = runner.invoke(args=["reindex", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "resuming after message" in result.output and "indexed 4 message(s)" in result.output
    assert search(client, auth, q="legacy")["total"] == 7
    assert search(client, auth, subject="acy mess")["total"] == 7
    again = runner.invoke(args=["reindex"])
    assert "indexed 0 message(s); 7 were already up to date" in again.output
    assert "indexed 7" in runner.invoke(args=["reindex", "--all"]).output


def test_a_message_that_cannot_be_indexed_is_set_aside_not_retried_forever(app, monkeypatch, caplog):
    from improvmx_archive import indexer

    archive = app.extensions["archive"]
    bad = archive.ingest({"subject": "poison", "text": "x"}).email_id
    good = archive.ingest({"subject": "fine", "text": "y"}).email_id
    real = indexer.search_fields

    def failing(document, body):
        if str(document["_id"]) == bad:
            raise ValueError("malformed")
        return real(document, body)

    monkeypatch.setattr(indexer, "search_fields", failing)
    assert SearchIndexer(archive).index_pending() == 2
    emails = app.extensions["database"].emails
    assert emails.find_one({"_id": ObjectId(bad)})["search_error"] == "ValueError"
    assert "tokens" in emails.find_one({"_id": ObjectId(good)})
    assert backlog(app.extensions["database"]).pending == 0
    assert f"message {bad} cannot be indexed" in caplog.text
    monkeypatch.undo()
    app.test_cli_runner().invoke(args=["reindex"])
    assert "search_error" not in emails.find_one({"_id": ObjectId(bad)})


def test_cursor_pages_keep_the_date_bounds(app, client, auth, corpus):
    emails = app.extensions["database"].emails
    emails.update_one({"_id": ObjectId(corpus["invoice"])},
                      {"$set": {"received_at": datetime(2020, 1, 1, tzinfo=timezone.utc)}})
    pages = _walk(client, auth, limit=1, since="2021-01-01", q="-before:2021-01-01")
    assert pages == [corpus[n] for n in ("newsletter", "cjk", "cyrillic", "resume")]
    assert _walk(client, auth, limit=2, until="2021-01-01") == [corpus["invoice"]]


def test_a_batch_is_written_in_one_round_trip_and_a_refused_message_is_set_aside(app, monkeypatch, caplog):
    """The pass writes a batch's fields with one bulk_write; a message the database refuses
    (here: a unique index the second one's fields violate) is set aside, the rest indexed."""
    archive = app.extensions["archive"]
    emails = app.extensions["database"].emails
    first = archive.ingest({"subject": "same words", "text": "a"}).email_id
    second = archive.ingest({"subject": "same words", "text": "b"}).email_id
    third = archive.ingest({"subject": "other words", "text": "c"}).email_id
    emails.create_index("search.s", unique=True, sparse=True)  # the subject words
    bulk_calls, update_calls = [], []
    real_bulk, real_update = emails.bulk_write, emails.update_one
    monkeypatch.setattr(type(emails), "bulk_write", lambda self, ops, **kw: bulk_calls.append(len(ops)) or real_bulk(ops, **kw))
    monkeypatch.setattr(type(emails), "update_one", lambda self, *a, **kw: update_calls.append(a) or real_update(*a, **kw))
    assert SearchIndexer(archive).index_pending() == 3
    assert bulk_calls == [3]
    assert len(update_calls) == 1  # only the refused message costs a round trip of its own
    assert "tokens" in emails.find_one({"_id": ObjectId(first)})
    assert "tokens" in emails.find_one({"_id": ObjectId(third)})
    assert emails.find_one({"_id": ObjectId(second)})["search_error"] == "write error 11000"
    assert backlog(app.extensions["database"]).pending == 0
    assert f"message {second} cannot be indexed" in caplog.text


def test_whole_message_reads_leave_the_search_fields_out_and_still_rebuild(app):
    """find_many (the IMAP view's FETCH) skips what only queries read; the rebuild never reads it."""
    from improvmx_archive.indexer import SEARCH_ONLY_FIELDS
    from improvmx_archive.mailio import REBUILD_INPUTS

    archive = app.extensions["archive"]
    store_corpus(app)
    SearchIndexer(archive).index_pending()
    indexed = archive.emails.find_one({"tokens": {"$exists": True}})
    assert set(search_fields(indexed, "body words")) == set(SEARCH_ONLY_FIELDS)
    assert not set(SEARCH_ONLY_FIELDS) & set(REBUILD_INPUTS)
    (whole,) = archive.find_many({"_id": indexed["_id"]})
    assert not set(SEARCH_ONLY_FIELDS) & set(whole)
    assert whole["subject"] == indexed["subject"]
