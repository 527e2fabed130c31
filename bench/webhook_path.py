"""Worker and database CPU of the webhook path alone, and of search indexing, per small message.

    .venv/bin/python -m bench.webhook_path                                  # ours, original
    .venv/bin/python -m bench.webhook_path --systems ours,before,original --before /tmp/old
    .venv/bin/python -m bench.webhook_path --systems ours,no-tombstone-check,no-request-hooks
    .venv/bin/python -m bench.webhook_path --indexing                       # the background pass

Unlike bench.costs (the default 5 workers with their background threads, as deployed), one
gunicorn worker with BACKGROUND_TASKS=false on a fresh SecantusDB per system and round, the
order rotating: utime + stime of the worker and of the server around 500 small deliveries
from 2 senders. Probe systems are bench/probe_app.py (the archive with one part switched
off), for finding where the CPU goes. `--indexing` stores 300 messages in-process and times
one SearchIndexer.index_pending() over them: the indexing thread's CPU and the server's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import harness
from .corpus import Corpus
from .costs import CostBench, process_tree, total_cpu
from .harness import send_all, worker_pids

RESULTS = Path(__file__).resolve().parent / "results"
PROBES = ("no-tombstone-check", "no-request-hooks")
for _probe in PROBES:
    harness.APP_SPECS.setdefault(_probe, "bench.probe_app:app")


def webhook_path(args) -> None:
    corpus = Corpus(RESULTS / "corpus", args.seed)
    bodies = corpus.messages("webhook-path-small", "small", args.count).bodies()
    warm = corpus.messages("cpu-warm-small", "small", 20).bodies()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    measured: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="bench-webhook-path-") as workdir:
        bench = CostBench(Path(workdir), workers=1, db_prefix="path")
        bench.before_tree = args.before.resolve() if args.before else None
        bench.start_database()
        try:
            for rnd in range(args.rounds):
                order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
                for system in order:
                    bench.reset()
                    env = {"PROBE": system} if system in PROBES else {}
                    with bench.running((system,), "path", workers=1, **env) as servers:
                        server = servers[system]
                        send_all(server.port, warm, 2)
                        workers, database = worker_pids(server), process_tree(bench.database.proc.pid)
                        w0, d0 = total_cpu(workers), total_cpu(database)
                        sent = send_all(server.port, bodies, 2)
                        w1, d1 = total_cpu(workers), total_cpu(database)
                    row = ((w1 - w0) / sent["ok"] * 1000, (d1 - d0) / sent["ok"] * 1000)
                    measured[system].append(row)
                    print(f"r{rnd} {system:20} worker {row[0]:.2f} ms, database {row[1]:.2f} ms per message "
                          f"({sent['ok']} stored, load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            bench.close()
    for system, rows in measured.items():
        worker, database = [r[0] for r in rows], [r[1] for r in rows]
        print(f"{system:20} worker {statistics.median(worker):.2f} ({min(worker):.2f}-{max(worker):.2f}) ms, "
              f"database {statistics.median(database):.2f} ({min(database):.2f}-{max(database):.2f}) ms")


def indexing(args) -> None:
    from devtools.processes import mongo_uri, secantus

    with tempfile.TemporaryDirectory(prefix="bench-indexing-") as workdir:
        server = secantus(Path(workdir) / "data")
        server.start(timeout=60)
        try:
            os.environ.update(MONGO_URI=mongo_uri(server.port), MONGO_DB="indexing", API_KEY=harness.API_KEY,
                              RATELIMIT_ENABLED="false", BACKGROUND_TASKS="false", LOG_LEVEL="WARNING",
                              SPOOL_DIR=str(Path(workdir) / "spool"), PROMETHEUS_MULTIPROC_DIR=workdir)
            from improvmx_archive import create_app
            from improvmx_archive.indexer import SearchIndexer

            app = create_app()
            client = app.test_client()
            for body in Corpus(RESULTS / "corpus", args.seed).messages("cpu-small", "small", 300).bodies():
                assert client.post("/webhook", data=body, content_type="application/json").status_code == 200
            database = process_tree(server.proc.pid)
            time.sleep(1)
            d0, t0 = total_cpu(database), time.thread_time()
            done = SearchIndexer(app.extensions["archive"]).index_pending()
            t1, d1 = time.thread_time(), total_cpu(database)
            print(f"indexed {done}: indexing thread {(t1 - t0) / done * 1000:.2f} ms, "
                  f"database {(d1 - d0) / done * 1000:.2f} ms per message")
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="ours,original",
                        help=f"ours, original, naive, before (with --before), {', '.join(PROBES)}")
    parser.add_argument("--before", type=Path, metavar="TREE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--indexing", action="store_true", help="measure the search-indexing pass instead")
    args = parser.parse_args(argv)
    if args.indexing:
        indexing(args)
    else:
        webhook_path(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
