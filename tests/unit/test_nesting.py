"""Pathologically nested JSON: refused with a clear 400 past MAX_JSON_DEPTH, kept as flagged
text past MAX_FIELD_DEPTH, never a 500."""

import json

import pytest

from improvmx_archive.payload import MAX_FIELD_DEPTH, MAX_JSON_DEPTH


def _nested(depth: int, leaf="x") -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
], ids=["lists", "objects"])
def test_a_body_nested_100000_levels_deep_is_a_clear_400(client, body):
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"success": False, "error": f"Request body nests lists or objects more than "
                                                              f"{MAX_JSON_DEPTH} levels deep"}


def test_a_valid_payload_with_a_deeply_nested_unknown_field_is_a_clear_400(client, sample_payload):
    body = json.dumps(sample_payload)[:-1] + ', "envelope2": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 400 and "levels deep" in response.get_json()["error"]


def test_just_past_the_limit_is_refused_and_just_inside_it_is_kept(client, sample_payload):
    too_deep = client.post("/webhook", json={**sample_payload, "extra_field": _nested(MAX_JSON_DEPTH)})
    assert too_deep.status_code == 400
    kept = client.post("/webhook", json={**sample_payload, "extra_field": _nested(MAX_JSON_DEPTH - 2)})
    assert kept.status_code == 200


def test_a_field_nested_past_the_field_limit_is_kept_as_flagged_text(app, client, auth, sample_payload):
    deep = _nested(MAX_FIELD_DEPTH + 20)
    payload = {**sample_payload, "verdict": deep, "headers": {**sample_payload["headers"], "X-Deep": _nested(5)}}
    payload["attachments"][0]["meta"] = deep
    response = client.post("/webhook", json=payload)
    assert response.status_code == 200
    email = client.get(f"/emails/{response.get_json()['email_id']}", headers=auth).get_json()["email"]
    assert json.loads(email["extra"]["verdict"]) == deep
    assert email["headers"]["X-Deep"] == _nested(5)  # shallow enough: kept as it came
    assert json.loads(email["attachments"][0]["meta"]) == deep
    assert "nested_too_deeply:verdict" in email["flags"] and "nested_too_deeply:attachments.0.meta" in email["flags"]
