"""Inputs the fuzzer once turned into a 500, kept as fixed cases so they cannot come back
unnoticed if a later seed or schema change stops generating them."""

from __future__ import annotations

import pytest

NOT_FOUND = {"success": False, "error": "Not found"}


def test_secret_url_without_a_configured_secret_is_a_404(client):
    response = client.post("/webhook/0", json={"subject": "x"})
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("number", ["9223372036854775808", "-9223372036854775809", "2" * 40])
def test_integer_too_large_for_bson_is_archived_as_text(client, auth, number):
    body = f'{{"to": [{{"email": "inbox@example.com"}}], "headers": {{"X-Count": {number}}}}}'
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 200
    stored = client.get(f"/emails/{response.get_json()['email_id']}", headers=auth).get_json()["email"]
    assert stored["headers"]["X-Count"] == number


def test_largest_bson_integers_stay_numbers(client, auth):
    body = ('{"to": [{"email": "inbox@example.com"}], '
            '"headers": {"Max": 9223372036854775807, "Min": -9223372036854775808}}')
    email_id = client.post("/webhook", data=body, content_type="application/json").get_json()["email_id"]
    headers = client.get(f"/emails/{email_id}", headers=auth).get_json()["email"]["headers"]
    assert (headers["Max"], headers["Min"]) == (2**63 - 1, -(2**63))


def test_attachment_field_names_bson_cannot_hold_are_escaped_and_restored(client, auth):
    attachment = {"type": "text/plain", "name": "a.txt", "content": "aGk=", "encoding": "base64",
                  "x\u0000y": 1, "$where": 2, "a.b": 3}
    response = client.post("/webhook", json={"to": [{"email": "inbox@example.com"}], "attachments": [attachment]})
    assert response.status_code == 200
    stored = client.get(f"/emails/{response.get_json()['email_id']}", headers=auth).get_json()["email"]
    assert {key: stored["attachments"][0][key] for key in ("x\u0000y", "$where", "a.b")} == \
        {"x\u0000y": 1, "$where": 2, "a.b": 3}
