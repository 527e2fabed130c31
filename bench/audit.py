"""`python -m bench.audit`: what the audit trail costs on list and message reads.

Two gunicorns from the same code on one database server, measured in the same run with
rounds alternating between them: `audited` is the archive as shipped (every GET /emails and
GET /emails/<id> writes a chained entry, durable, before it answers); `unaudited` is the same
app with the entry write replaced by nothing (`unaudited_app()` below, for this bench only).
Each round sends GET /emails?limit=10 or GET /emails/<id> from N keep-alive clients for a
fixed time and reports requests/s, p50 and p95. The audited server's chain is verified at
the end (every entry there, none forked).

    flock /tmp/bench.lock .venv/bin/python -m bench.audit [--seconds 10] [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from devtools.processes import gunicorn_serving

from .harness import Bench, Client, auth, median, percentile

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGES = 300
SYSTEMS = {"audited": "app:app", "unaudited": "bench.audit:unaudited_app()"}


def unaudited_app():
    """The archive with its audit write turned into nothing: the baseline of this bench."""
    from improvmx_archive import create_app
    from improvmx_archive.access import audit

    audit.record = lambda *args, **kwargs: None
    return create_app()


def _payload(number: int) -> bytes:
    return json.dumps({
        "from": {"email": f"sender{number % 17}@example.org", "name": "Sender"},
        "to": [{"email": "support@archive.test", "name": ""}], "subject": f"Message {number}",
        "text": "Hello " * 40, "html": f"<p>{'Hello ' * 40}</p>", "headers": {}, "attachments": [], "inlines": [],
    }).encode()


def _load(port: int, paths: list[str], clients: int, seconds: float) -> dict:
    """GET paths (round robin per client) from `clients` threads for `seconds`."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run(offset: int) -> None:
        client, mine, bad, turn = Client(port), [], 0, offset
        try:
            while time.perf_counter() < stop:
                reply = client.request("GET", paths[turn % len(paths)], headers=auth())
                turn += 1
                if reply.status == 200:
                    mine.append(reply.seconds)
                else:
                    bad += 1
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                failures[0] += bad

    threads = [threading.Thread(target=run, args=(n * 7,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "failed": failures[0], "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p95_ms": round(percentile(latencies, 95) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mongo-uri", help="a real MongoDB instead of a fresh SecantusDB")
    parser.add_argument("--out", type=Path, default=RESULTS / "audit.json")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    bench = Bench(workdir, mongo_uri=args.mongo_uri, db_prefix="improvmx_bench_audit")
    results: dict[str, dict[str, list[dict]]] = {name: {"list": [], "message": []} for name in SYSTEMS}
    try:
        bench.start_database()
        env = bench.env("shared", "audit")  # one database: both read the same messages
        servers = {}
        for name, spec in SYSTEMS.items():
            server = gunicorn_serving(spec, env, workdir / f"{name}.log",
                                      extra_args=bench.gunicorn_args(args.workers))
            server.start(timeout=60)
            bench.servers.append(server)
            servers[name] = server
        for server in servers.values():
            deadline = time.monotonic() + 60
            while Client(server.port).request("GET", "/readyz").status != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready:\n{server.log_text()}")
                time.sleep(0.2)
        seeder = Client(servers["audited"].port)
        ids = [seeder.request("POST", "/webhook", _payload(n)).json()["email_id"] for n in range(MESSAGES)]
        seeder.close()
        random.Random(16).shuffle(ids)
        workloads = {"list": ["/emails?limit=10", "/emails?limit=10&count=false"],
                     "message": [f"/emails/{email_id}" for email_id in ids]}
        for name, server in servers.items():  # warm-up
            _load(server.port, workloads["list"] + workloads["message"][:20], args.clients, 2)
        for round_number in range(args.rounds):
            order = list(SYSTEMS) if round_number % 2 == 0 else list(reversed(SYSTEMS))
            for workload, paths in workloads.items():
                for name in order:
                    row = _load(servers[name].port, paths, args.clients, args.seconds)
                    results[name][workload].append(row)
                    print(f"round {round_number + 1} {workload:7} {name:9} {row['rps']:7.1f} req/s  "
                          f"p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  failed {row['failed']}",
                          flush=True)
        from pymongo import MongoClient

        from improvmx_archive.access.audit import AuditTrail
        with MongoClient(bench.mongo_uri, tz_aware=True) as mongo:
            report = AuditTrail(mongo[env["MONGO_DB"]]).verify()
            audited_requests = sum(row["requests"] for rows in results["audited"].values() for row in rows)
            chain = {"verified": report.ok, "entries": report.checked, "problem": str(report.problem or "")}
    finally:
        bench.close()
    summary = {}
    for workload in ("list", "message"):
        figures = {name: {"rps": median([r["rps"] for r in results[name][workload]]),
                          "p50_ms": median([r["p50_ms"] for r in results[name][workload]]),
                          "p95_ms": median([r["p95_ms"] for r in results[name][workload]])} for name in SYSTEMS}
        figures["cost"] = {"rps_ratio": round(figures["audited"]["rps"] / figures["unaudited"]["rps"], 3),
                           "p50_added_ms": round(figures["audited"]["p50_ms"] - figures["unaudited"]["p50_ms"], 2)}
        summary[workload] = figures
        print(f"{workload}: audited {figures['audited']['rps']} req/s p50 {figures['audited']['p50_ms']} ms; "
              f"unaudited {figures['unaudited']['rps']} req/s p50 {figures['unaudited']['p50_ms']} ms; "
              f"ratio {figures['cost']['rps_ratio']}, +{figures['cost']['p50_added_ms']} ms p50")
    print(f"chain after the run: {chain} (audited requests answered: {audited_requests})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "summary": summary,
                                    "chain": chain, "rounds": results}, indent=2))
    return 0 if chain["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
