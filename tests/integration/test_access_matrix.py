"""The access matrix, from outside: gunicorn with several workers on SecantusDB, every caller
times every route and UI page that touches mail, each cell exactly the expected status.

Callers: an admin person's key, two members with different aliases (ana: support@, ben:
sales@), a domain-wide member (dom: *@shop.test), ana's read-only key, a revoked key, an
operator key (API_KEY) and no key; in the UI their sessions (a disabled member's session
instead of the keys). Messages: two for support@, one each for sales@ and orders@shop.test,
and an id that does not exist. A message outside a caller's view must answer exactly the
404 of the missing one (same status, same body). Cursors taken from another reader's page
never show mail outside the caller's view. Every failure names its cell; all cells run
before the test fails.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from bson import ObjectId
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.access.audit import AuditTrail
from improvmx_archive.access.keys import Keys
from improvmx_archive.access.people import People
from improvmx_archive.sample import sample_mime
from improvmx_archive.ui.sessions import COOKIE_NAME, UiSessions

pytestmark = pytest.mark.slow

OPERATOR_KEY = "matrix-operator-key-0123456789abcdef"
WORKERS = 3
TIMEOUT = 90
SEEDED = ("support", "support2", "sales", "shop")
ALIAS = {"support": "support@archive.test", "support2": "support@archive.test", "sales": "sales@archive.test",
         "shop": "orders@shop.test"}
VIEW = {  # which seeded messages each caller sees
    "admin": set(SEEDED), "operator": set(SEEDED), "ana": {"support", "support2"}, "ana_ro": {"support", "support2"},
    "ben": {"sales"}, "dom": {"shop"}, "revoked": set(), "none": set(), "disabled": set(),
}
API_CALLERS = ("admin", "ana", "ben", "dom", "ana_ro", "revoked", "operator", "none")
UI_CALLERS = ("admin", "ana", "ben", "dom", "operator", "disabled", "none")
IGNORED_HEADERS = {"date", "x-request-id", "content-length", "x-ratelimit-reset"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]

    def json(self):
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Site:
    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, *, headers: dict | None = None, body: bytes | None = None,
             cookies: dict | None = None) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        sent = {"Connection": "close", **(headers or {})}
        if cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            jar = SimpleCookie()
            for value in response.headers.get_all("Set-Cookie") or []:
                jar.load(value)
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read(),
                         {name: morsel.value for name, morsel in jar.items()})
        finally:
            connection.close()

    def deliver(self, to: str, subject: str) -> str:
        payload = {"from": {"email": "customer@example.org", "name": "Customer"}, "to": [{"email": to, "name": ""}],
                   "subject": subject, "text": f"body of {subject}", "html": f"<p>{subject}</p>", "headers": {},
                   "attachments": [{"name": "a.txt", "type": "text/plain", "content": "aGVsbG8=",
                                    "encoding": "base64"}], "inlines": []}
        reply = self.call("POST", "/webhook", headers={"Content-Type": "application/json"},
                          body=json.dumps(payload).encode())
        assert reply.status == 200, reply.body
        return reply.json()["email_id"]


@pytest.fixture(scope="module")
def world(secantus_server, tmp_path_factory):
    """The running service, its people, keys and sessions, and the seeded messages."""
    tmp = tmp_path_factory.mktemp("access-matrix")
    uri, name = processes.mongo_uri(secantus_server.port), f"matrix_{uuid.uuid4().hex[:12]}"
    env = {"API_KEY": OPERATOR_KEY, "MONGO_URI": uri, "MONGO_DB": name, "RATELIMIT_ENABLED": "false",
           "TRUSTED_PROXY_COUNT": "0", "SPOOL_DIR": str(tmp / "spool"), "WEB_CONCURRENCY": str(WORKERS),
           "LOG_LEVEL": "WARNING"}
    server = processes.gunicorn(env, tmp / "gunicorn.log").start()
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        deadline = time.monotonic() + 60
        while len(set(re.findall(r"Booting worker with pid: (\d+)", server.log_text()))) < WORKERS:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        site = Site(server.port)
        while site.call("GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        database = mongo[name]
        people, keys = People(database), Keys(database)
        ids = {label: site.deliver(ALIAS[label], f"seeded {label}") for label in SEEDED}
        persons = {
            "admin": people.add("root", "root@archive.test", role="admin"),
            "ana": people.add("ana", "ana@archive.test"), "ben": people.add("ben", "ben@archive.test"),
            "dom": people.add("dom", "dom@shop.test"), "cy": people.add("cy", "cy@archive.test"),
        }
        people.grant("ana", ["support@archive.test"])
        people.grant("ben", ["sales@archive.test"])
        people.grant("dom", ["*@shop.test"])
        people.grant("cy", ["sales@archive.test"])
        tokens = {caller: keys.create(str(persons[caller]["_id"]), "matrix", ["read", "write"])[0]
                  for caller in ("admin", "ana", "ben", "dom")}
        tokens["ana_ro"] = keys.create(str(persons["ana"]["_id"]), "read-only", ["read"])[0]
        revoked, record = keys.create(str(persons["ben"]["_id"]), "old laptop", ["read", "write"])
        keys.revoke(record["_id"])
        tokens["revoked"] = revoked
        tokens["operator"] = OPERATOR_KEY
        auth = {caller: {"Authorization": f"Bearer {token}"} for caller, token in tokens.items()}
        auth["none"] = {}
        sessions = UiSessions(database, (OPERATOR_KEY,), timedelta(hours=1))
        cookies = {caller: {COOKIE_NAME: sessions.open(ip="127.0.0.1", user_agent="matrix",
                                                        person_id=str(persons[caller]["_id"]))[0]}
                   for caller in ("admin", "ana", "ben", "dom")}
        cookies["disabled"] = {COOKIE_NAME: sessions.open(ip="127.0.0.1", user_agent="matrix",
                                                           person_id=str(persons["cy"]["_id"]))[0]}
        people.set_disabled("cy", True)
        cookies["operator"] = {COOKIE_NAME: sessions.open(ip="127.0.0.1", user_agent="matrix",
                                                           operator_key=OPERATOR_KEY)[0]}
        cookies["none"] = {}
        yield {"site": site, "database": database, "ids": ids, "auth": auth, "cookies": cookies}
    finally:
        server.stop()
        mongo.drop_database(name)
        mongo.close()


class Matrix:
    """Collects every cell that answered otherwise than expected, named."""

    def __init__(self):
        self.wrong: list[str] = []

    def check(self, cell: str, got: Reply, expected: int) -> None:
        if got.status != expected:
            self.wrong.append(f"{cell}: expected {expected}, got {got.status} {got.body[:120]!r}")

    def expect(self, cell: str, condition: bool, what: str) -> None:
        if not condition:
            self.wrong.append(f"{cell}: {what}")

    def same_404(self, cell: str, hidden: Reply, missing: Reply) -> None:
        """A message outside the view answers exactly as one that does not exist."""
        if hidden.status == 404 and (_body(hidden) != _body(missing) or _headers(hidden) != _headers(missing)):
            a, b = _body(hidden), _body(missing)
            at = next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            self.wrong.append(f"{cell}: the 404 of a hidden message differs from a missing one's: "
                              f"{a[max(0, at - 60):at + 60]!r} / {b[max(0, at - 60):at + 60]!r} / headers "
                              f"{set(_headers(hidden).items()) ^ set(_headers(missing).items())}")

    def done(self) -> None:
        assert not self.wrong, f"{len(self.wrong)} cell(s) wrong:\n" + "\n".join(self.wrong)


_CSRF_VALUE = re.compile(rb'name="csrf_token" value="[^"]+"')


def _body(reply: Reply) -> bytes:
    """The body with the sign-out form's CSRF token (signed with a timestamp) masked."""
    return _CSRF_VALUE.sub(b'name="csrf_token" value=""', reply.body)


def _headers(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in IGNORED_HEADERS}


def api_expected(caller: str, *, write: bool = False, admin_only: bool = False, visible: bool | None = None,
                 ok: int = 200) -> int:
    if caller in ("none", "revoked"):
        return 401
    if write and caller == "ana_ro":
        return 403
    if admin_only and caller not in ("admin", "operator"):
        return 403
    if visible is False:
        return 404
    return ok


MESSAGE_ROUTES = [  # method, path, body, needs write
    ("GET", "/emails/{id}", None, False),
    ("GET", "/emails/{id}/raw", None, False),
    ("GET", "/emails/{id}/attachments/0", None, False),
    ("GET", "/emails/{id}/attachment/a.txt", None, False),
    ("PATCH", "/emails/{id}", {"processed": True}, True),
    ("PATCH", "/emails/{id}", {"hold": False}, True),
]


def test_api_matrix(world):
    site, ids, auth, matrix = world["site"], world["ids"], world["auth"], Matrix()
    missing_id = str(ObjectId())
    for caller in API_CALLERS:
        headers = auth[caller]
        listed = site.call("GET", "/emails?limit=100", headers=headers)
        matrix.check(f"{caller} GET /emails", listed, api_expected(caller))
        if listed.status == 200:
            shown = {e["id"] for e in listed.json()["emails"]} & set(ids.values())
            matrix.expect(f"{caller} GET /emails", shown == {ids[m] for m in VIEW[caller]}, f"listed {shown}")
        mbox = site.call("GET", "/export.mbox", headers=headers)
        matrix.check(f"{caller} GET /export.mbox", mbox, api_expected(caller))
        if mbox.status == 200:
            held = {label for label in SEEDED if f"seeded {label}\r\n".encode() in mbox.body
                    or f"seeded {label}\n".encode() in mbox.body}
            matrix.expect(f"{caller} GET /export.mbox", held == VIEW[caller], f"exported {held}")
        for method, template, body, write in MESSAGE_ROUTES:
            data = json.dumps(body).encode() if body else None
            sent = {**headers, "Content-Type": "application/json"} if body else headers
            missing = site.call(method, template.format(id=missing_id), headers=sent, body=data)
            cell = f"{caller} {method} {template} {json.dumps(body) if body else ''}".rstrip()
            matrix.check(f"{cell} [missing]", missing, api_expected(caller, write=write, visible=False))
            for label in SEEDED:
                reply = site.call(method, template.format(id=ids[label]), headers=sent, body=data)
                visible = label in VIEW[caller]
                matrix.check(f"{cell} [{label}]", reply, api_expected(caller, write=write, visible=visible))
                if not visible:
                    matrix.same_404(f"{cell} [{label}]", reply, missing)
        for label in ("support", "sales", "shop"):  # DELETE, each on a message of its own
            fresh = site.deliver(ALIAS[label], f"delete {caller} {label} {uuid.uuid4().hex}")
            reply = site.call("DELETE", f"/emails/{fresh}", headers=headers)
            visible = label in VIEW[caller]
            matrix.check(f"{caller} DELETE /emails/{{id}} [{label}]", reply,
                         api_expected(caller, write=True, visible=visible))
            if not visible:
                matrix.same_404(f"{caller} DELETE /emails/{{id}} [{label}]", reply,
                                site.call("DELETE", f"/emails/{missing_id}", headers=headers))
        imported = site.call("POST", "/import", headers={**headers, "Content-Type": "message/rfc822"},
                             body=sample_mime().replace(b"Subject: ", f"Subject: {uuid.uuid4().hex} ".encode(), 1))
        matrix.check(f"{caller} POST /import", imported, api_expected(caller, write=True, admin_only=True, ok=201))
        matrix.check(f"{caller} GET /", site.call("GET", "/", headers=headers), api_expected(caller, admin_only=True))
        matrix.check(f"{caller} GET /metrics", site.call("GET", "/metrics", headers=headers),
                     api_expected(caller, admin_only=True))
        trail = site.call("GET", "/audit", headers=headers)
        matrix.check(f"{caller} GET /audit", trail, api_expected(caller))
        if trail.status == 200 and caller in ("ana", "ana_ro", "ben", "dom"):
            names = {e["actor"]["name"] for e in trail.json()["entries"]}
            matrix.expect(f"{caller} GET /audit", names <= {"ana" if caller == "ana_ro" else caller},
                          f"shows entries of {names}")
    matrix.done()


def test_cursors_from_another_readers_page_show_nothing_outside_the_view(world):
    site, ids, auth, matrix = world["site"], world["ids"], world["auth"], Matrix()
    cursors = {caller: site.call("GET", "/emails?limit=1", headers=auth[caller]).json()["next"]
               for caller in ("admin", "ana")}
    assert all(cursors.values()), cursors
    for owner, cursor in cursors.items():
        for caller in ("ana", "ben", "dom", "ana_ro", "operator"):
            reply = site.call("GET", f"/emails?limit=100&cursor={cursor}", headers=auth[caller])
            cell = f"{caller} GET /emails?cursor=<{owner}'s>"
            matrix.check(cell, reply, 200)
            if reply.status == 200:
                shown = {e["id"] for e in reply.json()["emails"]} & set(ids.values())
                matrix.expect(cell, shown <= {ids[m] for m in VIEW[caller]}, f"shows {shown}")
            matrix.check(f"{caller} GET /emails?cursor=<{owner}'s>&q=other", site.call(
                "GET", f"/emails?cursor={cursor}&q=other", headers=auth[caller]), 400)
    for caller in ("ana", "ben", "dom"):
        page = site.call("GET", f"/ui/?cursor={cursors['admin']}", cookies=world["cookies"][caller])
        cell = f"{caller} GET /ui/?cursor=<admin's>"
        matrix.check(cell, page, 200)
        foreign = [label for label in SEEDED if label not in VIEW[caller] and f"seeded {label}<" in page.text()]
        matrix.expect(cell, not foreign, f"shows {foreign}")
    audit_cursor = site.call("GET", "/audit?limit=1", headers=auth["admin"]).json()["next"]
    for caller in ("ana", "ben", "dom", "ana_ro"):
        matrix.check(f"{caller} GET /audit?cursor=<admin's>",
                     site.call("GET", f"/audit?limit=1&cursor={audit_cursor}", headers=auth[caller]), 400)
    matrix.done()


def _csrf(site: Site, cookies: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A form's CSRF token and the cookies that go with it (the sign-in form for no session)."""
    page = site.call("GET", "/ui/" if cookies else "/ui/login", cookies=cookies)
    if page.status != 200:
        page = site.call("GET", "/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text()).group(1)
    return token, {**cookies, **page.cookies}


def ui_expected(caller: str, method: str, *, visible: bool | None = None, ok: int | None = None) -> int:
    if caller in ("none", "disabled"):
        return 302 if method == "GET" else 401
    if visible is False:
        return 404
    return ok or (200 if method == "GET" else 303)


def test_ui_matrix(world):
    site, ids, database, matrix = world["site"], world["ids"], world["database"], Matrix()
    missing_id = str(ObjectId())
    pages = ("/ui/emails/{id}", "/ui/emails/{id}/frame", "/ui/emails/{id}/parts/0", "/ui/emails/{id}/eml")
    forms = (("/ui/emails/{id}/hold", {"hold": "false"}), ("/ui/emails/{id}/processed", {"processed": "true"}))
    for caller in UI_CALLERS:
        cookies = world["cookies"][caller]
        token, jar = _csrf(site, cookies)

        def post(path: str, fields: list[tuple[str, str]]) -> Reply:
            from urllib.parse import urlencode
            return site.call("POST", path, cookies=jar, body=urlencode([*fields, ("csrf_token", token)]).encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})

        for path in ("/ui/", "/ui/audit", "/ui/overview"):
            matrix.check(f"{caller} GET {path}", site.call("GET", path, cookies=jar), ui_expected(caller, "GET"))
        for alias in sorted(set(ALIAS.values())):  # one alias at a time: the seeded ones fit on page 1
            inbox = site.call("GET", f"/ui/?to={alias}", cookies=jar)
            if inbox.status == 200:
                shown = {label for label in SEEDED if f"seeded {label}<" in inbox.text()}
                wanted = {label for label in VIEW[caller] if ALIAS[label] == alias}
                matrix.expect(f"{caller} GET /ui/?to={alias}", shown == wanted, f"lists {shown}")
        for template in pages:
            missing = site.call("GET", template.format(id=missing_id), cookies=jar)
            matrix.check(f"{caller} GET {template} [missing]", missing, ui_expected(caller, "GET", visible=False)
                         if caller not in ("none", "disabled") else 302)
            for label in SEEDED:
                visible = label in VIEW[caller]
                reply = site.call("GET", template.format(id=ids[label]), cookies=jar)
                matrix.check(f"{caller} GET {template} [{label}]", reply, ui_expected(caller, "GET", visible=visible))
                if not visible and reply.status == 404:
                    matrix.same_404(f"{caller} GET {template} [{label}]", reply, missing)
        for template, fields in forms:
            missing = post(template.format(id=missing_id), list(fields.items()))
            for label in SEEDED:
                visible = label in VIEW[caller]
                reply = post(template.format(id=ids[label]), list(fields.items()))
                matrix.check(f"{caller} POST {template} {fields} [{label}]", reply,
                             ui_expected(caller, "POST", visible=visible))
                if not visible and reply.status == 404:
                    matrix.same_404(f"{caller} POST {template} [{label}]", reply, missing)
        # bulk: mark every seeded message; only the caller's own change
        database.emails.update_many({"_id": {"$in": [ObjectId(i) for i in ids.values()]}},
                                    {"$set": {"processed": False}})
        reply = post("/ui/emails/bulk", [("action", "processed"), *[("ids", ids[m]) for m in SEEDED]])
        matrix.check(f"{caller} POST /ui/emails/bulk processed", reply, ui_expected(caller, "POST"))
        changed = {label for label in SEEDED if database.emails.find_one({"_id": ObjectId(ids[label])})["processed"]}
        matrix.expect(f"{caller} POST /ui/emails/bulk processed", changed == VIEW[caller], f"changed {changed}")
        reply = post("/ui/emails/bulk", [("action", "delete"), *[("ids", ids[m]) for m in SEEDED]])
        matrix.check(f"{caller} POST /ui/emails/bulk delete (confirm page)", reply,
                     ui_expected(caller, "POST", ok=200))
        if reply.status == 200:
            listed = {label for label in SEEDED if f"seeded {label}<" in reply.text()}
            matrix.expect(f"{caller} POST /ui/emails/bulk delete", listed == VIEW[caller], f"offers {listed}")
        fresh = {label: site.deliver(ALIAS[label], f"ui delete {caller} {label} {uuid.uuid4().hex}")
                 for label in ("support", "sales", "shop")}
        reply = post("/ui/emails/delete", [("confirm", "yes"), *[("ids", i) for i in fresh.values()]])
        matrix.check(f"{caller} POST /ui/emails/delete", reply, ui_expected(caller, "POST"))
        gone = {label for label, email_id in fresh.items()
                if database.emails.find_one({"_id": ObjectId(email_id)}) is None}
        matrix.expect(f"{caller} POST /ui/emails/delete", gone == VIEW[caller] & {"support", "sales", "shop"},
                      f"deleted {gone}")
    matrix.done()


def test_the_trail_verifies_and_holds_the_refusals(world):
    """Runs after the matrices (file order): every refusal above is in a chain that verifies."""
    trail = AuditTrail(world["database"])
    report = trail.verify()
    assert report.ok, str(report.problem)
    assert report.checked > 100
    refused = trail.entries.count_documents({"outcome": "refused", "email_ids": world["ids"]["sales"]})
    assert refused > 0
    assert trail.entries.count_documents({"outcome": "refused", "actor.name": {"$in": ["root", "operator"]}}) == 0
