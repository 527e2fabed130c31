"""Unknown query parameters on the API are a 400 naming them, never silently ignored; the
UI's own page parameters keep working next to the same filters."""

from __future__ import annotations

import re

import pytest

from improvmx_archive.listing import FILTER_PARAMETERS, LIST_PARAMETERS
from improvmx_archive.openapi import build_spec
from tests.ui_helpers import mime, page, sign_in


@pytest.fixture
def stored(client):
    ids = []
    for sender in ("alice@example.org", "bob@example.org"):
        ids.append(client.post("/webhook", json=mime(f"from {sender}", sender=sender)).get_json()["email_id"])
    return ids


@pytest.mark.parametrize("path, name", [
    ("/emails?form_email=alice@example.org", "form_email"),
    ("/emails?from_email[$ne]=alice@example.org", "from_email[$ne]"),
    ("/emails?from_email=alice@example.org&processd=true", "processd"),
    ("/export.mbox?form_email=alice@example.org", "form_email"),
    ("/export.mbox?to[$gt]=", "to[$gt]"),
    ("/export.mbox?limit=1", "limit"),  # the export takes the filters, not paging
])
def test_an_unknown_parameter_is_a_400_naming_it(client, auth, stored, path, name):
    response = client.get(path, headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False
    assert f"unknown query parameter '{name}'" in body["error"]


def test_a_long_unknown_name_is_shortened_in_the_error(client, auth):
    response = client.get("/emails?" + "x" * 5000 + "=1", headers=auth)
    assert response.status_code == 400 and len(response.get_json()["error"]) < 400


def test_without_the_key_it_is_still_401_first(client):
    assert client.get("/emails?form_email=x").status_code == 401
    assert client.get("/export.mbox?form_email=x").status_code == 401


def test_every_known_parameter_is_accepted(client, auth, stored):
    listing = client.get("/emails?q=alice&from_email=alice@example.org&to=sales@archive.test&subject=from"
                         "&since=2000-01-01&until=2100-01-01&processed=false&has_attachments=false"
                         "&limit=5&count=false", headers=auth)
    assert listing.status_code == 200, listing.get_json()
    assert listing.get_json()["count"] == 0  # q is indexed in the background: nothing yet
    plain = client.get("/emails?from_email=alice@example.org&skip=0&limit=5", headers=auth)
    assert plain.status_code == 200 and [e["id"] for e in plain.get_json()["emails"]] == stored[:1]
    export = client.get("/export.mbox?from_email=bob@example.org&subject=from&processed=false", headers=auth)
    assert export.status_code == 200 and b"Subject: from bob@example.org" in export.get_data()


def test_the_ui_keeps_its_own_parameters_beside_the_filters(app, client, stored):
    sign_in(client)
    inbox = page(client, "/ui/?from_email=alice@example.org&pc=&cursor=")
    assert "from alice@example.org" in inbox and "from bob@example.org" not in inbox
    message = page(client, f"/ui/emails/{stored[0]}?from_email=alice@example.org&o=0&tab=text&remote=0")
    assert "from alice@example.org" in message


def test_the_openapi_description_lists_exactly_the_accepted_parameters():
    paths = build_spec()["paths"]

    def query_names(path):
        return tuple(p["name"] for p in paths[path]["get"]["parameters"] if p["in"] == "query")

    assert sorted(query_names("/emails")) == sorted(LIST_PARAMETERS)
    assert sorted(query_names("/export.mbox")) == sorted(FILTER_PARAMETERS)
    assert re.search(r"parameter this endpoint does not take", paths["/emails"]["get"]["description"])
