"""The visibility rule through the API on mongomock: members see their aliases' mail and no
other, as if the rest did not exist; personal keys are scoped, revocable and expire."""

from datetime import timedelta

import pytest

from improvmx_archive.access.visibility import can_see, may_send_as, visibility_filter
from improvmx_archive.access.principal import Principal
from improvmx_archive.audience import audience_of, backfill
from tests.payloads import addressed_payload


@pytest.fixture
def team(app, client):
    """Two members (support@ and *@shop.test), an admin; one message per alias."""
    people, keys = app.extensions["people"], app.extensions["keys"]
    ids = {}
    for to in ("support@archive.test", "sales@archive.test", "orders@shop.test"):
        ids[to] = client.post("/webhook", json=addressed_payload(to, f"for {to}")).get_json()["email_id"]
    ana = people.add("ana", "ana@archive.test")
    people.grant("ana", ["support@archive.test"])
    bo = people.add("bo", "bo@archive.test")
    people.grant("bo", ["*@shop.test"])
    people.add("root", "root@archive.test", role="admin")
    tokens = {
        "ana": keys.create(str(ana["_id"]), "laptop", ["read", "write"])[0],
        "ana_read": keys.create(str(ana["_id"]), "script", ["read"])[0],
        "bo": keys.create(str(bo["_id"]), "laptop", ["read", "write"])[0],
        "root": keys.create(str(people.by_name("root")["_id"]), "admin", ["read"])[0],
    }
    return ids, {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}


def test_each_member_lists_only_their_aliases(client, team):
    ids, auth = team
    seen = {name: {e["id"] for e in client.get("/emails", headers=auth[name]).get_json()["emails"]}
            for name in ("ana", "bo", "root")}
    assert seen["ana"] == {ids["support@archive.test"]}
    assert seen["bo"] == {ids["orders@shop.test"]}
    assert seen["root"] == set(ids.values())
    assert client.get("/emails", headers=auth["ana"]).get_json()["total"] == 1


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/emails/{id}", None), ("GET", "/emails/{id}/raw", None),
    ("GET", "/emails/{id}/attachments/0", None), ("GET", "/emails/{id}/attachment/a.txt", None),
    ("PATCH", "/emails/{id}", {"processed": True}), ("PATCH", "/emails/{id}", {"hold": True}),
    ("DELETE", "/emails/{id}", None),
])
def test_outside_the_view_is_the_same_404_as_missing(client, team, method, path, body):
    ids, auth = team
    hidden = client.open(path.format(id=ids["sales@archive.test"]), method=method, json=body, headers=auth["ana"])
    missing = client.open(path.format(id="0" * 24), method=method, json=body, headers=auth["ana"])
    assert hidden.status_code == missing.status_code == 404
    assert hidden.get_json() == missing.get_json()
    mine = client.open(path.format(id=ids["support@archive.test"]), method=method, json=body, headers=auth["ana"])
    assert mine.status_code == 200


def test_mbox_export_holds_only_the_view(client, team):
    ids, auth = team
    mbox = client.get("/export.mbox", headers=auth["bo"]).get_data()
    assert mbox.count(b"\nFrom ") + mbox.startswith(b"From ") == 1
    assert b"for orders@shop.test" in mbox and b"for support@archive.test" not in mbox


def test_scopes_narrow_a_key_and_admin_routes_refuse_members(client, team):
    ids, auth = team
    email_id = ids["support@archive.test"]
    assert client.get(f"/emails/{email_id}", headers=auth["ana_read"]).status_code == 200
    refused = client.patch(f"/emails/{email_id}", json={"processed": True}, headers=auth["ana_read"])
    assert refused.status_code == 403 and "write" in refused.get_json()["error"]
    assert client.get("/", headers=auth["ana"]).status_code == 403
    assert client.get("/", headers=auth["root"]).status_code == 200


def test_revoked_expired_and_disabled_answer_401_on_the_next_request(app, client, team):
    ids, auth = team
    keys, people = app.extensions["keys"], app.extensions["people"]
    ana = people.by_name("ana")
    ana_key = keys.of_person(str(ana["_id"]))[0]
    assert client.get("/emails", headers=auth["ana"]).status_code == 200
    keys.revoke(ana_key["_id"])
    assert client.get("/emails", headers=auth["ana"]).status_code == 401
    keys.collection.update_one({"name": "script"}, {"$set": {"expires_at": ana["created_at"] - timedelta(days=1)}})
    assert client.get("/emails", headers=auth["ana_read"]).status_code == 401
    people.set_disabled("bo", True)
    assert client.get("/emails", headers=auth["bo"]).status_code == 401
    people.set_disabled("bo", False)
    people.revoke("bo", ["*@shop.test"])
    assert client.get("/emails", headers=auth["bo"]).get_json()["emails"] == []


def test_keys_are_stored_only_as_a_hash(app, team):
    _, auth = team
    token = auth["ana"]["Authorization"].split()[1]
    assert token.startswith("imxa_")
    stored = list(app.extensions["database"].api_keys.find({}))
    assert all(token not in str(record) for record in stored)


def test_the_rule_in_memory_agrees_with_the_filter():
    member = Principal(name="m", role="member", person_id="p1", grants=("support@a.test", "*@b.test"))
    assert visibility_filter(Principal.operator()) == {}
    assert can_see(member, audience_of(["Support@A.test"]))
    assert can_see(member, audience_of(["x@b.test"]))
    assert not can_see(member, audience_of(["x@a.test"]))
    assert can_see(member, audience_of(["x@c.test"], sent_by="p1"))
    assert may_send_as(member, "support@a.test") and may_send_as(member, "anyone@b.test")
    assert not may_send_as(member, "sales@a.test")


def test_older_messages_get_their_tags(app, client):
    client.post("/webhook", json=addressed_payload("support@archive.test", "old"))
    emails = app.extensions["database"].emails
    emails.update_many({}, {"$unset": {"audience": ""}})
    assert backfill(emails) == 1
    assert emails.find_one()["audience"] == ["support@archive.test", "@archive.test"]


def test_no_route_or_page_reads_the_unscoped_archive():
    """The rule is enforced in one place: routes and UI pages reach mail only through
    access.scoped (the webhook and import write, they do not read on anyone's behalf)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "improvmx_archive"
    offenders = []
    for path in list((root / "routes").glob("*.py")) + list((root / "ui").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if 'extensions["archive"]' in line and path.name not in ("webhook.py", "transfer.py"):
                offenders.append(f"{path.name}:{number}")
            if path.name == "transfer.py" and 'extensions["archive"]' in line and "import_raw" not in line:
                offenders.append(f"{path.name}:{number}")
    assert offenders == []
