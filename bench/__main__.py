"""`python -m bench`: the whole benchmark in one command (see BENCHMARKS.md).

    .venv/bin/python -m bench --quick        # a couple of minutes: proves the suite works
    .venv/bin/python -m bench                # the published run (~35 min on 2 cores)
    .venv/bin/python -m bench --mongo-uri mongodb://host:27017/   # a real MongoDB instead

Writes bench/results/latest.json (every figure, with per-round values) and
bench/results/latest.md (the tables pasted into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import figures, report
from .corpus import Corpus
from .harness import Bench, drop_bench_databases, environment_facts

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = ("ingest", "memory", "burst", "queries", "storage", "download")
DB_PREFIX = "improvmx_bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: a sanity run of a few minutes")
    parser.add_argument("--mongo-uri", help="use this MongoDB instead of starting SecantusDB "
                        f"(databases named {DB_PREFIX}_* are dropped and recreated)")
    parser.add_argument("--seed", type=int, default=6, help="corpus seed (default 6)")
    parser.add_argument("--rounds", type=int, help="override the number of ingest rounds")
    parser.add_argument("--workers", type=int,
                        help="gunicorn workers for every system (default: what gunicorn.conf.py says)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--corpus-dir", type=Path, help="corpus cache (default <out>/corpus)")
    parser.add_argument("--keep", action="store_true", help="keep the database files and logs of this run")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only re-render the markdown tables of a saved results file (e.g. latest.json)")
    args = parser.parse_args(argv)
    if args.report:
        print(report.render(json.loads(args.report.read_text())))
        return 0

    plan = figures.QUICK if args.quick else figures.FULL
    if args.rounds:
        plan.rounds = args.rounds
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(args.corpus_dir or args.out / "corpus", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="improvmx-bench-"))
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _interrupt)  # clean up the servers on kill, as on Ctrl-C
    bench = Bench(workdir=workdir, mongo_uri=args.mongo_uri, workers=args.workers, db_prefix=DB_PREFIX)
    results: dict = {"plan": plan.name, "seed": args.seed, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "figures": {}, "errors": {}}
    try:
        uri = bench.start_database()
        log(f"database at {uri if args.mongo_uri is None else '(given)'}; work dir {workdir}")
        _drop_bench_databases(uri)
        results["machine"] = environment_facts(uri)
        results["machine"]["database"] = "MongoDB (--mongo-uri)" if args.mongo_uri else "SecantusDB over a loopback socket"
        results["machine"]["workers"] = args.workers or "gunicorn.conf.py default"
        for position, name in enumerate(selected):
            log(f"--- figure: {name}")
            if position:
                bench.reset()
            try:
                if name == "ingest":
                    results["figures"][name] = figures.ingest(bench, corpus, plan, log)
                elif name == "memory":
                    results["figures"][name] = figures.memory(bench, corpus, plan, log)
                elif name == "burst":
                    results["figures"][name] = figures.burst(bench, corpus, plan, log)
                elif name == "queries":
                    results["figures"][name] = figures.queries(bench, plan, log, args.seed)
                elif name == "storage":
                    results["figures"][name] = figures.wire_and_storage(bench, corpus, plan, log)
                elif name == "download":
                    results["figures"][name] = figures.download(bench, corpus, plan, log)
            except Exception:  # noqa: BLE001 - report the others, then fail the run
                results["errors"][name] = traceback.format_exc()
                log(f"figure {name} FAILED:\n{results['errors'][name]}")
            _write(args.out, results)  # partial results survive an interrupted run
        results["seconds"] = round(time.time() - started)
        _write(args.out, results)
        markdown = report.render(results)
        (args.out / "latest.md").write_text(markdown)
        print(markdown)
        log(f"done in {results['seconds']}s: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    finally:
        if args.mongo_uri and not args.keep:
            _drop_bench_databases(args.mongo_uri)
        bench.close()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results["errors"] else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _drop_bench_databases(uri: str) -> None:
    drop_bench_databases(uri, DB_PREFIX)


def _write(out: Path, results: dict) -> None:
    path = out / "latest.json"
    path.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
