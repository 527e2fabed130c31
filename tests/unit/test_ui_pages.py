"""The UI's pages over a mongomock archive: inbox, message, frame, parts, overview."""

from __future__ import annotations

import re

from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.sample import PIXEL_PNG, payload_from_mime, sample_mime
from improvmx_archive.security import CSP_UI
from improvmx_archive.ui.sessions import COOKIE_NAME
from tests.ui_helpers import mime, page, post_form


def test_inbox_lists_newest_first_with_the_row_details(archive, ui):
    archive.ingest(mime("Older one"))
    archive.ingest(mime("Newer one", attachment=(b"%PDF-1.4", "application", "pdf", "a.pdf")))
    html = page(ui, "/ui/")
    assert html.index("Newer one") < html.index("Older one")
    assert 'class="clip" title="1 attachment(s)"><svg class="icon"' in html and "just now" in html and "UTC" in html
    assert "📎" not in html  # an icon shipped with the UI, not an emoji a font may lack
    assert ui.get("/ui/").headers["Content-Security-Policy"] == CSP_UI


def test_search_box_takes_the_api_query_language(archive, ui):
    archive.ingest(mime("Invoice March", sender="billing@acme.example",
                        attachment=(b"%PDF-1.4", "application", "pdf", "march.pdf")))
    archive.ingest(mime("Lunch?", sender="bob@example.org", text="Pizza or sushi?"))
    SearchIndexer(archive).index_pending()
    for query, expected in (("invoice", "Invoice March"), ("from:bob@example.org", "Lunch?"), ("sushi", "Lunch?"),
                            ("has:attachment", "Invoice March"), ("invoi*", "Invoice March")):
        html = page(ui, f"/ui/?q={query}")
        assert expected in html, query
        assert ("Lunch?" if expected != "Lunch?" else "Invoice March") not in html, query
    response = ui.get("/ui/?q=nosuchop:x")
    assert response.status_code == 400 and "nosuchop" in response.get_data(as_text=True)


def test_inbox_pages_by_cursor_and_back(archive, ui):
    for n in range(30):
        archive.ingest(mime(f"bulk {n:02d}"))
    first = page(ui, "/ui/")
    assert "bulk 29" in first and "bulk 04" not in first
    older = re.search(r'href="(/ui/\?cursor=[^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = page(ui, older)
    assert "bulk 04" in second and "bulk 29" not in second and 'rel="next"' not in second
    newer = re.search(r'href="([^"]+)" rel="prev"', second).group(1).replace("&amp;", "&")
    assert "bulk 29" in page(ui, newer)
    assert ui.get("/ui/?cursor=forged").status_code == 400


def delivered(payload: dict, address: str) -> dict:
    payload["headers"]["Delivered-To"] = address  # as ImprovMX sends it
    return payload


def test_filters_and_alias_sidebar(archive, ui):
    first = archive.ingest(delivered(mime("To sales", to="sales@archive.test"), "sales@archive.test")).email_id
    archive.ingest(delivered(mime("To support", to="support@archive.test"), "support@archive.test"))
    archive.ingest(delivered(mime("To support again", to="support@archive.test"), "support@archive.test"))
    archive.set_processed(first, True)
    html = page(ui, "/ui/")
    assert re.search(r"support@archive\.test</span> <span class=\"count\">2<", html)
    assert re.search(r"sales@archive\.test</span> <span class=\"count\">1<", html)
    html = page(ui, "/ui/?to=support@archive.test")
    assert "To support again" in html and "To sales" not in html
    html = page(ui, "/ui/?processed=true")
    assert "To sales" in html and "To support" not in html
    html = page(ui, "/ui/?processed=false")
    assert "To sales" not in html and "To support" in html


def test_bad_filter_value_is_a_readable_400(ui):
    response = ui.get("/ui/?processed=maybe")
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "must be true or false" in response.get_data(as_text=True)


def test_unknown_message_is_a_readable_404(ui):
    for path in ("/ui/emails/000000000000000000000000", "/ui/emails/nonsense"):
        response = ui.get(path)
        assert response.status_code == 404 and response.mimetype == "text/html"


def test_bulk_mark_processed_and_back(archive, ui):
    ids = [archive.ingest(mime(f"m{n}")).email_id for n in range(3)]
    response = post_form(ui, "/ui/emails/bulk", {"ids": ids[:2], "action": "processed", "back": "/ui/?q=m"})
    assert response.status_code == 303 and response.headers["Location"] == "/ui/?q=m"
    assert [archive.emails.find_one({"subject": f"m{n}"})["processed"] for n in range(3)] == [True, True, False]
    post_form(ui, "/ui/emails/bulk", {"ids": ids[0], "action": "unprocessed"})
    assert archive.emails.find_one({"subject": "m0"})["processed"] is False
    assert post_form(ui, "/ui/emails/bulk", {"ids": ids[0], "action": "drop"}).status_code == 400


def test_message_page_fields_badges_and_attachments(archive, ui):
    payload = payload_from_mime(sample_mime())
    payload["headers"]["Authentication-Results"] = ["mx1.improvmx.com; spf=pass smtp.mailfrom=example.org; "
                                                    "dkim=fail; dmarc=none"]
    payload["headers"]["Reply-To"] = "Helpdesk <help@example.org>"
    email_id = archive.ingest(payload).email_id
    html = page(ui, f"/ui/emails/{email_id}")
    assert "Alice Example &lt;alice@example.org&gt;" in html
    assert "Helpdesk &lt;help@example.org&gt;" in html
    assert 'class="badge pass"' in html and 'class="badge fail"' in html and 'class="badge none"' in html
    assert f"/ui/emails/{email_id}/parts/0" in html and "sample.pdf" in html and "pixel.png" in html
    assert f'src="/ui/emails/{email_id}/frame"' in html and 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in html
    assert "Remote content blocked" not in html  # nothing remote to block


def test_remote_content_notice_and_the_opt_in_link(archive, ui):
    email_id = archive.ingest(mime("tracked", html='<p>hi</p><img src="https://t.example/p.gif">')).email_id
    html = page(ui, f"/ui/emails/{email_id}")
    assert "Remote content blocked: 1 image from other sites is not loaded" in html
    assert f'href="/ui/emails/{email_id}?tab=html&amp;remote=1"' in html
    shown = page(ui, f"/ui/emails/{email_id}?tab=html&remote=1")
    assert f'src="/ui/emails/{email_id}/frame?remote=1"' in shown and "Block it again" in shown


def test_text_and_header_tabs_escape_everything(archive, ui):
    payload = mime("<b>Subject</b>", text="<script>alert(1)</script> see https://example.org/a?b=1&c=2 now")
    payload["headers"]["X-Evil"] = "<img src=x onerror=alert(1)>"
    email_id = archive.ingest(payload).email_id
    text = page(ui, f"/ui/emails/{email_id}?tab=text")
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert ('<a href="https://example.org/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">'
            in text)
    assert "<b>Subject</b>" not in text
    headers = page(ui, f"/ui/emails/{email_id}?tab=headers")
    assert "<img src=x" not in headers and "&lt;img src=x onerror=alert(1)&gt;" in headers
    source = page(ui, f"/ui/emails/{email_id}?tab=source")
    assert "<script>" not in source and "Subject: &lt;b&gt;Subject&lt;/b&gt;" in source


def test_source_tab_shows_the_rebuilt_message_and_downloads_it(archive, ui):
    email_id = archive.ingest(payload_from_mime(sample_mime(subject="Rebuilt"))).email_id
    source = page(ui, f"/ui/emails/{email_id}?tab=source")
    assert "Subject: Rebuilt" in source and "Content-Type: multipart/mixed" in source
    assert f"/ui/emails/{email_id}/eml" in source
    response = ui.get(f"/ui/emails/{email_id}/eml")
    assert response.status_code == 200 and response.mimetype == "message/rfc822"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert b"Subject: Rebuilt" in response.get_data()


def test_source_tab_is_cut_short_for_a_huge_message(archive, ui):
    big = mime("big", attachment=(b"\0" * 400_000, "application", "octet-stream", "big.bin"))
    email_id = archive.ingest(big).email_id
    source = page(ui, f"/ui/emails/{email_id}?tab=source")
    assert "Only the first 256.0 KB are shown" in source
    assert len(source) < 400_000


def _link(html, rel):
    found = re.search(rf'href="([^"]+)" rel="{rel}"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def test_previous_and_next_follow_the_list_across_pages(archive, ui):
    ids = [archive.ingest(mime(f"n{n:02d}", to="sales@archive.test" if n % 2 else "x@archive.test")).email_id
           for n in range(60)]  # newest last; odd ones go to sales@
    html = page(ui, "/ui/?to=sales@archive.test")
    opened = re.search(r'href="(/ui/emails/[^"]+)"', html).group(1).replace("&amp;", "&")
    assert ids[59] in opened and "to=sales" in opened
    seen = [ids[59]]
    for _ in range(29):  # walk the whole list (two pages) older and older
        html = page(ui, opened)
        opened = _link(html, "next")
        seen.append(re.search(r"/ui/emails/([0-9a-f]{24})", opened).group(1))
    assert seen == ids[59::-2]
    html = page(ui, opened)
    assert _link(html, "next") is None
    back = _link(html, "prev")
    assert ids[3] in back
    html = page(ui, back)  # across the page boundary again, backwards
    assert ids[5] in _link(html, "prev")


def test_mark_processed_from_the_message_page(archive, ui):
    email_id = archive.ingest(mime("to mark")).email_id
    response = post_form(ui, f"/ui/emails/{email_id}/processed", {"processed": "true"}, page=f"/ui/emails/{email_id}")
    assert response.status_code == 303
    assert archive.emails.find_one()["processed"] is True
    assert "Mark unprocessed" in page(ui, f"/ui/emails/{email_id}")


def _frame(ui, email_id, query=""):
    response = ui.get(f"/ui/emails/{email_id}/frame{query}")
    assert response.status_code == 200
    return response


def test_frame_policy_blocks_everything_but_own_parts(archive, ui):
    email_id = archive.ingest(payload_from_mime(sample_mime())).email_id
    response = _frame(ui, email_id)
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; ")
    assert "script-src" not in policy and "http: https:" not in policy
    assert re.search(rf"img-src http://localhost/ui/emails/{email_id}/inline/[0-9a-f]{{64}}\.[0-9a-f]{{32}}/ data:;",
                     policy)
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    remote = _frame(ui, email_id, "?remote=1").headers["Content-Security-Policy"]
    assert "data: http: https:;" in remote


def test_cid_image_is_served_on_the_grant_without_a_cookie(app, archive, ui):
    email_id = archive.ingest(payload_from_mime(sample_mime())).email_id
    body = _frame(ui, email_id).get_data(as_text=True)
    url = re.search(r'<img src="http://localhost(/ui/emails/[^"]+)"', body).group(1)
    anonymous = app.test_client()  # the sandboxed frame sends no SameSite cookie
    image = anonymous.get(url)
    assert image.status_code == 200 and image.data == PIXEL_PNG
    assert image.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    # a grant is bound to its message and to a live session
    other_id = archive.ingest(mime("other", html="<p>x</p>")).email_id
    assert anonymous.get(url.replace(email_id, other_id)).status_code == 404
    assert anonymous.get(url[:-1] + "0").status_code == 404  # position 0 is the PDF: not an image
    forged = re.sub(r"\.([0-9a-f]{32})/", lambda m: "." + "0" * 32 + "/", url)
    assert anonymous.get(forged).status_code == 404
    post_form(ui, "/ui/logout", {})
    assert anonymous.get(url).status_code == 404


def test_downloads_keep_the_api_rules(archive, ui):
    payload = mime("files", attachment=(b"<script>alert(1)</script>", "text", "html", "page.html"))
    email_id = archive.ingest(payload).email_id
    response = ui.get(f"/ui/emails/{email_id}/parts/0")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert ui.get(f"/ui/emails/{email_id}/parts/9").status_code == 404


def test_overview_counts_and_spool_warning(app, archive, ui):
    archive.ingest(mime("one", sender="big@example.org"))
    # large enough for GridFS, where identical parts are kept once (small ones ride in the document)
    archive.ingest(mime("two", sender="big@example.org", attachment=(b"x" * 300_000, "application", "pdf", "a.pdf")))
    archive.ingest(mime("three", sender="big@example.org", attachment=(b"x" * 300_000, "application", "pdf", "b.pdf")))
    html = page(ui, "/ui/overview")
    assert "<svg" in html and "<rect" in html and "big@example.org" in html
    assert "3 in all" in html
    assert "Saved by deduplication</dt><dd>293.0 KB" in html
    assert "spool-warning" not in html
    app.extensions["spool"].put({"subject": "waiting"})
    assert "spool-warning" in page(ui, "/ui/overview")


def test_static_assets_are_self_hosted(client):
    for name in ("ui.css", "ui.js"):
        assert client.get(f"/ui/static/{name}").status_code == 200
    html = client.get("/ui/login").get_data(as_text=True)
    assert "http" not in re.sub(r'href="/ui/[^"]*"|src="/ui/[^"]*"', "", html.split("<main")[0])


def test_session_cookie_is_required_for_every_page(app, archive):
    email_id = archive.ingest(payload_from_mime(sample_mime())).email_id
    client = app.test_client()
    for path in ("/ui/", f"/ui/emails/{email_id}", f"/ui/emails/{email_id}/frame", f"/ui/emails/{email_id}/parts/0",
                 "/ui/overview"):
        assert client.get(path).status_code == 302, path
    client.set_cookie(COOKIE_NAME, "made-up", path="/ui")
    assert client.get("/ui/").status_code == 302


def test_ui_answers_to_its_own_limit_not_the_global_one(make_app):
    app = make_app(RATELIMIT_GLOBAL="2 per minute", RATELIMIT_UI="4 per minute")
    client = app.test_client()
    responses = [client.get("/ui/login", environ_base={"REMOTE_ADDR": "192.0.2.201"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 429]
    assert responses[-1].mimetype == "text/html" and int(responses[-1].headers["Retry-After"]) > 0


def test_an_altered_list_position_still_shows_the_message(archive, ui):
    email_id = archive.ingest(mime("still readable")).email_id
    html = page(ui, f"/ui/emails/{email_id}?c=forged&o=0&q=still")
    assert "still readable" in page(ui, f"/ui/emails/{email_id}?o=0&pc=forged")
    assert "still readable" in html and 'rel="next"' not in html


def test_hold_and_release_from_the_message_page(archive, ui):
    email_id = archive.ingest(mime("hold me")).email_id
    post_form(ui, f"/ui/emails/{email_id}/hold", {"hold": "true"}, page=f"/ui/emails/{email_id}")
    assert archive.emails.find_one()["hold"] is True
    assert "Release hold" in page(ui, f"/ui/emails/{email_id}")
    post_form(ui, f"/ui/emails/{email_id}/hold", {"hold": "false"}, page=f"/ui/emails/{email_id}")
    assert archive.emails.find_one()["hold"] is False
