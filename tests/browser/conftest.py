"""A real browser against the real server: gunicorn (two workers, the shipped config) on
SecantusDB, Debian's headless Chromium through Selenium, and local HTTP servers that play the
outside world (a tracker recording every request, a hostile site posting forms)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from devtools import browser, processes

API_KEY = "browser-test-key-0123456789abcdef"


class LocalSite:
    """An HTTP server on 127.0.0.1 that records every request and answers with `pages`."""

    def __init__(self, pages: dict[str, tuple[str, bytes]] | None = None):
        self.pages = pages or {}
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                site.requests.append(f"GET {self.path}")
                content_type, body = site.pages.get(self.path, ("image/png", b""))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                site.requests.append(f"POST {self.path}")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Served:
    """The archive under test: its base URL and the helpers tests use around the browser."""

    base: str
    log_text: callable
    ids: dict[str, str] = field(default_factory=dict)

    def api(self, path: str):
        response = requests.get(self.base + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_searchable(self, query: str, expected: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.api(f"/emails?q={query}")["total"] < expected:
            assert time.monotonic() < deadline, f"the indexer did not index {query!r} in {timeout} s"
            time.sleep(0.2)

    def ingest(self, name: str, payload: dict) -> str:
        response = requests.post(self.base + "/webhook", json=payload, timeout=30)
        assert response.status_code == 200, response.text
        self.ids[name] = response.json()["email_id"]
        return self.ids[name]


@pytest.fixture(scope="session")
def tracker():
    """Stands for every remote server a hostile message points at."""
    site = LocalSite()
    yield site
    site.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory, secantus_server):
    work = tmp_path_factory.mktemp("browser-app")
    env = {
        "API_KEY": API_KEY,
        "MONGO_URI": processes.mongo_uri(secantus_server.port),
        "MONGO_DB": f"browser_{uuid.uuid4().hex[:10]}",
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_GLOBAL": "100000 per hour",
        "RATELIMIT_UI": "100000 per minute",
        "SPOOL_DIR": str(work / "spool"),
        "TRUSTED_PROXY_COUNT": "0",
        "BACKGROUND_TASKS": "on",  # the search indexer makes new mail searchable
        "SEARCH_INDEX_INTERVAL": "0.5",
        "WEB_CONCURRENCY": "2",
    }
    server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
    yield Served(f"http://127.0.0.1:{server.port}", server.log_text)
    server.stop()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    session = browser.chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield session
    session.quit()
