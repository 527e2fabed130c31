"""A small corpus for the search tests, built from real MIME the way ImprovMX parses it, and
the query table both the mongomock and the SecantusDB tests run."""

from __future__ import annotations

from email.message import EmailMessage

from improvmx_archive.sample import payload_from_mime


def _payload(subject: str, sender: str, to: str, *, text: str | None = None, html: str | None = None,
             cc: str | None = None, attachment: tuple[str, bytes] | None = None,
             inline: str | None = None, message_id: str | None = None,
             delivered_to: str | None = None) -> dict:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    if delivered_to:
        message["Delivered-To"] = delivered_to
    message["Subject"] = subject
    message["Date"] = "Tue, 03 Mar 2026 10:00:00 +0000"
    if message_id:
        message["Message-ID"] = message_id
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    if inline:
        message.make_mixed()
        message.add_attachment(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, maintype="image", subtype="png",
                               filename=inline, disposition="inline", cid="<logo@cid>")
    if attachment:
        name, data = attachment
        message.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return payload_from_mime(message.as_bytes())


# name -> payload; stored in this order, so the newest-first answer is the reverse.
CORPUS = {
    "invoice": _payload(
        "Invoice 2026-03 from Acme", "Acme Billing <billing@acme-corp.com>", "Owner <me@archive.test>",
        cc="Ann Accountant <ann@books.test>", message_id="<inv-1@acme-corp.com>",
        text="Please find the quarterly report attached. Total due: 100 EUR.",
        attachment=("rapport-trimestriel.pdf", b"%PDF-1.4 " + b"x" * 5000)),
    "resume": _payload(
        "Résumé for the Straße job", "Zoë Müller <zoe@example.org>", "me@archive.test",
        html="<p>Hello <b>world</b> of résumés &amp; CVs</p><script>secretcode()</script>"),
    "cyrillic": _payload("Привет мир", "Иван <ivan@example.ru>", "me@archive.test",
                         text="Счёт за услуги связи"),
    "cjk": _payload("東京の会議", "田中 <tanaka@example.jp>", "me@archive.test", text="会議は明日です。よろしく"),
    "newsletter": _payload(
        "Newsletter with logo", "News <news@letters.example>", "list@archive.test",
        delivered_to="hidden@archive.test", text="The report quarterly, as promised: a.*b (x) $gt",
        html="<p>The report quarterly</p><img src=\"cid:logo@cid\">", inline="logo.png"),
}

# (q, the names it must find, newest first)
QUERIES = [
    ("invoice", ["invoice"]),
    ("INVOICE acme", ["invoice"]),
    ("invoice zoe", []),
    ("resume", ["resume"]),
    ("RÉSUMÉ", ["resume"]),
    ("strasse", ["resume"]),
    ("resumes cvs", ["resume"]),
    ("secretcode", []),  # script content is not text
    ("from:acme", ["invoice"]),
    ("from:billing@acme-corp.com", ["invoice"]),
    ("from:acme-corp.com", ["invoice"]),
    ("from:billing", ["invoice"]),
    ('from:"Acme Billing"', ["invoice"]),
    ("from:owner", []),
    ("from:zoe", ["resume"]),
    ("from:muller", ["resume"]),
    ("to:me@archive.test", ["cjk", "cyrillic", "resume", "invoice"]),
    ("to:ann", ["invoice"]),
    ("to:hidden@archive.test", ["newsletter"]),
    ("cc:ann@books.test", ["invoice"]),
    ("cc:owner", []),
    ("subject:invoice", ["invoice"]),
    ("subject:quarterly", []),
    ("body:quarterly", ["newsletter", "invoice"]),
    ("body:acme", []),
    ("filename:rapport*", ["invoice"]),
    ('filename:"rapport-trimestriel.pdf"', ["invoice"]),
    ("filename:logo.png", ["newsletter"]),
    ("trimestriel", ["invoice"]),
    ("logo", ["newsletter"]),
    ("message-id:<inv-1@acme-corp.com>", ["invoice"]),
    ("message-id:inv-1@acme-corp.com", ["invoice"]),
    ("message-id:<other@acme-corp.com>", []),
    ("inv", []),
    ('"quarterly report"', ["invoice"]),
    ('"report quarterly"', ["newsletter"]),
    ('quarterly -"quarterly report"', ["newsletter"]),
    ('subject:"from acme"', ["invoice"]),
    ('subject:"acme from"', []),
    ("invoi*", ["invoice"]),
    ("quart*", ["newsletter", "invoice"]),
    ("zzz*", []),
    ("-invoi*", ["newsletter", "cjk", "cyrillic", "resume"]),
    ("quarterly -invoice", ["newsletter"]),
    ("-from:acme -from:zoe", ["newsletter", "cjk", "cyrillic"]),
    ("has:attachment", ["invoice"]),
    ("-has:attachment", ["newsletter", "cjk", "cyrillic", "resume"]),
    ("has:inline", ["newsletter"]),
    ("is:unprocessed report", ["newsletter", "invoice"]),
    ("is:processed", []),
    ("larger:4KB", ["invoice"]),
    ("smaller:4KB has:attachment", []),
    ("-larger:4KB -smaller:1b", ["newsletter", "cjk", "cyrillic", "resume"]),
    ("привет", ["cyrillic"]),
    ("ПРИВЕТ МИР", ["cyrillic"]),
    ("счет", ["cyrillic"]),
    ("услуг*", ["cyrillic"]),
    ("会議", ["cjk"]),
    ("東京", ["cjk"]),
    ("京東", []),
    ("明日", ["cjk"]),
    ("a.*b", ["newsletter"]),
    (".* invoice", ["invoice"]),
    ('{"$gt": ""}', ["newsletter"]),
    ("(x)", ["newsletter"]),
    ("$where", []),
    ("[a-z]+", []),
    ("x" * 256, []),
]

# (q, words the 400 error must contain)
BAD_QUERIES = [
    ("foo:bar", "unknown operator 'foo:'"),
    ("From:acme size:3", "unknown operator 'size:'"),
    ('"unclosed phrase', "unclosed quote"),
    ('subject:"unclosed', "unclosed quote"),
    ("before:2026-13-01", "not a calendar date"),
    ("after:yesterday", "YYYY-MM-DD"),
    ("larger:10GB", "size"),
    ("smaller:lots", "size"),
    ("has:pdf", "has:"),
    ("is:read", "is:"),
    ("from:", "needs a value"),
    (" ".join(["word"] * 33), "at most 32"),
    ("x" * 257, "at most 256"),
    ("subject:" + "y" * 257, "at most 256"),
    ("!!! ???", "nothing to search for"),
    ("-", "nothing to search for"),
    ("message-id:<>", "message-id"),
]
