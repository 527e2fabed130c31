"""The UI's queries on a real wire-protocol server (SecantusDB over TCP): deletion (its bulk
writes are beyond mongomock), the alias and storage aggregations, cursor paging."""

from __future__ import annotations

import re

import pytest

from improvmx_archive.indexer import SearchIndexer
from tests.ui_helpers import mime, page, post_form, sign_in

pytestmark = pytest.mark.slow


@pytest.fixture
def archive(secantus_app):
    return secantus_app.extensions["archive"]


@pytest.fixture
def ui(secantus_app):
    client = secantus_app.test_client()
    sign_in(client)
    return client


def test_delete_asks_first_then_deletes_through_the_api_rules(archive, ui):
    keep, gone, held = (archive.ingest(mime(name)).email_id for name in ("keep me", "delete me", "held one"))
    post_form(ui, f"/ui/emails/{held}/hold", {"hold": "true"}, page=f"/ui/emails/{held}")
    confirm = post_form(ui, "/ui/emails/bulk", {"ids": [gone, held], "action": "delete", "back": "/ui/?q=x"})
    html = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and "Delete 2 messages?" in html and "on hold: it will be kept" in html
    assert archive.emails.count_documents({}) == 3  # asking deletes nothing
    assert post_form(ui, "/ui/emails/delete", {"ids": [gone, held]}).status_code == 400  # not confirmed
    done = post_form(ui, "/ui/emails/delete", {"ids": [gone, held], "confirm": "yes", "back": "/ui/?q=x"})
    assert done.status_code == 303 and done.headers["Location"] == "/ui/?q=x"
    assert {str(d["_id"]) for d in archive.emails.find()} == {keep, held}
    assert "Deleted 1 message. 1 on hold was kept" in page(ui, "/ui/")
    assert ui.get(f"/ui/emails/{gone}").status_code == 404


def test_aliases_storage_and_senders_on_a_real_server(archive, ui):
    def delivered(payload: dict, address: str) -> dict:
        payload["headers"]["Delivered-To"] = address  # what makes an address an alias
        return payload

    for n in range(3):
        archive.ingest(delivered(mime(f"support {n}", to="support@archive.test", sender="dana@example.org",
                                      attachment=(b"same bytes" * 30_000, "application", "pdf", "same.pdf")),
                                 "support@archive.test"))
    archive.ingest(delivered(mime("sales", to="sales@archive.test"), "sales@archive.test"))
    inbox = page(ui, "/ui/")
    assert re.search(r"support@archive\.test</span> <span class=\"count\">3<", inbox)
    overview = page(ui, "/ui/overview")
    # 300 kB is over the inline limit: GridFS keeps one copy for the three messages.
    assert "Attachments as received</dt><dd>878.9 KB" in overview
    assert "Saved by deduplication</dt><dd>585.9 KB" in overview
    assert re.search(r"dana@example\.org</a></td><td class=\"num\">3<", overview)
    assert "4 in all" in overview


def test_search_and_cursor_paging_on_a_real_server(archive, ui):
    for n in range(27):
        archive.ingest(mime(f"report {n:02d}", text="quarterly numbers" if n % 3 == 0 else "other"))
    SearchIndexer(archive).index_pending()
    first = page(ui, "/ui/?q=quarterly")
    assert first.count('class="message-row') == 9
    all_first = page(ui, "/ui/")
    older = re.search(r'href="(/ui/\?cursor=[^"]+)" rel="next"', all_first).group(1).replace("&amp;", "&")
    second = page(ui, older)
    assert second.count('class="message-row') == 2 and "report 01" in second and "report 00" in second
