"""Health endpoints: details for the owner, bare liveness and readiness for machines."""

import mongomock
from pymongo.errors import ServerSelectionTimeoutError


def _database_down(monkeypatch):
    def refuse(*args, **kwargs):
        raise ServerSelectionTimeoutError("no servers")

    monkeypatch.setattr(mongomock.database.Database, "command", refuse)


def test_health_reports_database_and_spool(client, auth):
    response = client.get("/", headers=auth)
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy" and body["service"] == "ImprovMX Webhook"
    assert body["timestamp"].endswith("Z") and body["database"] == "reachable"
    assert body["spool"]["depth"] == 0


def test_health_is_503_unhealthy_when_mongodb_does_not_answer(client, auth, monkeypatch):
    _database_down(monkeypatch)
    response = client.get("/", headers=auth)
    assert response.status_code == 503
    assert response.get_json()["status"] == "unhealthy"


def test_health_needs_the_bearer_key(client):
    assert client.get("/").status_code == 401


def test_liveness_and_readiness_need_no_key_and_say_nothing_more(client, monkeypatch):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    _database_down(monkeypatch)
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.get_json() == {"status": "unavailable"}
