"""RATELIMIT_STORAGE_URI=redis://: the limits live in a real Redis server and hold across
the workers of a real gunicorn, as they do in MongoDB."""

from __future__ import annotations

import shutil

import pytest
import redis
import requests

from devtools import processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server (Debian package) not installed"),
]

API_KEY = "redis-limit-key-0123456789abcdef"


@pytest.fixture
def redis_server(tmp_path):
    port = processes.free_port()
    server = processes.ManagedProcess(
        name="redis", port=port, log_path=tmp_path / "redis.log",
        argv=["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
    ).start()
    yield f"redis://127.0.0.1:{port}/0"
    server.stop()


def test_list_limit_is_shared_by_every_worker_through_redis(tmp_path, secantus_uri, secantus_db_name, redis_server):
    env = {"API_KEY": API_KEY, "MONGO_URI": secantus_uri, "MONGO_DB": secantus_db_name,
           "RATELIMIT_STORAGE_URI": redis_server, "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp_path / "spool"),
           "WEB_CONCURRENCY": "3", "BACKGROUND_TASKS": "false"}
    with processes.gunicorn(env, tmp_path / "gunicorn.log").start() as server:
        headers = {"Authorization": f"Bearer {API_KEY}", "Connection": "close"}
        url = f"http://127.0.0.1:{server.port}/emails"
        statuses = [requests.get(url, headers=headers, timeout=30).status_code for _ in range(21)]
        workers = {line for line in server.log_text().splitlines() if "Booting worker" in line}
    assert statuses == [200] * 20 + [429], statuses
    assert len(workers) == 3
    assert any(b"LIST" in key or b"emails" in key for key in redis.Redis.from_url(redis_server).keys("*"))
