"""`python -m bench.export`: a gunicorn worker's memory while a 40 MB attachment leaves the
archive through GET /export.mbox and GET /emails/<id>/raw (issue 10: growth under 32 MB).

One real gunicorn worker (gthread, the repo's gunicorn.conf.py) on SecantusDB. Each round
starts a fresh worker, warms it with a small export, then measures its peak RSS (VmHWM after
a clear_refs reset, cross-checked by sampling) against the RSS just before the request, once
with a client reading as fast as it can and once with one reading at ~8 MB/s. The download
is checked too: the mbox read back holds the attachment byte for byte.

    flock /tmp/bench.lock .venv/bin/python -m bench.export [--rounds 3] [--size-mb 40]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mailbox
import os
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from improvmx_archive.sample import payload_from_mime

from .harness import Bench, Client, RssSampler, auth, proc_status, reset_peak, worker_pids

MB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"
SLOW_READ_BYTES = 256 * 1024
SLOW_READ_PAUSE = 0.03  # ~8 MB/s: a client on an ordinary link, so the worker waits on the socket


def _big_message(data: bytes) -> bytes:
    message = EmailMessage()
    message["From"] = "Sender <sender@example.org>"
    message["To"] = "export@archive.test"
    message["Subject"] = "Forty megabytes"
    message["Date"] = "Sat, 14 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<forty-megabytes@example.org>"
    message.set_content("The attachment is large.")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename="big.bin")
    return json.dumps(payload_from_mime(message.as_bytes())).encode()


def _small_message(number: int) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = "warm@example.org", "export@archive.test"
    message["Subject"] = f"warm-up {number}"
    message.set_content("small")
    return json.dumps(payload_from_mime(message.as_bytes())).encode()


def _read(client: Client, path: str, slow: bool, save: Path | None = None) -> tuple[int, int, float]:
    """GET path with the client's connection; the status, bytes received and seconds."""
    conn = client._connection()
    started = time.perf_counter()
    conn.request("GET", path, headers=auth())
    response = conn.getresponse()
    size = 0
    handle = save.open("wb") if save else None
    try:
        while piece := response.read(SLOW_READ_BYTES):
            size += len(piece)
            if handle:
                handle.write(piece)
            if slow:
                time.sleep(SLOW_READ_PAUSE)
    finally:
        if handle:
            handle.close()
    return response.status, size, time.perf_counter() - started


def _measure(bench: Bench, path: str, slow: bool, save: Path | None = None) -> dict:
    with bench.running(("ours",), "export", workers=1) as servers:
        server = servers["ours"]
        client = Client(server.port)
        _read(client, "/export.mbox?subject=warm-up", slow=False)
        client.request("GET", "/emails?limit=1", headers=auth())
        pid = worker_pids(server)[0]
        baseline = proc_status(pid)["VmRSS"]
        reset = reset_peak(pid)
        with RssSampler(pid) as sampler:
            status, size, seconds = _read(client, path, slow, save)
        after = proc_status(pid)
        client.close()
    peak = max(after["VmHWM"], sampler.peak) if reset else sampler.peak
    return {"path": path.split("?")[0], "slow_client": slow, "status": status, "bytes": size,
            "seconds": round(seconds, 2), "baseline_rss_mib": round(baseline / MB, 1),
            "peak_rss_mib": round(peak / MB, 1), "growth_mib": round((peak - baseline) / MB, 1),
            "peak_reset": reset}


def _check_mbox(path: Path, digest: str) -> bool:
    """The exported mbox, read back by Python's mailbox, holds the attachment exactly."""
    box = mailbox.mbox(path, create=False)
    try:
        for message in box:
            for part in message.walk():
                if part.get_filename() == "big.bin":
                    return hashlib.sha256(part.get_payload(decode=True)).hexdigest() == digest
    finally:
        box.close()
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=40)
    parser.add_argument("--mongo-uri", help="a real MongoDB instead of a fresh SecantusDB")
    parser.add_argument("--out", type=Path, default=RESULTS / "export.json")
    args = parser.parse_args(argv)

    data = os.urandom(args.size_mb * MB)
    digest = hashlib.sha256(data).hexdigest()
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    bench = Bench(workdir, mongo_uri=args.mongo_uri, db_prefix="improvmx_bench_export")
    rows = []
    try:
        bench.start_database()
        with bench.running(("ours",), "export", workers=1) as servers:
            client = Client(servers["ours"].port)
            for number in range(3):
                client.request("POST", "/webhook", _small_message(number))
            reply = client.request("POST", "/webhook", _big_message(data))
            client.close()
        email_id = reply.json().get("email_id")
        if reply.status != 200 or not email_id:
            print(f"could not store the {args.size_mb} MB message: {reply.status} {reply.body[:200]!r}", file=sys.stderr)
            return 1
        saved = workdir / "export.mbox"
        for round_number in range(args.rounds):
            for path, slow in (("/export.mbox", False), ("/export.mbox", True), (f"/emails/{email_id}/raw", False)):
                row = _measure(bench, path, slow, save=saved if round_number == 0 and not slow and path == "/export.mbox" else None)
                rows.append(row)
                print(f"round {round_number + 1} {row['path']} {'slow' if slow else 'fast'} client: "
                      f"{row['bytes'] / MB:.1f} MiB in {row['seconds']} s, worker RSS {row['baseline_rss_mib']} -> "
                      f"{row['peak_rss_mib']} MiB (growth {row['growth_mib']} MiB)", flush=True)
        intact = _check_mbox(saved, digest)
    finally:
        bench.close()
    result = {"size_mib": args.size_mb, "attachment_intact_in_mbox": intact,
              "max_growth_mib": max(row["growth_mib"] for row in rows), "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"max worker RSS growth {result['max_growth_mib']} MiB; attachment intact in the mbox: {intact}; "
          f"written to {args.out}")
    return 0 if intact else 1


if __name__ == "__main__":
    sys.exit(main())
