"""Profile one workload with py-spy: where a worker's request time goes, and the database's CPU.

    .venv/bin/python -m bench.profile ingest-attach            # the archive (default)
    .venv/bin/python -m bench.profile ingest-attach --system naive
    .venv/bin/python -m bench.profile list --size 20000
    .venv/bin/python -m bench.profile download

Starts SecantusDB and one gunicorn worker of the chosen system, runs the workload with one
sender while `py-spy record` samples the worker (idle stacks included, so time waiting for
the database shows up as socket reads) and the database server (CPU only), then prints the
functions holding the most samples, self and inclusive. Raw stacks (py-spy's collapsed
format, loadable in speedscope) and the summaries are written to bench/results/profiles/.
py-spy samples time, not memory: memory figures come from `python -m bench --only memory,download`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .corpus import MB, Corpus
from .harness import API_KEY, Bench, Client, auth, send_all, worker_pids

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("ingest-small", "ingest-attach", "ingest-huge", "list", "download")


def _py_spy(pid: int, out: Path, idle: bool, rate: int = 250) -> subprocess.Popen:
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not exe:
        raise SystemExit("py-spy is not installed: pip install -r bench/requirements.txt")
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out), "--rate", str(rate),
            "--nonblocking"]
    if idle:
        argv.append("--idle")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _frame_name(frame: str) -> str:
    """'encode (pymongo/message.py:123)' -> 'encode (pymongo/message.py)'."""
    if frame.endswith(")") and ":" in frame:
        head, _, _line = frame[:-1].rpartition(":")
        return head + ")"
    return frame


def summarise(raw: Path, focus: str | None, top: int = 18) -> str:
    """Self and inclusive sample counts per function from py-spy's raw output."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        if focus and not any(focus in f for f in frames):
            continue
        stacks.append((frames, int(count)))
    total = sum(count for _, count in stacks)
    if not total:
        return f"{raw.name}: no samples" + (f" containing {focus!r}" if focus else "")
    own, inclusive = Counter(), Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{raw.name}: {total} samples" + (f" inside {focus}" if focus else ""), "", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 12)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--system", default="ours", choices=("ours", "naive", "original", "ceiling"))
    parser.add_argument("--cpu-only", action="store_true",
                        help="sample the worker's CPU only (no idle stacks): where its CPU per message goes")
    parser.add_argument("--count", type=int, default=30, help="messages to send (ingest workloads)")
    parser.add_argument("--size", type=int, default=20_000, help="messages stored (list workload)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--mongo-uri")
    parser.add_argument("--out", type=Path, default=RESULTS / "profiles")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(RESULTS / "corpus", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="improvmx-profile-"))
    bench = Bench(workdir=workdir, mongo_uri=args.mongo_uri, db_prefix="improvmx_bench_profile")
    tag = f"{args.workload}-{args.system}"
    try:
        bench.start_database()
        figure = tag.replace("-", "_")
        if args.workload == "list":
            from . import seed as seeding
            seeding.seed(bench.mongo_uri, bench.db_name("ours", figure), bench.db_name("naive", figure), API_KEY,
                         args.seed, 0, args.size, workdir)
        download_id = None
        if args.workload == "download":
            body = corpus.one("download-40mb", "single", size=40 * MB).read_bytes()
            with bench.running((args.system,), figure, workers=1) as servers:
                download_id = Client(servers[args.system].port).request("POST", "/webhook", body).json()["email_id"]
        with bench.running((args.system,), figure, workers=1) as servers:
            server = servers[args.system]
            worker = worker_pids(server)[0]
            client = Client(server.port)
            headers = auth() if args.system == "ours" else {}
            if args.workload.startswith("ingest-"):
                kind = args.workload.split("-", 1)[1]
                bodies = corpus.messages(f"profile-{kind}", kind, args.count).bodies()
                send_all(server.port, corpus.messages("warmup", "small", 4).bodies(), 1)
            spies = [(_py_spy(worker, args.out / f"{tag}-worker.raw", idle=not args.cpu_only), "worker",
                      None if args.cpu_only else "full_dispatch_request")]
            if bench.database is not None:
                spies.append((_py_spy(bench.database.proc.pid, args.out / f"{tag}-db.raw", idle=False), "db", None))
            started = time.perf_counter()
            if args.workload.startswith("ingest-"):
                result = send_all(server.port, bodies, 1)
                print(f"sent {len(bodies)}: ok={result['ok']} failed={result['failed']}", file=sys.stderr)
            elif args.workload == "list":
                for _ in range(5):
                    for params in ("", "from_email=user0@sender0.example.com", "processed=false",
                                   "subject=invoice", "skip=5000"):
                        client.request("GET", f"/emails?limit=10&{params}", headers=headers)
            elif args.workload == "download":
                for _ in range(3):
                    client.request("GET", f"/emails/{download_id}/attachments/0", headers=headers, sink=True)
            elapsed = time.perf_counter() - started
            for proc, _name, _focus in spies:
                _stop(proc)
        print(f"workload took {elapsed:.2f}s", file=sys.stderr)
        for _proc, name, focus in spies:
            raw = args.out / f"{tag}-{name}.raw"
            if raw.exists():
                text = summarise(raw, focus)
                (args.out / f"{tag}-{name}.txt").write_text(text + "\n")
                print(text + "\n")
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
