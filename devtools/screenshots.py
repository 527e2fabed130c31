"""`python -m devtools.screenshots`: regenerate the README's screenshots of the web UI.

Starts a throwaway SecantusDB and gunicorn, imports a small demo mailbox through POST /import
(so each message keeps its own date), signs in with headless Chromium and saves the inbox, a
message, the overview and the inbox on a phone under docs/screenshots/. Development only.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import requests

from devtools import browser, processes

OUTPUT = processes.REPO_ROOT / "docs" / "screenshots"
KEY = "screenshot-key-0123456789abcdef"
AUTH_OK = ("mx1.improvmx.com; spf=pass smtp.mailfrom={domain}; dkim=pass header.d={domain}; "
           "dmarc=pass header.from={domain}")


def banner_png(width: int = 560, height: int = 90) -> bytes:
    """A two-tone banner as a real PNG (the newsletter's inline cid: image)."""
    rows = b"".join(b"\x00" + (bytes((35, 87, 198)) if y < height * 2 // 3 else bytes((246, 180, 60))) * width
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _message(sender: str, to: str, subject: str, when: datetime, text: str, html: str | None = None,
             attachment: tuple[bytes, str, str, str] | None = None, auth: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = make_msgid(domain="demo.example")
    domain = sender.rsplit("@", 1)[-1].rstrip(">")
    message["Authentication-Results"] = auth or AUTH_OK.format(domain=domain)
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    if attachment:
        data, maintype, subtype, name = attachment
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def newsletter(when: datetime) -> EmailMessage:
    cid = make_msgid(domain="news.northwind.example")
    html = f"""<table width="100%" cellpadding="0" cellspacing="0" style="background-color: #eef1f6">
<tr><td align="center" style="padding: 24px 12px">
<table width="560" cellpadding="0" cellspacing="0" style="background-color: #ffffff; border-radius: 8px">
<tr><td><img src="cid:{cid[1:-1]}" alt="Northwind" width="560" height="90"></td></tr>
<tr><td style="padding: 20px 28px; font-family: Georgia, serif; color: #1d2430">
<h1 style="font-size: 24px; margin: 0 0 12px">Winter collection is here</h1>
<p style="font-size: 15px; line-height: 1.5">Warm coats, wool scarves and boots built for slush.
Members get <b>20% off</b> until Sunday.</p>
<p><a href="https://northwind.example/winter" style="background-color: #2357c6; color: #ffffff;
padding: 10px 18px; border-radius: 6px; text-decoration: none">Shop the collection</a></p>
<p style="font-size: 12px; color: #667085">You get this because you subscribed at northwind.example.
<img src="https://tracker.northwind.example/open.gif" width="1" height="1" alt=""></p>
</td></tr></table></td></tr></table>"""
    message = _message("Northwind Outfitters <news@northwind.example>", "shop@archive.example",
                       "Winter collection is here — 20% off for members", when,
                       "Winter collection is here. Members get 20% off until Sunday.", html)
    message.get_payload()[1].add_related(banner_png(), "image", "png", cid=cid, filename="banner.png",
                                          disposition="inline")
    return message


def demo_mailbox(now: datetime) -> list[EmailMessage]:
    hours = lambda n: now - timedelta(hours=n)  # noqa: E731
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    mail = [
        _message("Acme Billing <billing@acme.example>", "accounts@archive.example", "Invoice 2026-118 for November",
                 hours(300), "Please find invoice 2026-118 attached. Payment is due within 30 days.",
                 attachment=(pdf, "application", "pdf", "invoice-2026-118.pdf")),
        _message("Dana Whitfield <dana@example.org>", "support@archive.example", "Order #4471 arrived damaged",
                 hours(160), "Hi, the lamp in order #4471 arrived with a cracked base. Photos attached.",
                 attachment=(banner_png(320, 200), "image", "png", "damage.png")),
        _message("GitHub <noreply@github.example>", "dev@archive.example", "[archive] CI passed on main",
                 hours(75), "All checks have passed on main."),
        _message("Ravi Patel <ravi@partner.example>", "sales@archive.example", "Re: Wholesale pricing for 2027",
                 hours(50), "Thanks for the sheet. Can we talk Thursday about volumes above 500 units?"),
        _message("Unknown Sender <promo@cheap-pills.example>", "sales@archive.example", "You have won!!!",
                 hours(30), "Click here to claim your prize.",
                 auth="mx1.improvmx.com; spf=fail smtp.mailfrom=cheap-pills.example; dkim=none; dmarc=fail"),
        _message("Acme Billing <billing@acme.example>", "accounts@archive.example", "Payment received, thank you",
                 hours(20), "We received your payment for invoice 2026-104."),
        _message("Maria Gomez <maria@example.net>", "support@archive.example", "Question about returns",
                 hours(6), "Can I return a scarf bought in the sale, or is it final?"),
        _message("Calendar <calendar@archive.example>", "dev@archive.example", "Reminder: backup restore drill",
                 hours(3), "The quarterly restore drill is tomorrow at 10:00 UTC."),
        newsletter(now - timedelta(minutes=42)),
    ]
    for day in range(4, 28, 3):
        mail.append(_message("Status Bot <status@uptime.example>", "dev@archive.example",
                             f"Weekly uptime report #{day}", now - timedelta(days=day, hours=2),
                             "All endpoints were up 99.98% of the time."))
    return mail


def fill(base: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    ids = []
    for message in demo_mailbox(datetime.now(timezone.utc)):
        response = requests.post(f"{base}/import", data=message.as_bytes(), timeout=30,
                                 headers={**auth, "Content-Type": "message/rfc822"})
        response.raise_for_status()
        ids.append(response.json()["email_id"])
    for email_id in ids[:3]:
        requests.patch(f"{base}/emails/{email_id}", json={"processed": True}, headers=auth, timeout=30)


def capture(base: str, profile: Path, output: Path) -> list[Path]:
    from selenium.webdriver.common.by import By

    saved = []
    driver = browser.chromium(profile / "desktop", width=1280, height=1000)
    try:
        driver.get(f"{base}/ui/login")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "button.primary").click()
        driver.find_element(By.CSS_SELECTOR, ".messages")
        saved.append(_shot(driver, output / "inbox.png"))
        driver.find_element(By.PARTIAL_LINK_TEXT, "Winter collection").click()
        time.sleep(1)  # the frame and its inline image
        saved.append(_shot(driver, output / "message.png"))
        driver.get(f"{base}/ui/overview")
        saved.append(_shot(driver, output / "overview.png"))
        cookie = driver.get_cookie("ui_session")
    finally:
        driver.quit()
    phone = browser.chromium(profile / "phone", width=390, height=780, mobile=True)
    try:
        phone.get(f"{base}/ui/login")
        phone.add_cookie({"name": "ui_session", "value": cookie["value"], "path": "/ui"})
        phone.get(f"{base}/ui/")
        saved.append(_shot(phone, output / "inbox-phone.png"))
    finally:
        phone.quit()
    return saved


def _shot(driver, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the PNG files go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as scratch:
        work = Path(scratch)
        database = processes.secantus(work / "db").start()
        env = {"API_KEY": KEY, "MONGO_URI": processes.mongo_uri(database.port), "MONGO_DB": "screenshots",
               "RATELIMIT_STORAGE_URI": "memory://", "SPOOL_DIR": str(work / "spool"), "TRUSTED_PROXY_COUNT": "0",
               "BACKGROUND_TASKS": "off", "WEB_CONCURRENCY": "1", "DOMINIO": "archive.example",
               "RATELIMIT_GLOBAL": "100000 per hour", "RATELIMIT_IMPORT": "100000 per hour"}
        server = processes.gunicorn(env, work / "gunicorn.log").start(timeout=60)
        try:
            base = f"http://127.0.0.1:{server.port}"
            fill(base)
            for path in capture(base, work / "chromium", args.output):
                print(f"wrote {path.relative_to(processes.REPO_ROOT) if path.is_relative_to(processes.REPO_ROOT) else path}")
        finally:
            server.stop()
            database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
