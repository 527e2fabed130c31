"""Shared fixtures: apps on mongomock for unit tests, a real SecantusDB for integration tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import mongomock
import mongomock.gridfs
import pytest
from pymongo import MongoClient

from devtools import processes
from improvmx_archive import create_app
from improvmx_archive.config import Settings
from improvmx_archive.sample import payload_from_mime, sample_mime

API_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-abcdef0123456789"

mongomock.gridfs.enable_gridfs_integration()


def make_settings(tmp_path: Path, **overrides: str) -> Settings:
    """Settings as the app would read them from this environment (no .env file)."""
    env = {
        "API_KEY": API_KEY,
        "MONGO_URI": "mongodb://127.0.0.1:1/",
        "RATELIMIT_STORAGE_URI": "memory://",
        "SPOOL_DIR": str(tmp_path / "spool"),
        "TRUSTED_PROXY_COUNT": "0",
        **overrides,
    }
    return Settings.from_env(env, dotenv_path=None)


@pytest.fixture
def make_app(tmp_path):
    """Build an app on a fresh mongomock database with settings overridden per test."""

    def build(mongo_client=None, **overrides: str):
        client = mongo_client if mongo_client is not None else mongomock.MongoClient(tz_aware=True)
        return create_app(make_settings(tmp_path, **overrides), mongo_client=client)

    return build


@pytest.fixture
def app(make_app):
    return make_app(RATELIMIT_ENABLED="false")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def archive(app):
    return app.extensions["archive"]


@pytest.fixture
def ui(client):
    """A test client signed in to the web UI with the operator key."""
    from tests.ui_helpers import sign_in  # ui_helpers imports this module

    sign_in(client)
    return client


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def sample_payload():
    return payload_from_mime(sample_mime())


@pytest.fixture(scope="session")
def secantus_server(tmp_path_factory):
    """One real SecantusDB server (MongoDB wire protocol over a socket) for the session."""
    data_dir = tmp_path_factory.mktemp("secantus") / "data"
    server = processes.secantus(data_dir).start()
    yield server
    server.stop()


@pytest.fixture
def secantus_uri(secantus_server):
    return processes.mongo_uri(secantus_server.port)


@pytest.fixture
def secantus_db_name():
    """A fresh database name per test, so tests sharing the server do not see each other."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_secantus_app(tmp_path, secantus_uri, secantus_db_name):
    """Build apps on one fresh SecantusDB database (MongoClient over TCP), with settings
    overridden per app; the database is dropped afterwards."""
    mongo = MongoClient(secantus_uri, serverSelectionTimeoutMS=5000, tz_aware=True)

    def build(**overrides: str):
        settings = make_settings(tmp_path, MONGO_URI=secantus_uri, MONGO_DB=secantus_db_name, **overrides)
        return create_app(settings, mongo_client=mongo)

    yield build
    mongo.drop_database(secantus_db_name)
    mongo.close()


@pytest.fixture
def secantus_app(make_secantus_app):
    """The app on a real SecantusDB connection, limiter off."""
    return make_secantus_app(RATELIMIT_ENABLED="false")


# mongomock's bulk builder predates pymongo 4.20, whose UpdateOne passes `sort=` to it: accept
# the argument (an UpdateOne by _id has nothing to sort) so bulk_write of UpdateOne runs here as
# it does against a server (the search indexer writes a batch's fields in one bulk_write).
_mongomock_add_update = mongomock.collection.BulkOperationBuilder.add_update


def _add_update_accepting_sort(self, *args, sort=None, **kwargs):
    assert sort is None, "mongomock cannot apply UpdateOne(sort=...)"
    return _mongomock_add_update(self, *args, **kwargs)


mongomock.collection.BulkOperationBuilder.add_update = _add_update_accepting_sort
