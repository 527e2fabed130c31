"""What a person meets in the UI's first hour (issue 19, items 7-12) over a mongomock archive:
a refused search kept in place, every header, figures that agree after a change, aliases that
are delivery addresses, odd subjects and unnamed parts, the icon, and the frame's size."""

from __future__ import annotations

import html as html_lib
import re
from email.message import EmailMessage

import pytest

from improvmx_archive import changes, delivered
from improvmx_archive.payload import DELIVERED_TO
from improvmx_archive.sample import payload_from_mime
from improvmx_archive.ui import framesize
from improvmx_archive.ui.formatting import subject_text
from improvmx_archive.ui.message import header_rows
from improvmx_archive.ui.stats import TimedCache
from tests.ui_helpers import mime, page, post_form


def delivered_mail(subject: str, to: str, delivered_to: str, cc: str | None = None, attachment=None) -> dict:
    payload = mime(subject, to=to, attachment=attachment)
    if cc:
        payload["cc"] = [{"name": None, "email": cc}]
    payload["headers"]["Delivered-To"] = delivered_to
    return payload


# --- 7: a refused search shows the inbox with the reason next to the query as typed -------------

@pytest.mark.parametrize("query", ['"unclosed quote', "nosuchop:x", "from:"])
def test_a_refused_search_keeps_the_inbox_and_the_query(archive, ui, query):
    archive.ingest(mime("Still listed in the sidebar"))
    response = ui.get("/ui/", query_string={"q": query})
    body = response.get_data(as_text=True)
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert 'class="search"' in body and 'id="q"' in body  # the search box, not a bare error page
    typed = re.search(r'<input id="q" name="q" type="search" value="([^"]*)"', body).group(1)
    assert html_lib.unescape(typed) == query  # filled with the query as typed
    problem = re.search(r'<p class="alert search-problem" id="search-problem" role="alert">([^<]+)</p>', body)
    assert problem and problem.group(1).strip()
    assert 'aria-invalid="true" aria-describedby="search-problem"' in body
    assert "400 · Bad request" not in body and "Aliases" in body


def test_a_good_search_shows_no_problem(archive, ui):
    archive.ingest(mime("hello"))
    body = page(ui, "/ui/?q=hello")
    assert "search-problem" not in body


# --- 8: every stored header, in stored order ----------------------------------------------------

def _raw_with_every_header() -> bytes:
    message = EmailMessage()
    message["Received"] = "from relay1.example by mx.archive.test; Mon, 1 Jan 2024 00:00:02 +0000"
    message["Received"] = "from origin.example by relay1.example; Mon, 1 Jan 2024 00:00:01 +0000"
    message["From"] = "Alice <alice@example.org>"
    message["Sender"] = "List Robot <robot@lists.example.org>"
    message["To"] = "Sales <sales@archive.test>, ops@archive.test"
    message["Cc"] = "carol@example.org"
    message["Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    message["Subject"] = "Every header"
    message["Message-ID"] = "<every@example.org>"
    message["Delivered-To"] = "sales@archive.test"
    message["X-Mailer"] = "Test 1.0"
    message.set_content("hi")
    return message.as_bytes()


def test_header_tab_shows_every_stored_header(archive, ui):
    email_id = archive.ingest(payload_from_mime(_raw_with_every_header())).email_id
    body = page(ui, f"/ui/emails/{email_id}?tab=headers")
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th><td>([^<]*)</td></tr>', body)
    names = [name for name, _ in rows]
    for name in ("Received", "From", "Sender", "To", "Cc", "Date", "Subject", "Message-ID", "Delivered-To",
                 "X-Mailer"):
        assert name in names, name
    shown = dict(rows)
    assert html_lib.unescape(shown["Sender"]) == "List Robot <robot@lists.example.org>"
    assert html_lib.unescape(shown["To"]) == "Sales <sales@archive.test>, <ops@archive.test>"
    received = [html_lib.unescape(value) for name, value in rows if name == "Received"]
    assert [value.split()[1] for value in received] == ["relay1.example", "origin.example"]  # repeats keep their order


def test_header_rows_follow_the_stored_document_order():
    document = {"_id": 1, "headers": {"X-B": "b", "Received": ["r1", "r2"], "X-A": "a"},
                "date": "Mon, 1 Jan 2024", "to": [{"name": None, "email": "t@x.test"}],
                "from": {"name": "F", "email": "f@x.test"}, "subject": "s", "snippet": "not a header",
                "recipients": ["t@x.test"], "extra": {"sender": {"name": None, "email": "s@x.test"},
                                                      "envelope": {"recipient": "t@x.test"}}}
    assert header_rows(document) == [
        ("X-B", "b"), ("Received", "r1"), ("Received", "r2"), ("X-A", "a"), ("Date", "Mon, 1 Jan 2024"),
        ("To", "<t@x.test>"), ("From", "F <f@x.test>"), ("Subject", "s"), ("Sender", "<s@x.test>")]


# --- 11: subjects, part names, the icon and the favicon -----------------------------------------

@pytest.mark.parametrize("stored, shown", [
    (["Quarterly", "report"], "Quarterly report"),
    ({"value": "Invoice 12"}, "Invoice 12"),
    ([["nested"], {"a": "deep"}], "nested deep"),
    (42, "42"),
    (None, "(no subject)"),
    ([], "(no subject)"),
    ("  ", "(no subject)"),
    ("Plain", "Plain"),
])
def test_subject_in_an_odd_shape_reads_as_text(stored, shown):
    assert subject_text(stored) == shown


def test_odd_subject_shows_as_text_in_the_inbox_and_the_message(archive, ui):
    email_id = archive.ingest({"subject": ["Quarterly", "report"], "from": "a@example.org",
                               "to": "sales@archive.test", "text": "x"}).email_id
    for path in ("/ui/", f"/ui/emails/{email_id}"):
        body = page(ui, path)
        assert "Quarterly report" in body and "[&#39;Quarterly&#39;" not in body and "['Quarterly'" not in body


BOUNCE = b"""From: Mail Delivery System <mailer-daemon@mx.example>
To: sales@archive.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example

Final-Recipient: rfc822; nobody@example.net
Action: failed
Status: 5.1.1

--b1
Content-Type: message/rfc822

Subject: The original
From: sales@archive.test

original body

--b1--
"""


def _bounce() -> dict:
    return payload_from_mime(BOUNCE)


def test_bounce_parts_are_named_from_their_type_in_the_ui_and_downloads(archive, ui):
    email_id = archive.ingest(_bounce()).email_id
    document = archive.emails.find_one()
    types = [part["type"] for part in document["attachments"] + document["inlines"]]
    assert "message/delivery-status" in types and "message/rfc822" in types
    body = page(ui, f"/ui/emails/{email_id}")
    assert "part-0" not in body and "part-1" not in body
    links = dict((name, position) for position, name in
                 re.findall(r'/parts/(\d+)" class="part-link" download>([^<]+)</a>', body))
    assert "delivery-status.txt" in links and "original-message.eml" in links
    response = ui.get(f"/ui/emails/{email_id}/parts/{links['original-message.eml']}")
    assert 'filename="original-message.eml"' in response.headers["Content-Disposition"]
    response = ui.get(f"/ui/emails/{email_id}/parts/{links['delivery-status.txt']}")
    assert 'filename="delivery-status.txt"' in response.headers["Content-Disposition"]


def test_favicon_answers_and_every_page_links_it(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00" and b"\x89PNG" in response.data  # an ICO holding a PNG
    assert '<link rel="icon" href="/favicon.ico"' in client.get("/ui/login").get_data(as_text=True)


def test_favicon_is_not_counted_against_the_global_limit(make_app):
    app = make_app(RATELIMIT_GLOBAL="2 per hour")
    client = app.test_client()
    assert all(client.get("/favicon.ico").status_code == 200 for _ in range(5))


# --- 11: aliases are where mail was delivered, not every correspondent ---------------------------

def test_sidebar_lists_delivery_addresses_not_correspondents(archive, ui):
    archive.ingest(delivered_mail("one", to="sales@archive.test, partner@other.example", cc="boss@other.example",
                                  delivered_to="sales@archive.test"))
    archive.ingest(delivered_mail("two", to="friend@other.example", delivered_to="support@archive.test"))
    body = page(ui, "/ui/")
    aliases = re.findall(r'<span class="alias">([^<]+)</span> <span class="count">(\d+)</span>', body)
    assert sorted(aliases) == [("sales@archive.test", "1"), ("support@archive.test", "1")]


def test_delivered_to_comes_from_the_envelope_and_the_header(archive):
    payload = mime("x", to="someone@other.example")
    payload["envelope"] = {"recipient": "Alias@Archive.test"}
    payload["headers"]["Delivered-To"] = "second@archive.test"
    archive.ingest(payload)
    assert archive.emails.find_one()[DELIVERED_TO] == ["alias@archive.test", "second@archive.test"]


def test_older_messages_get_delivered_to_from_the_backfill(archive, ui):
    archive.ingest(delivered_mail("old", to="x@other.example", delivered_to="old@archive.test"))
    archive.emails.update_many({}, {"$unset": {DELIVERED_TO: ""}})
    assert delivered.missing_count(archive.emails) == 1
    assert archive.migrate_delivered_to() == 1
    assert archive.emails.find_one()[DELIVERED_TO] == ["old@archive.test"]
    assert delivered.missing_count(archive.emails) == 0 and archive.migrate_delivered_to() == 0


def test_create_indexes_gives_older_messages_delivered_to(app, archive):
    archive.ingest(delivered_mail("old", to="x@other.example", delivered_to="old@archive.test"))
    archive.emails.update_many({}, {"$unset": {DELIVERED_TO: ""}})
    before = changes.content_mark(archive.database)
    result = app.test_cli_runner().invoke(args=["create-indexes"])
    assert result.exit_code == 0, result.output
    assert "ok: 1 message(s) given delivered_to" in result.output
    assert archive.emails.find_one()[DELIVERED_TO] == ["old@archive.test"]
    assert changes.content_mark(archive.database) != before  # cached alias lists are stale now
    again = app.test_cli_runner().invoke(args=["create-indexes"])
    assert "delivered_to" not in again.output


def test_delivered_to_stays_internal_in_the_api(client, auth, archive):
    email_id = archive.ingest(delivered_mail("x", to="a@archive.test", delivered_to="a@archive.test")).email_id
    assert DELIVERED_TO not in client.get(f"/emails/{email_id}", headers=auth).get_json()["email"]


# --- 10: figures agree after an import or a delete, on any worker --------------------------------

def _aliases(body: str) -> dict[str, int]:
    return {alias: int(count) for alias, count in
            re.findall(r'<span class="alias">([^<]+)</span> <span class="count">(\d+)</span>', body)}


def _storage(body: str) -> dict[str, str]:
    card = body.split("<h2>Storage</h2>", 1)[1].split("</section>", 1)[0]
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", card))


def test_sidebar_and_storage_follow_an_import_and_a_delete_at_once(app, archive, ui):
    archive.ingest(delivered_mail("first", to="sales@archive.test", delivered_to="sales@archive.test"))
    assert _aliases(page(ui, "/ui/")) == {"sales@archive.test": 1}
    before = _storage(page(ui, "/ui/overview"))
    big = (b"y" * 300_000, "application", "pdf", "big.pdf")
    new_id = archive.ingest(delivered_mail("second", to="sales@archive.test", delivered_to="sales@archive.test",
                                           attachment=big)).email_id
    archive.ingest(delivered_mail("third", to="new@archive.test", delivered_to="new@archive.test"))
    assert _aliases(page(ui, "/ui/")) == {"sales@archive.test": 2, "new@archive.test": 1}
    after_import = _storage(page(ui, "/ui/overview"))
    assert after_import["Kept in GridFS"] == "293.0 KB" and after_import != before
    response = post_form(ui, "/ui/emails/delete", {"ids": [new_id], "confirm": "yes"})
    assert response.status_code == 303
    assert _aliases(page(ui, "/ui/")) == {"sales@archive.test": 1, "new@archive.test": 1}
    after_delete = _storage(page(ui, "/ui/overview"))
    assert after_delete["Attachments as received"] == before["Attachments as received"]


def test_a_delete_and_an_insert_together_still_change_the_mark(archive):
    database = archive.database
    archive.ingest(mime("a"))
    victim = archive.ingest(mime("b")).email_id
    before = changes.content_mark(database)
    assert archive.deleter.delete(victim)
    archive.ingest(mime("c"))
    after = changes.content_mark(database)
    assert after[1] == before[1]  # the same number of messages...
    assert after != before  # ...but not the same mail


def test_cache_recomputes_when_the_mark_changes_and_only_then():
    cache, computed = TimedCache(), []

    def compute():
        computed.append(1)
        return len(computed)

    assert cache.get("k", compute, mark=(0, 1)) == 1
    assert cache.get("k", compute, mark=(0, 1)) == 1
    assert cache.get("k", compute, mark=(0, 2)) == 2
    assert cache.get("k", compute, mark=(1, 2)) == 3


# --- 9: the frame's height follows its content ----------------------------------------------------

def test_short_html_gets_a_short_frame_and_long_html_the_full_height():
    short = "<p>Hello,</p><p>see you tomorrow.</p>"
    long = "".join(f"<p>{'word ' * 80}</p>" for _ in range(40))
    assert framesize.frame_classes(short) == "fh-n-1 fh-w-1"
    assert framesize.frame_classes(long) == "fh-n-full fh-w-full"
    assert framesize.estimated_height(long, framesize.NARROW_WIDTH) > framesize.estimated_height(
        long, framesize.WIDE_WIDTH)


def test_declared_image_sizes_count_and_blocked_images_without_a_size_do_not():
    with_image = '<p>x</p><img src="data:image/png;base64,AAAA" width="600" height="300">'
    narrow = framesize.estimated_height(with_image, framesize.NARROW_WIDTH)
    wide = framesize.estimated_height(with_image, framesize.WIDE_WIDTH)
    assert wide >= 300 and narrow < wide  # scaled down to the narrow width
    # A blocked image (no src) keeps its declared box; without one it takes no room.
    assert framesize.estimated_height('<p>x</p><img width="600" height="300">', framesize.WIDE_WIDTH) >= 300
    assert framesize.estimated_height('<p>x</p><img>', framesize.WIDE_WIDTH) < 100


def test_a_wide_table_overflows_rather_than_wraps_on_a_phone():
    table = f'<table width="600"><tr><td style="padding: 12px 24px">{"word " * 100}</td></tr></table>'
    assert framesize.estimated_height(table, framesize.NARROW_WIDTH) == framesize.estimated_height(
        table, 600)


def test_message_page_gives_the_frame_its_size_and_lists_attachments_first(archive, ui):
    email_id = archive.ingest(mime("short", html="<p>Two lines.</p><p>That is all.</p>",
                                   attachment=(b"%PDF-1.4", "application", "pdf", "a.pdf"))).email_id
    body = page(ui, f"/ui/emails/{email_id}")
    assert re.search(r'class="mail-frame fh-n-\d fh-w-\d" id="mail-frame"', body)
    assert body.index('class="attachments"') < body.index('id="mail-frame"')
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in body
