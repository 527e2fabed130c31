"""`python -m bench.imap`: a first full mbsync of the archive over IMAP, against Dovecot.

The same 2,000 messages (the 47 real-world messages of CPython's email test data, the rest
from bench/corpus.py's realistic mix of plain, HTML and attachment mail) are stored in the
archive on SecantusDB and, as the exact bytes GET /emails/<id>/raw serves, in a Maildir that
Debian's Dovecot (`dovecot-imapd`, run unprivileged from a config in a temp dir) serves.
The same mbsync (isync), same settings, same TLS, pulls INBOX from each into an empty
Maildir; rounds alternate between the servers, once with mbsync's own default (FSync yes:
every message flushed to disk, as people run it) and once without (the servers' speed
alone). Reported: messages per second for each, the ratios, the CPU each side spent per
message (the IMAP server, its database, mbsync; Dovecot's processes), and the IMAP server's peak
memory while it serves a mailbox holding the largest message and the whole INBOX (flat
means independent of the mailbox's size).

    flock /tmp/bench.lock .venv/bin/python -m bench.imap [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

from devtools import processes
from improvmx_archive import create_app
from improvmx_archive.access.principal import Principal
from improvmx_archive.access.scoped import ScopedArchive
from improvmx_archive.indexer import SearchIndexer
from improvmx_archive.sample import payload_from_mime
from tests.conftest import API_KEY, make_settings

from . import corpus
from .costs import TICK, process_tree
from .harness import proc_status, reset_peak

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cpython"
RESULTS = Path(__file__).resolve().parent / "results"
DOVECOT_PASSWORD = "bench-password"
ATTACH_SHARE = 0.05  # of the generated messages; the rest are plain or text+HTML mail


def real_world_payloads(count: int, seed: int) -> list[dict]:
    """CPython's real messages first, then corpus mail (small, some with attachments)."""
    payloads = []
    for path in sorted(FIXTURES.glob("msg_*.txt")):
        try:
            payloads.append(payload_from_mime(path.read_bytes()))
        except Exception:  # noqa: BLE001 - a fixture mailparse cannot read is left out
            continue
    index = 0
    while len(payloads) < count:
        kind = "attach" if (index % round(1 / ATTACH_SHARE)) == 0 else "small"
        payloads.append(json.loads(corpus.build(kind, seed, "imap", index)))
        index += 1
    return payloads[:count]


def dovecot_config(root: Path, port: int, cert: Path, key: Path) -> Path:
    """Dovecot serving root/Maildir over IMAPS on port, as an unprivileged user."""
    if os.geteuid() == 0:  # Dovecot refuses to run its login and mail processes as root
        user, group = "nobody", "nogroup"
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    entry = pwd.getpwnam(user)
    for name in ("run", "state", "home"):
        (root / name).mkdir(parents=True, exist_ok=True)
    config = root / "dovecot.conf"
    config.write_text(f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
auth_mechanisms = plain login
mail_location = maildir:{root}/Maildir
passdb {{
  driver = static
  args = password={DOVECOT_PASSWORD}
}}
userdb {{
  driver = static
  args = uid={entry.pw_uid} gid={entry.pw_gid} home={root}/home
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  user = {user}
}}
""")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{user}:{group}", str(root / "Maildir"), str(root / "home"),
                        str(root / "state")], check=True)
        root.chmod(0o755)
    return config


def mbsync_config(path: Path, port: int, user: str, password: str, cert: Path, target: Path, pattern: str,
                  fsync: bool = False) -> Path:
    """fsync: mbsync's default (each message flushed to disk, as a user runs it); without it
    the client's disk is out of the measure and the servers' own speed shows."""
    path.write_text(f"""FSync {"yes" if fsync else "no"}

IMAPAccount far
Host localhost
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {cert}
PipelineDepth 50

IMAPStore far
Account far

MaildirStore near
Path {target}/
Inbox {target}/INBOX
SubFolders Verbatim

Channel sync
Far :far:
Near :near:
Patterns {pattern}
Create Near
Sync Pull
SyncState *
""")
    return path


def timed_sync(config: Path) -> tuple[float, float]:
    """Wall seconds of one mbsync run, and the CPU seconds mbsync itself spent."""
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(["mbsync", "-q", "-c", str(config), "-a"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"mbsync failed: {done.stdout}{done.stderr}")
    client = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    return elapsed, client


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree, including children already exited and reaped (Dovecot
    runs a login and an imap process per connection; their time lands in the master's cutime)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(value) for value in fields[11:15]) / TICK  # utime stime cutime cstime
    return total


def dovecot_master_pid(root: Path, timeout: float = 10.0) -> int:
    """Dovecot's master process, from the pid file it writes once it is up."""
    pid_file = root / "run" / "master.pid"
    deadline = time.monotonic() + timeout
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return int(pid_file.read_text().split()[0])


def count_files(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/cur/*")) + sum(1 for _ in folder.glob("*/new/*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "imap-latest.json")
    args = parser.parse_args()
    for tool in ("mbsync", "/usr/sbin/dovecot"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install isync dovecot-imapd)")

    work = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    work.chmod(0o755)  # Dovecot's unprivileged processes reach their Maildir below it
    database = processes.secantus(work / "secantus").start()
    uri = processes.mongo_uri(database.port)
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    settings = make_settings(work, MONGO_URI=uri, MONGO_DB="bench_imap", RATELIMIT_ENABLED="false",
                             DOMINIO=corpus.DOMAIN)
    app = create_app(settings, mongo_client=mongo)
    archive = app.extensions["archive"]
    print(f"storing {args.messages} messages ...", flush=True)
    for payload in real_world_payloads(args.messages, args.seed):
        archive.ingest(payload)
    SearchIndexer(archive).index_pending()  # as the web workers' background pass leaves them

    cert, key = processes.self_signed_certificate(work / "tls")
    imap_port = processes.free_port()
    env = {"API_KEY": API_KEY, "MONGO_URI": uri, "MONGO_DB": "bench_imap", "RATELIMIT_STORAGE_URI": "memory://",
           "SPOOL_DIR": str(work / "spool"), "IMAP_TLS_CERT": str(cert), "IMAP_TLS_KEY": str(key),
           "DOMINIO": corpus.DOMAIN}  # the numbering pass every IMAP_NUMBER_INTERVAL, as deployed
    server = processes.imap_server(env, work / "imap.log", imap_port).start()
    print("numbering (UIDs and sizes, the background pass) ...", flush=True)
    started = time.perf_counter()
    state, emails = mongo["bench_imap"].imap_state, mongo["bench_imap"].emails
    stored = emails.count_documents({})  # identical messages are stored once
    while emails.count_documents({"imap_size": None}) or \
            (state.find_one({"_id": "numbering"}) or {}).get("visible_through", 0) < stored:
        time.sleep(0.5)
    numbering_seconds = time.perf_counter() - started

    print("writing the Maildir for Dovecot ...", flush=True)
    dovecot_root = work / "dovecot"
    maildir = dovecot_root / "Maildir"
    for name in ("cur", "new", "tmp"):
        (maildir / name).mkdir(parents=True, exist_ok=True)
    scoped = ScopedArchive(archive, Principal.operator(), audited=False)  # a bench, not a reader: no audit entries
    total_bytes = 0
    for number, summary in enumerate(archive.emails.find({}, {"_id": 1}).sort("imap_uid", 1), 1):
        data = b"".join(scoped.rebuild(str(summary["_id"]))).replace(b"\r\n", b"\n")
        total_bytes += len(data)
        (maildir / "cur" / f"{number}.bench:2,").write_bytes(data)
    dovecot_port = processes.free_port()
    config = dovecot_config(dovecot_root, dovecot_port, cert, key)
    subprocess.run(["/usr/sbin/dovecot", "-c", str(config)], check=True)
    processes.wait_for_port(dovecot_port)

    modes = {"no-fsync": False, "fsync": True}
    results: dict[str, dict[str, list[float]]] = {mode: {"archive": [], "dovecot": []} for mode in modes}
    cpu: dict[str, dict[str, list[dict[str, float]]]] = {mode: {"archive": [], "dovecot": []} for mode in modes}
    try:
        dovecot_pid = dovecot_master_pid(dovecot_root)
        for mode, fsync in modes.items():
            for round_number in range(args.rounds):
                for name in ("dovecot", "archive") if round_number % 2 else ("archive", "dovecot"):
                    target = work / f"sync-{mode}-{name}-{round_number}"
                    target.mkdir()
                    port, user, password = ((imap_port, "operator", API_KEY) if name == "archive"
                                            else (dovecot_port, "bench", DOVECOT_PASSWORD))
                    mbsyncrc = mbsync_config(work / f"mbsyncrc-{mode}-{name}-{round_number}", port, user, password,
                                             cert, target, "INBOX", fsync)
                    sides = ({"server": server.proc.pid, "database": database.proc.pid} if name == "archive"
                             else {"server": dovecot_pid})
                    before = {side: tree_cpu(pid) for side, pid in sides.items()}
                    seconds, client = timed_sync(mbsyncrc)
                    time.sleep(0.5)  # Dovecot's per-connection processes exit and are reaped
                    spent = {side: tree_cpu(pid) - before[side] for side, pid in sides.items()}
                    spent["client"] = client
                    got = count_files(target)
                    if got != stored:
                        raise RuntimeError(f"{name}: synced {got} of {stored} messages")
                    results[mode][name].append(seconds)
                    cpu[mode][name].append(spent)
                    print(f"{mode} round {round_number + 1} {name}: {seconds:.2f} s ({stored / seconds:.0f} msg/s), "
                          + ", ".join(f"{side} {value:.2f} s CPU" for side, value in spent.items()), flush=True)
                    shutil.rmtree(target)
        # Memory: peak RSS while one mailbox holding the largest message syncs, then the whole
        # INBOX. A server whose memory follows the mailbox's size would differ widely; one
        # bounded by the largest message holds both at about the same peak.
        emails = mongo["bench_imap"].emails
        largest = emails.find_one({}, {"audience": 1, "imap_size": 1}, sort=[("imap_size.n", -1)])
        aliases = [tag for tag in largest["audience"] if not tag.startswith("@")]
        small_count, small_alias = min((emails.count_documents({"audience": alias}), alias) for alias in aliases)
        memory = {"largest_message_mb": round(largest["imap_size"]["n"] / 2**20, 1)}
        for label, pattern, count in ((f"{small_alias} ({small_count} messages)", small_alias, small_count),
                                      (f"INBOX ({stored} messages)", "INBOX", stored)):
            target = work / f"memory-{pattern}"
            target.mkdir()
            reset_peak(server.proc.pid)
            before = proc_status(server.proc.pid)["VmRSS"]
            timed_sync(mbsync_config(work / "mbsyncrc-memory", imap_port, "operator", API_KEY, cert, target, pattern))
            memory[label] = {"messages": count, "rss_before_mb": round(before / 2**20, 1),
                             "peak_rss_mb": round(proc_status(server.proc.pid)["VmHWM"] / 2**20, 1)}
    finally:
        pid_file = dovecot_root / "run" / "master.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), 15)
        server.stop()
        database.stop()

    def rate(times: list[float]) -> float:
        return stored / sorted(times)[len(times) // 2]

    report = {
        "messages": stored, "bytes": total_bytes, "rounds": args.rounds,
        "seconds": results,
        "median_rate_msg_s": {mode: {name: round(rate(times), 1) for name, times in by_server.items()}
                              for mode, by_server in results.items()},
        "ratio_archive_to_dovecot": {mode: round(rate(by_server["archive"]) / rate(by_server["dovecot"]), 3)
                                     for mode, by_server in results.items()},
        "cpu_ms_per_message": {mode: {name: {side: round(statistics.median(run[side] for run in runs) / stored * 1000, 3)
                                             for side in runs[0]}
                                      for name, runs in by_server.items()}
                               for mode, by_server in cpu.items()},
        "numbering_seconds": round(numbering_seconds, 1), "memory": memory,
        "mbsync": subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout.strip(),
        "dovecot": subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
