"""Fixtures for the end-to-end deployment tests: the real Caddy in front of one or more real
gunicorn instances (the shipped gunicorn.conf.py) sharing one SecantusDB database."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import pytest
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.people import People
from tests.deploy.helpers import Response, request, require_tools, wait_until


@dataclass
class Stack:
    """Caddy on a loopback port, proxying to apps[0..n-1]; every process logs to a file."""

    caddy: processes.ManagedProcess
    apps: list[processes.ManagedProcess]
    api_key: str
    webhook_secret: str
    mongo_uri: str = ""
    mongo_db: str = ""
    _request_ids: int = field(default=0)

    def personal_key(self, name: str) -> str:
        """A new admin person's key in the stack's database: authenticated requests count per
        person, so a test that spends a route's budget needs a key no other test used."""
        mongo = MongoClient(self.mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True)
        try:
            database = mongo[self.mongo_db]
            person = People(database).add(name, f"{name}@archive.test", role="admin")
            return Keys(database).create(str(person["_id"]), name, ["read"])[0]
        finally:
            mongo.close()

    def new_request_id(self) -> str:
        self._request_ids += 1
        return f"e2e-{secrets.token_hex(4)}-{self._request_ids:04d}"

    def through_caddy(self, method: str, path: str, *, source: str = "127.0.0.1", key: str | None = None,
                      headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[str, Response]:
        """A request to Caddy tagged with a fresh X-Request-ID (returned) to find it in the logs."""
        request_id = self.new_request_id()
        headers = {"X-Request-ID": request_id, **(headers or {})}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return request_id, request(self.caddy.port, method, path, headers=headers, body=body, source=source)

    def post_webhook(self, payload: dict, source: str = "127.0.0.1", **headers: str) -> tuple[str, Response]:
        return self.through_caddy("POST", f"/webhook/{self.webhook_secret}", source=source, body=json.dumps(payload).encode(),
                                  headers={"Content-Type": "application/json", **headers})

    def served_by(self, request_id: str) -> list[int]:
        """Indices of the apps whose gunicorn access log has this request (waits for the line)."""
        marker = f"rid={request_id} "
        found = wait_until(lambda: [i for i, app in enumerate(self.apps) if marker in app.log_text()], timeout=5)
        return found or []

    def access_line(self, request_id: str) -> str:
        self.served_by(request_id)
        return next(line for app in self.apps for line in app.log_text().splitlines() if f"rid={request_id} " in line)

    def app_line(self, request_id: str) -> str:
        """The app's own per-request log line (logger improvmx_archive.request)."""
        marker = f"request id={request_id} "
        wait_until(lambda: any(marker in app.log_text() for app in self.apps), timeout=5)
        return next(line for app in self.apps for line in app.log_text().splitlines() if marker in line)

    def caddy_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.caddy.log_text().splitlines()
                if line.startswith("{") and '"http.log.access' in line]

    def caddy_entry(self, request_id: str) -> dict:
        def find():
            return next((entry for entry in self.caddy_entries()
                         if entry.get("resp_headers", {}).get("X-Request-Id") == [request_id]), None)
        entry = wait_until(find, timeout=5)
        assert entry, f"no Caddy access log entry for {request_id}"
        return entry


@pytest.fixture(scope="module")
def make_stack(secantus_server, tmp_path_factory):
    """Start Caddy and `apps` gunicorn instances sharing one fresh database; all stopped at the
    end of the module."""
    require_tools("caddy")
    started: list[processes.ManagedProcess] = []

    def start(apps: int, **env: str) -> Stack:
        work = tmp_path_factory.mktemp("stack")
        api_key, webhook_secret = secrets.token_hex(20), secrets.token_hex(12)
        app_env = {
            "MONGO_URI": processes.mongo_uri(secantus_server.port),
            "MONGO_DB": f"e2e_{secrets.token_hex(6)}",
            "API_KEY": api_key,
            "WEBHOOK_SECRET": webhook_secret,
            "SPOOL_DIR": str(work / "spool"),
            "LOG_LEVEL": "INFO",
            "WEB_CONCURRENCY": "1" if apps > 1 else "2",
            **env,
        }
        instances = []
        for index in range(apps):
            instance = processes.gunicorn(app_env, work / f"gunicorn-{index}.log")
            started.append(instance)
            instances.append(instance.start())
        caddy = processes.caddy(work / "caddy", [f"127.0.0.1:{app.port}" for app in instances])
        started.append(caddy)
        caddy.start()
        return Stack(caddy=caddy, apps=instances, api_key=api_key, webhook_secret=webhook_secret,
                     mongo_uri=app_env["MONGO_URI"], mongo_db=app_env["MONGO_DB"])

    yield start
    for process in reversed(started):
        process.stop()
