"""The OpenAPI description matches the real routes, and /docs renders it for people."""

import re

from improvmx_archive.openapi import build_spec


def _app_routes(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def _spec_routes(spec):
    return {(path, method) for path, operations in spec["paths"].items() for method in operations}


def test_every_route_is_described_and_every_description_exists(app):
    assert _app_routes(app) == _spec_routes(build_spec())


def test_openapi_json_is_served_and_is_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"] == "3.1.0"
    assert spec["paths"]["/emails"]["get"]["security"] == [{"bearer": []}]
    parameters = {p["name"] for p in spec["paths"]["/emails"]["get"]["parameters"]}
    assert parameters == {"limit", "skip", "from_email", "to", "subject", "since", "until", "processed",
                          "has_attachments"}


def test_docs_page_lists_endpoints_with_curl_examples(client):
    response = client.get("/docs")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "curl -H \"Authorization: Bearer $API_KEY\"" in page
    for path in build_spec()["paths"]:
        assert f"<code>{path}</code>" in page
    assert "script" not in response.headers["Content-Security-Policy"]
