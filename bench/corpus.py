"""A realistic, reproducible corpus of ImprovMX webhook payloads.

Every message is built as MIME with the stdlib ``email`` package and turned into the webhook
JSON by ImprovMX's own parser (mailparse), through the app's ``payload_from_mime``. Each
message is derived from ``Random(f"{seed}:{set}:{index}")`` alone, so any subset can be rebuilt
independently and a given seed always yields byte-identical payloads.

Size classes (the issue's mix):
  small   70%  plain or text+HTML, 5-50 KB
  attach  25%  1-3 attachments of 50 KB-2 MB; some drawn from a shared pool (newsletter logos,
               a PDF forwarded along a thread), so the same bytes recur across messages
  huge     5%  10-40 MB of attachments in 1-3 parts (JSON 13-54 MB: most exceed 16 MB)

Attachment bytes are random (incompressible, like the PDFs, images and archives people send);
bodies are English-like text, compressible like real mail.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

from improvmx_archive.sample import payload_from_mime

GENERATOR_VERSION = 1
KB = 1024
MB = 1024 * 1024
DOMAIN = "archive-bench.example"
MIX = {"small": 0.70, "attach": 0.25, "huge": 0.05}

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part invoice order shipment "
    "meeting agenda report quarterly budget review draft contract attached please regards thanks "
    "project deadline update schedule customer account payment receipt delivery newsletter offer "
    "team office notes summary proposal feedback release version server backup migration ticket"
).split()
FIRST = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert Sybil Trent Victor Wendy".split()
LAST = "Smith Jones Garcia Miller Davis Lopez Wilson Moore Taylor Thomas White Martin Clark Lewis Walker".split()
SENDER_DOMAINS = ("mail.example.com", "corp.example.org", "shop.example.net", "news.example.io",
                  "bank.example.co.uk", "univ.example.edu")
ALIASES = ("contact", "sales", "support", "info", "billing", "jobs", "press", "admin", "hello", "team")
ATTACHMENT_TYPES = (
    ("application", "pdf", "pdf"), ("image", "jpeg", "jpg"), ("image", "png", "png"),
    ("application", "zip", "zip"),
    ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
)
POOL_SIZE = 6
POOL_SHARE = 0.3  # chance an attachment of the 'attach' class is a pooled (repeated) one
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)


def text_of(rng: random.Random, chars: int) -> str:
    """English-like paragraphs of about `chars` characters."""
    out, size = [], 0
    while size < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "."
        out.append(sentence)
        size += len(sentence) + 1
        if rng.random() < 0.15:
            out.append("\n\n")
    return " ".join(out)[:chars]


def html_of(text: str) -> str:
    paragraphs = "".join(f'<p style="margin:0 0 12px;font-family:Arial">{p.strip()}</p>\n'
                         for p in text.split("\n\n") if p.strip())
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>message</title></head>"
            f"<body><table width=\"100%\"><tr><td>{paragraphs}</td></tr></table></body></html>")


def person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return f"{first} {last}", f"{first.lower()}.{last.lower()}@{rng.choice(SENDER_DOMAINS)}"


@dataclass(frozen=True)
class Attachment:
    name: str
    maintype: str
    subtype: str
    data: bytes


def random_attachment(rng: random.Random, size: int, stem: str) -> Attachment:
    maintype, subtype, ext = rng.choice(ATTACHMENT_TYPES)
    return Attachment(f"{stem}.{ext}", maintype, subtype, rng.randbytes(size))


def pool_attachment(seed: int, k: int) -> Attachment:
    """One of the shared attachments that recur across messages (same bytes every time)."""
    rng = random.Random(f"{seed}:pool:{k}")
    return random_attachment(rng, rng.randint(50 * KB, 2 * MB), f"shared-{k}")


def base_message(rng: random.Random, ident: str, body_chars: int, html: bool | None = None) -> EmailMessage:
    name, address = person(rng)
    msg = EmailMessage()
    sent = EPOCH + timedelta(seconds=rng.randint(0, 364 * 86400))
    msg["Received"] = (f"from mx{rng.randint(1, 9)}.{address.split('@')[1]} ([192.0.2.{rng.randint(1, 254)}]) "
                       f"by mx1.improvmx.com; {format_datetime(sent)}")
    msg["Received"] = f"by smtp.{address.split('@')[1]} with ESMTPSA; {format_datetime(sent)}"
    msg["DKIM-Signature"] = ("v=1; a=rsa-sha256; c=relaxed/relaxed; d=" + address.split("@")[1]
                             + "; s=s1; h=from:to:subject:date; bh=" + rng.randbytes(32).hex()
                             + "; b=" + rng.randbytes(96).hex())
    msg["From"] = f"{name} <{address}>"
    recipients = rng.sample(ALIASES, rng.choice((1, 1, 1, 2)))
    msg["To"] = ", ".join(f"{a.capitalize()} <{a}@{DOMAIN}>" for a in recipients)
    if rng.random() < 0.2:
        msg["Cc"] = "{} <{}>".format(*person(rng))
    msg["Subject"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + f" [{ident}]"
    msg["Date"] = format_datetime(sent)
    msg["Message-ID"] = f"<{rng.randbytes(8).hex()}.{ident.replace(':', '.')}@{address.split('@')[1]}>"
    msg["X-Mailer"] = rng.choice(("Apple Mail (2.3731)", "Microsoft Outlook 16.0", "Thunderbird 128.3"))
    text = text_of(rng, body_chars)
    msg.set_content(text)
    if html if html is not None else rng.random() < 0.6:
        msg.add_alternative(html_of(text), subtype="html")
    return msg


def add(msg: EmailMessage, part: Attachment) -> None:
    msg.add_attachment(part.data, maintype=part.maintype, subtype=part.subtype, filename=part.name)


def small_message(rng: random.Random, ident: str) -> EmailMessage:
    target = rng.randint(5 * KB, 50 * KB)
    html = rng.random() < 0.6
    # text+html carries the text twice (plus markup), so aim the text at ~40% of the target
    return base_message(rng, ident, int(target * (0.42 if html else 0.9)), html)


def attach_message(rng: random.Random, ident: str, seed: int) -> EmailMessage:
    msg = base_message(rng, ident, rng.randint(1 * KB, 8 * KB))
    for n in range(rng.randint(1, 3)):
        if rng.random() < POOL_SHARE:
            add(msg, pool_attachment(seed, rng.randrange(POOL_SIZE)))
        else:
            add(msg, random_attachment(rng, rng.randint(50 * KB, 2 * MB), f"file-{ident}-{n}"))
    return msg


def huge_message(rng: random.Random, ident: str, total: int | None = None, parts: int | None = None) -> EmailMessage:
    msg = base_message(rng, ident, rng.randint(1 * KB, 4 * KB))
    total = total or rng.randint(10 * MB, 40 * MB)
    parts = parts or rng.randint(1, 3)
    for n in range(parts):
        add(msg, random_attachment(rng, total // parts, f"big-{ident}-{n}"))
    return msg


def repeated_message(rng: random.Random, ident: str, seed: int) -> EmailMessage:
    """The repeated-attachment set: newsletters / forwarded threads carrying pooled files only."""
    msg = base_message(rng, ident, rng.randint(2 * KB, 10 * KB))
    for k in rng.sample(range(POOL_SIZE), rng.randint(1, 2)):
        add(msg, pool_attachment(seed, k))
    return msg


def build(kind: str, seed: int, set_name: str, index: int, **options) -> bytes:
    """The JSON body ImprovMX would POST for message `index` of set `set_name`."""
    rng = random.Random(f"{seed}:{set_name}:{index}")
    ident = f"{set_name}:{index}"
    if kind == "small":
        msg = small_message(rng, ident)
    elif kind == "attach":
        msg = attach_message(rng, ident, seed)
    elif kind == "huge":
        msg = huge_message(rng, ident, **options)
    elif kind == "repeated":
        msg = repeated_message(rng, ident, seed)
    elif kind == "single":  # one attachment of an exact size (download / memory figures)
        msg = base_message(rng, ident, 2 * KB)
        add(msg, random_attachment(rng, options["size"], f"single-{options['size']}"))
    else:
        raise ValueError(kind)
    return json.dumps(payload_from_mime(msg.as_bytes()), sort_keys=True).encode()


@dataclass
class MessageSet:
    name: str
    kind: str
    paths: list[Path]

    def bodies(self) -> list[bytes]:
        return [path.read_bytes() for path in self.paths]

    @property
    def sizes(self) -> list[int]:
        return [path.stat().st_size for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)


class Corpus:
    """Message sets cached on disk under root/seed-<seed>-v<version>/<set>/<i>.json."""

    def __init__(self, root: Path, seed: int):
        self.seed = seed
        self.root = root / f"seed-{seed}-v{GENERATOR_VERSION}"
        self.root.mkdir(parents=True, exist_ok=True)

    def messages(self, set_name: str, kind: str, count: int, **options) -> MessageSet:
        folder = self.root / set_name
        folder.mkdir(exist_ok=True)
        paths = []
        for index in range(count):
            path = folder / f"{index:05d}.json"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(build(kind, self.seed, set_name, index, **options))
                tmp.replace(path)
            paths.append(path)
        return MessageSet(set_name, kind, paths)

    def one(self, set_name: str, kind: str, **options) -> Path:
        return self.messages(set_name, kind, 1, **options).paths[0]


def describe(sets: list[MessageSet]) -> dict:
    """Counts and sizes of what was sent, for the report."""
    out: dict[str, dict] = {}
    for item in sets:
        entry = out.setdefault(item.kind, {"messages": 0, "bytes": 0, "min": None, "max": 0, "over_16mb": 0})
        for size in item.sizes:
            entry["messages"] += 1
            entry["bytes"] += size
            entry["min"] = size if entry["min"] is None else min(entry["min"], size)
            entry["max"] = max(entry["max"], size)
            entry["over_16mb"] += size > 16 * MB
    return out
