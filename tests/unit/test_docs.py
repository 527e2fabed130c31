"""The OpenAPI description matches the real routes, and /docs renders it for people."""

import re
from pathlib import Path

from improvmx_archive.openapi import build_spec


UI_PREFIX = "/ui/"  # the web UI's HTML pages are not API operations; /docs links to them instead
UI_ICON = "/favicon.ico"  # the UI's icon, where browsers look for it


def _app_routes(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith(UI_PREFIX) or rule.rule == UI_ICON:
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
    assert parameters == {"limit", "skip", "cursor", "count", "q", "from_email", "to", "subject", "since",
                          "until", "processed", "has_attachments"}


def test_docs_page_lists_endpoints_with_curl_examples(client):
    response = client.get("/docs")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "curl -H \"Authorization: Bearer $API_KEY\"" in page
    for path in build_spec()["paths"]:
        assert f"<code>{path}</code>" in page
    assert "script" not in response.headers["Content-Security-Policy"]


REPO = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_door_and_every_guide_it_links_exists():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 100
    assert "./dev.sh" in readme and "./test.sh" in readme
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in _LINK.findall(page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_quick_start_reads_the_key_where_dev_sh_keeps_it():
    from devtools import devserver

    assert devserver.API_KEY_FILE.relative_to(REPO).as_posix() in (REPO / "README.md").read_text()


def test_docs_page_points_people_at_the_web_ui_only_when_it_is_on(client, make_app):
    assert 'href="http://localhost/ui/"' in client.get("/docs").get_data(as_text=True)
    off = make_app(RATELIMIT_ENABLED="false", UI_ENABLED="false").test_client()
    assert "/ui/" not in off.get("/docs").get_data(as_text=True)
