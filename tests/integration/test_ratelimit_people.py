"""Issues 16 and 19 (item 1) over real HTTP: rate limits count per person, not per address.

One gunicorn (3 workers, the shipped gunicorn.conf.py) on SecantusDB, whose database also
holds the limiter's windows, as production does. People and keys are written to that
database the way `flask users`/`flask keys` write them. Each test speaks from its own
loopback address (127.0.0.x) and, by opening a fresh connection per request, lets the
kernel spread its requests over every worker.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.people import People
from tests.integration.test_security_multiworker import Server

pytestmark = pytest.mark.slow

OPERATOR_KEY = "people-limits-key-0123456789abcdef"
WORKERS = 3
OLD_HOURLY = 50  # RATELIMIT_GLOBAL's hourly count, the figure issue 19 hit with a valid key
PER_PERSON_HOURLY = 70


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(secantus_server, tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("people-limits")
    uri = processes.mongo_uri(secantus_server.port)
    database_name = f"people_limits_{uuid.uuid4().hex[:10]}"
    env = {
        "API_KEY": OPERATOR_KEY,
        "MONGO_URI": uri,
        "MONGO_DB": database_name,
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_STORAGE_URI": uri,
        "RATELIMIT_GLOBAL": "200 per day;50 per hour",
        "RATELIMIT_LIST": "200 per minute",  # the per-person hourly figure is what these tests reach
        "RATELIMIT_AUTHENTICATED": f"{PER_PERSON_HOURLY} per hour",
        "TRUSTED_PROXY_COUNT": "0",
        "SPOOL_DIR": str(tmp / "spool"),
        "WEB_CONCURRENCY": str(WORKERS),
        "LOG_LEVEL": "INFO",
    }
    server = Server(processes.gunicorn(env, tmp / "gunicorn.log").start(timeout=60))
    deadline = time.monotonic() + 60
    while len(server.worker_pids()) < WORKERS:
        assert time.monotonic() < deadline, f"gunicorn did not boot {WORKERS} workers:\n{server.log()}"
        time.sleep(0.1)
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    database = mongo[database_name]
    people, keys = People(database), Keys(database)
    tokens = {}
    for name in ("poller", "ana", "bo"):
        person = people.add(name, f"{name}@archive.test")
        people.grant(name, ["support@archive.test"])
        tokens[name] = keys.create(str(person["_id"]), "script", ["read"])[0]
    try:
        yield server, tokens
    finally:
        server.process.stop()
        mongo.drop_database(database_name)
        mongo.close()


def _served_by(server: Server, replies) -> set[str]:
    return {server.pid_for(reply.request_id) for reply in replies}


def test_a_valid_key_polling_past_the_old_hourly_limit_is_never_refused(served):
    server, tokens = served
    ip = "127.0.0.61"
    replies = [server.send("GET", "/emails?processed=false", ip=ip, headers=_bearer(tokens["poller"]))
               for _ in range(OLD_HOURLY + 10)]
    assert [reply.status for reply in replies] == [200] * (OLD_HOURLY + 10)
    assert len(_served_by(server, replies)) > 1  # the count is shared, not one worker's
    operator = [server.send("GET", "/emails", ip=ip, headers=_bearer(OPERATOR_KEY)).status
                for _ in range(OLD_HOURLY + 10)]
    assert operator == [200] * (OLD_HOURLY + 10)
    assert replies[-1].headers["X-RateLimit-Limit"] == "200"  # the route's own limit, counted per person


def test_two_people_behind_one_address_do_not_use_up_each_others_budget(served):
    server, tokens = served
    ip = "127.0.0.62"
    ana = [server.send("GET", "/emails", ip=ip, headers=_bearer(tokens["ana"])).status for _ in range(PER_PERSON_HOURLY)]
    assert ana == [200] * PER_PERSON_HOURLY
    refused = server.send("GET", "/emails", ip=ip, headers=_bearer(tokens["ana"]))
    assert (refused.status, refused.json()) == (429, {"success": False,
                                                      "error": f"Rate limit exceeded: {PER_PERSON_HOURLY} per 1 hour"})
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    bo = server.send("GET", "/emails", ip=ip, headers=_bearer(tokens["bo"]))
    assert bo.status == 200
    assert server.send("GET", "/openapi.json", ip=ip).status == 200  # the address's own budget is untouched


def test_an_unauthenticated_flood_still_gets_429_per_address(served):
    server, tokens = served
    ip = "127.0.0.63"
    flood = [server.send("GET", "/emails", ip=ip).status for _ in range(OLD_HOURLY)]
    assert flood == [401] * OLD_HOURLY
    refused = server.send("GET", "/emails", ip=ip)
    assert (refused.status, refused.json()) == (429, {"success": False, "error": "Rate limit exceeded: 50 per 1 hour"})
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    wrong_key = server.send("GET", "/emails", ip=ip, headers=_bearer("imxa_guessed0123456789"))
    assert wrong_key.status == 429  # a failed credential counts per address too
    assert server.send("GET", "/openapi.json", ip="127.0.0.64").status == 200
    assert server.send("GET", "/emails", ip=ip, headers=_bearer(OPERATOR_KEY)).status == 200
