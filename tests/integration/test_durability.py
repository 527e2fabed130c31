"""Issue 5 over real processes: once the webhook answers 2xx, the message is archived exactly
once, whatever happens to MongoDB or a worker.

Each test runs the shipped gunicorn.conf.py (gthread workers, several of them) against its own
SecantusDB, which is killed with SIGKILL and restarted on the same data directory and port.
ImprovMX's delivery is simulated: a non-2xx answer (or a broken connection) is retried twice.
The background task replays the spool (BACKGROUND_TASKS=auto turns it on under gunicorn), and
the rate limiter runs as in production, on MongoDB storage, so an outage reaches it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
import requests
from bson import ObjectId
from pymongo import MongoClient

from devtools import processes
from improvmx_archive.admission import SLOT_NAME
from improvmx_archive.archive import Archive
from improvmx_archive.config import DEFAULT_LIMITS
from improvmx_archive.maintenance import collect_orphans
from improvmx_archive.sample import payload_from_mime

pytestmark = pytest.mark.slow

API_KEY = "durability-key-0123456789abcdef"
DB_NAME = "durability"
ATTEMPTS = 3  # ImprovMX: the first delivery and two retries, then the mail is dropped
RETRY_PAUSE = 1.0
SHARED_LOGO = random.Random(5).randbytes(3000)


# --- the deployment under test ------------------------------------------------------------

@dataclass
class Deployment:
    """SecantusDB and one or more app hosts (a gunicorn each, with its own spool), as
    separate processes torn down by stop()."""

    tmp: Path
    workers: int
    db_port: int = field(default_factory=processes.free_port)
    database: processes.ManagedProcess | None = None
    hosts: list[processes.ManagedProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp / "secantus" / "data"

    @property
    def web(self) -> processes.ManagedProcess:
        return self.hosts[0]

    @property
    def spool_dir(self) -> Path:
        return self.tmp / "spool"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"

    def start(self, database_up: bool = True) -> "Deployment":
        if database_up:
            self.start_database()
        self.start_host(self.spool_dir)
        return self

    def start_host(self, spool_dir: Path) -> processes.ManagedProcess:
        env = {
            "API_KEY": API_KEY,
            "MONGO_URI": processes.mongo_uri(self.db_port),
            "MONGO_DB": DB_NAME,
            "MONGO_TIMEOUT_MS": "1500",
            "SPOOL_DIR": str(spool_dir),
            "SPOOL_REPLAY_INTERVAL": "2",
            "TRUSTED_PROXY_COUNT": "0",
            "WEB_CONCURRENCY": str(self.workers),
            "LOG_LEVEL": "INFO",
            # Production limiter (MongoDB storage, on), with limits no test run reaches.
            **{name: "1000000 per minute" for name in DEFAULT_LIMITS},
        }
        host = processes.gunicorn(env, self.tmp / f"gunicorn-{spool_dir.name}.log").start()
        self.hosts.append(host)
        return host

    def start_database(self) -> None:
        self.database = processes.secantus(self.data_dir, port=self.db_port).start()

    def kill_database(self) -> None:
        self.database.kill()

    def mongo(self) -> MongoClient:
        return MongoClient(processes.mongo_uri(self.db_port), serverSelectionTimeoutMS=10_000, tz_aware=True)

    def log(self) -> str:
        return "".join(host.log_text() for host in self.hosts)

    def stop(self) -> None:
        for process in [*self.hosts, self.database]:
            if process:
                process.stop()
        self.hosts.clear()


@pytest.fixture
def deploy(tmp_path):
    started = []

    def start(workers: int, database_up: bool = True) -> Deployment:
        deployment = Deployment(tmp_path, workers)
        started.append(deployment)
        return deployment.start(database_up)

    yield start
    for deployment in started:
        deployment.stop()


# --- messages and ImprovMX's delivery -----------------------------------------------------

@dataclass
class Message:
    subject: str
    body: bytes
    attachment_sha256: list[str]


def build_message(subject: str, attachments: list[tuple[str, bytes]]) -> Message:
    """A real MIME message turned into ImprovMX's JSON by mailparse, as ImprovMX does."""
    mime = EmailMessage()
    mime["From"] = "Sender <sender@example.org>"
    mime["To"] = "inbox@archive.test"
    mime["Subject"] = subject
    mime["Message-ID"] = make_msgid(domain="example.org")
    mime.set_content(f"{subject}\n\nThe body of this message.\n")
    for name, data in attachments:
        mime.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    body = json.dumps(payload_from_mime(mime.as_bytes())).encode()
    return Message(subject, body, sorted(hashlib.sha256(data).hexdigest() for _, data in attachments))


def small_message(run: str, index: int) -> Message:
    """Text-only, or one to three small random attachments, some sharing one logo."""
    rng = random.Random(f"{run}-{index}")
    attachments = [(f"file-{index}-{n}.bin", rng.randbytes(rng.randint(1_000, 40_000)))
                   for n in range(index % 4)]
    if index % 5 == 1:
        attachments.append(("logo.png", SHARED_LOGO))
    return build_message(f"{run} message {index:04d}", attachments)


def large_message(subject: str, megabytes: int = 30) -> Message:
    """About `megabytes` of JSON: twenty attachments, written to GridFS one after another."""
    rng = random.Random(subject)
    each = megabytes * 1_000_000 * 3 // 4 // 20
    return build_message(subject, [(f"part-{n}.bin", rng.randbytes(each)) for n in range(20)])


@dataclass
class Answer:
    status: int | None  # None: the connection broke before an answer
    email_id: str | None = None
    duplicate: bool = False


def post_once(url: str, body: bytes) -> Answer:
    try:
        response = requests.post(f"{url}/webhook", data=body, headers={"Content-Type": "application/json"},
                                 timeout=120)
    except requests.RequestException:
        return Answer(None)
    document = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
    return Answer(response.status_code, document.get("email_id"), bool(document.get("duplicate")))


def deliver(url: str, body: bytes) -> list[Answer]:
    """ImprovMX's behaviour: retry any non-2xx answer, twice."""
    answers = []
    for _ in range(ATTEMPTS):
        answers.append(post_once(url, body))
        if answers[-1].status in (200, 202):
            break
        time.sleep(RETRY_PAUSE)
    return answers


def acknowledged(answers: list[Answer]) -> Answer | None:
    return next((a for a in answers if a.status in (200, 202)), None)


# --- checks -------------------------------------------------------------------------------

def wait_for_empty_spool(deployment: Deployment, spool_dir: Path | None = None, timeout: float = 120) -> None:
    spool_dir = spool_dir or deployment.spool_dir
    deadline = time.monotonic() + timeout
    while list(spool_dir.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(p.name for p in spool_dir.glob("*.json"))
    assert not left, f"still spooled: {left[:5]}...\n{deployment.log()[-3000:]}"


def assert_spool_clean(spool_dir: Path) -> None:
    """No corrupt or half-written files: only the replay lock and the large-body slots
    (admission.py) may remain."""
    leftovers = sorted(p.name for p in spool_dir.iterdir()) if spool_dir.exists() else []
    slots = {SLOT_NAME.format(n) for n in range(len(leftovers))}
    assert set(leftovers) <= {".replay.lock"} | slots, leftovers


def stored_by_subject(database) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for document in database.emails.find({}, {"subject": 1}):
        found.setdefault(document["subject"], []).append(document)
    return found


def downloaded_sha256(url: str, email_id: str) -> list[str]:
    """Every attachment and inline of a message, fetched through the API and hashed."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    detail = requests.get(f"{url}/emails/{email_id}", headers=auth, timeout=60)
    assert detail.status_code == 200, detail.text
    email = detail.json()["email"]
    digests = []
    for part in email["attachments"] + email["inlines"]:
        response = requests.get(f"{url}{part['url']}", headers=auth, timeout=120)
        assert response.status_code == 200, response.text
        digests.append(hashlib.sha256(response.content).hexdigest())
    return sorted(digests)


def referenced_blobs(database) -> set:
    referenced = set()
    for document in database.emails.find({}, {"blob_ids": 1}):
        referenced.update(document["blob_ids"])
    return referenced


def assert_every_part_present(database) -> None:
    """No visible message lacks a part (orphans, which only cost space, may exist)."""
    files = {f["_id"] for f in database["blobs.files"].find({}, {"_id": 1})}
    assert referenced_blobs(database) <= files


def assert_gridfs_consistent(database) -> None:
    """Every chunk belongs to a file entry and every file entry to a message."""
    files = {f["_id"] for f in database["blobs.files"].find({}, {"_id": 1})}
    owners = set(database["blobs.chunks"].distinct("files_id"))
    assert owners <= files, f"{len(owners - files)} partial upload(s) left"
    referenced = referenced_blobs(database)
    assert files == referenced, f"{len(files - referenced)} orphan blob(s), {len(referenced - files)} missing"


# --- workers seen from /proc --------------------------------------------------------------

def worker_pids(master_pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat_fields[1]) == master_pid:
                children.add(int(entry))
    return children


def workers_serving(master_pid: int, port: int) -> set[int]:
    """Workers holding an established connection on the server port (a request in progress)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    serving = set()
    for pid in worker_pids(master_pid):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") in inodes:
                    serving.add(pid)
            except OSError:
                continue
    return serving


def wait_for_serving_worker(deployment: Deployment, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving = workers_serving(deployment.web.proc.pid, deployment.web.port)
        if len(serving) == 1:
            return serving.pop()
        time.sleep(0.02)
    raise AssertionError("no single worker is serving the upload")


class RawUpload:
    """One POST /webhook over a plain socket, so the test decides when each byte is sent."""

    def __init__(self, port: int, body: bytes):
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")

    def send(self, start: int, end: int | None = None) -> bool:
        try:
            self.sock.sendall(self.body[start:end])
            return True
        except OSError:
            return False

    def status(self) -> int | None:
        """The answer's status, or None when the connection broke first."""
        received = b""
        try:
            while b"\r\n" not in received:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
        if not received.startswith(b"HTTP/1.1 "):
            return None
        return int(received.split(b" ", 2)[1])


# --- the tests ----------------------------------------------------------------------------

def test_durability_fault_mongodb_killed_and_restarted_under_steady_load(deploy):
    """500 distinct messages at ~16/s; SecantusDB is SIGKILLed, kept down, restarted.

    Every 25th message is delivered a second time after its 2xx, as ImprovMX does when our
    answer reaches it too late: spooled or not, it must still be stored once.
    """
    deployment = deploy(workers=3)
    run = f"fault-{os.getpid()}-{time.monotonic_ns()}"
    messages = [small_message(run, index) for index in range(500)]
    rate, outage_at, outage_seconds = 16.0, 150, 8.0
    results: dict[int, list[Answer]] = {}
    redeliveries: dict[int, list[Answer]] = {}
    outage_started = threading.Event()
    during_outage: dict[str, int] = {}

    def outage():
        outage_started.wait()
        deployment.kill_database()
        try:
            time.sleep(outage_seconds / 2)
            during_outage["readyz"] = requests.get(f"{deployment.url}/readyz", timeout=30).status_code
            during_outage["healthz"] = requests.get(f"{deployment.url}/healthz", timeout=30).status_code
            during_outage["spooled"] = len(list(deployment.spool_dir.glob("*.json")))
            time.sleep(outage_seconds / 2)
        finally:
            deployment.start_database()

    def send(index: int):
        results[index] = deliver(deployment.url, messages[index].body)
        if index % 25 == 0:
            redeliveries[index] = deliver(deployment.url, messages[index].body)

    injector = threading.Thread(target=outage)
    injector.start()
    with ThreadPoolExecutor(max_workers=32) as pool:
        started = time.monotonic()
        for index in range(len(messages)):
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
            if index == outage_at:
                outage_started.set()
            pool.submit(send, index)
    injector.join()

    # Every message got a 2xx within ImprovMX's three attempts, and nothing answered 500.
    deliveries = list(results.values()) + list(redeliveries.values())
    assert len(results) == len(messages) and len(redeliveries) == len(messages) // 25
    assert [answers for answers in deliveries if acknowledged(answers) is None] == []
    statuses = Counter(answer.status for answers in deliveries for answer in answers)
    assert set(statuses) <= {200, 202, 503, None}, statuses
    assert statuses[202] > 0, f"the outage spooled nothing, so it tested nothing: {statuses}"
    assert during_outage["readyz"] == 503 and during_outage["healthz"] == 200
    assert during_outage["spooled"] > 0
    assert "unhandled error" not in deployment.log()

    wait_for_empty_spool(deployment)
    assert_spool_clean(deployment.spool_dir)
    with deployment.mongo() as mongo:
        database = mongo[DB_NAME]
        stored = stored_by_subject(database)
        assert {subject: len(docs) for subject, docs in stored.items() if len(docs) != 1} == {}
        assert sorted(stored) == sorted(m.subject for m in messages)
        for index, answers in results.items():
            answer = acknowledged(answers)
            stored_id = str(stored[messages[index].subject][0]["_id"])
            answered_on_first_attempt = answers.index(answer) == 0
            if answer.status == 200 or (answered_on_first_attempt and index not in redeliveries):
                assert stored_id == answer.email_id, (index, answers)
        assert_every_part_present(database)

    def verify(message: Message) -> None:
        email_id = str(stored[message.subject][0]["_id"])
        assert downloaded_sha256(deployment.url, email_id) == message.attachment_sha256, message.subject

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(verify, messages))


def test_durability_crash_worker_mid_upload_and_database_after_acknowledgement(deploy):
    """kill -9 a worker while a 30 MB message is arriving, then while its attachments are
    being written to GridFS; then kill -9 the database right after an acknowledged write."""
    deployment = deploy(workers=2)
    run = f"crash-{os.getpid()}-{time.monotonic_ns()}"
    large = large_message(f"{run} large")
    port = deployment.web.port
    mongo = deployment.mongo()
    database = mongo[DB_NAME]
    try:
        # Attempt 1: the worker dies with half the body received.
        upload = RawUpload(port, large.body)
        assert upload.send(0, len(large.body) // 2)
        os.kill(wait_for_serving_worker(deployment), signal.SIGKILL)
        upload.send(len(large.body) // 2)
        assert upload.status() is None

        # Attempt 2: the worker dies after writing some attachments, before the message.
        files_before = database["blobs.files"].count_documents({})
        upload = RawUpload(port, large.body)
        sender = threading.Thread(target=upload.send, args=(0,))
        sender.start()
        deadline = time.monotonic() + 60
        while database["blobs.files"].count_documents({}) < files_before + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(wait_for_serving_worker(deployment), signal.SIGKILL)
        sender.join()
        assert upload.status() is None
        assert database.emails.count_documents({"subject": large.subject}) == 0
        assert database["blobs.files"].count_documents({}) >= files_before + 3

        # Attempt 3 (ImprovMX's last): stored once, reusing the blobs attempt 2 left.
        final = post_once(deployment.url, large.body)
        assert final.status == 200 and final.duplicate is False
        assert downloaded_sha256(deployment.url, final.email_id) == large.attachment_sha256
        for digest in set(large.attachment_sha256):
            assert database["blobs.files"].count_documents({"metadata.sha256": digest}) == 1

        # Kill the database right after an acknowledged write, with more messages in flight;
        # it comes back on the same data directory a few seconds later.
        smalls = [small_message(run, index) for index in range(40)]
        results: dict[int, list[Answer]] = {}
        acknowledged_count = 0
        killed = threading.Event()
        lock = threading.Lock()

        def send(index: int):
            nonlocal acknowledged_count
            results[index] = deliver(deployment.url, smalls[index].body)
            with lock:
                if results[index][-1].status == 200:
                    acknowledged_count += 1
                if acknowledged_count == 10 and not killed.is_set():
                    deployment.kill_database()
                    killed.set()
                    restart.start()

        restart = threading.Timer(4, deployment.start_database)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(send, range(len(smalls))))
        restart.join()
        assert killed.is_set()
        assert all(acknowledged(answers) for answers in results.values()), results
        wait_for_empty_spool(deployment)
        assert_spool_clean(deployment.spool_dir)

        stored = stored_by_subject(database)
        assert {subject: len(docs) for subject, docs in stored.items() if len(docs) != 1} == {}
        assert sorted(stored) == sorted([large.subject] + [m.subject for m in smalls])
        for message in smalls:
            email_id = str(stored[message.subject][0]["_id"])
            assert downloaded_sha256(deployment.url, email_id) == message.attachment_sha256
        assert downloaded_sha256(deployment.url, final.email_id) == large.attachment_sha256

        # What the crashes left goes, nothing referenced does. A kill in the middle of one
        # attachment's chunk write leaves chunks without a file entry: one is added here, as
        # the kill above may or may not land inside such a write.
        cut_short = ObjectId.from_datetime(datetime.now(timezone.utc) - timedelta(minutes=1))
        database["blobs.chunks"].insert_one({"files_id": cut_short, "n": 0, "data": b"cut short"})
        _, partial_uploads = collect_orphans(Archive(database), grace=timedelta(0))
        assert partial_uploads >= 1
        assert_gridfs_consistent(database)
        assert downloaded_sha256(deployment.url, final.email_id) == large.attachment_sha256
    finally:
        mongo.close()


def test_durability_sigterm_lets_an_in_flight_upload_finish(deploy):
    """systemd stops the service (SIGTERM to gunicorn's master) mid-upload: the upload still
    completes with 200, the message is stored, and gunicorn exits cleanly afterwards."""
    deployment = deploy(workers=2)
    large = large_message(f"shutdown-{os.getpid()}-{time.monotonic_ns()} large")
    upload = RawUpload(deployment.web.port, large.body)
    assert upload.send(0, len(large.body) // 2)
    wait_for_serving_worker(deployment)

    os.kill(deployment.web.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60  # the second half goes only once the shutdown has begun
    while "Handling signal: term" not in deployment.log():
        assert time.monotonic() < deadline, deployment.log()[-3000:]
        time.sleep(0.05)
    assert upload.send(len(large.body) // 2)
    assert upload.status() == 200
    assert deployment.web.proc.wait(timeout=60) == 0
    assert "unhandled error" not in deployment.log()

    with deployment.mongo() as mongo:
        database = mongo[DB_NAME]
        document = database.emails.find_one({"subject": large.subject})
        archive = Archive(database)
        digests = []
        for position in range(len(document["attachments"])):
            _, stream = archive.part(str(document["_id"]), position=position)
            digests.append(hashlib.sha256(b"".join(stream.chunks)).hexdigest())
        assert sorted(digests) == large.attachment_sha256


def test_durability_two_hosts_spool_the_same_messages_and_replay_them_once(deploy):
    """ImprovMX's retries of one message can land on two hosts behind the load balancer.
    Here both hosts start while MongoDB (a fresh one: no indexes yet) is down, both spool
    every message, and both replay at once when it comes up: each is stored once."""
    deployment = deploy(workers=2, database_up=False)
    other_spool = deployment.tmp / "spool-other-host"
    other_url = f"http://127.0.0.1:{deployment.start_host(other_spool).port}"
    run = f"hosts-{os.getpid()}-{time.monotonic_ns()}"
    messages = [small_message(run, index) for index in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda message: (post_once(deployment.url, message.body),
                                                 post_once(other_url, message.body)), messages))
    assert {(first.status, second.status) for first, second in answers} == {(202, 202)}
    assert len(list(deployment.spool_dir.glob("*.json"))) == len(list(other_spool.glob("*.json"))) == 20
    deployment.start_database()

    wait_for_empty_spool(deployment)
    wait_for_empty_spool(deployment, other_spool)
    assert_spool_clean(deployment.spool_dir)
    assert_spool_clean(other_spool)
    with deployment.mongo() as mongo:
        stored = stored_by_subject(mongo[DB_NAME])
    assert {subject: len(docs) for subject, docs in stored.items()} == {m.subject: 1 for m in messages}
    for message, (first, second) in zip(messages, answers):
        email_id = str(stored[message.subject][0]["_id"])
        assert email_id in (first.email_id, second.email_id)
        assert downloaded_sha256(other_url, email_id) == message.attachment_sha256
