"""`python -m bench.search`: the search figure (issue 12), on a fresh SecantusDB.

    .venv/bin/python -m bench.search --sizes 1000,10000,50000      # query latency and plans
    .venv/bin/python -m bench.search --sizes "" --ingest ba61774 2f0bed5   # ingest cost, before/after

Queries: the archive is seeded through the app's own ingest (bench/seed.py), the background
indexer's work is timed on what the seeding left pending, then each query of QUERIES is sent
over HTTP to gunicorn (no background thread) `--reps` times; p50/p95 per size, and explain()
of the exact filter and hint Archive.list_page uses. Ingest: the same messages stored by
Archive.ingest in-process, on a fresh server per round, by the code at two commits (each
checked out in a temporary git worktree), rounds alternating.
Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from . import seed as seeding
from .harness import API_KEY, Bench, Client, auth, median, percentile, spread

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FIGURE = "search"
_DEPTH = re.compile(r"depth \d+")


def queries(sample: dict) -> list[tuple[str, dict]]:
    """The query set; `sample` holds values read from the seeded data (one message's)."""
    return [
        ("rare word (one message's subject number)", {"q": sample["number"]}),
        ("message-id:", {"q": f"message-id:{sample['message_id']}"}),
        ("from: a sender with ~1% of mail", {"q": "from:user17"}),
        ("from: the busiest sender (~17%)", {"q": f"from:{seeding.TOP_SENDER}"}),
        ("word in most bodies: invoice", {"q": "invoice"}),
        ("word, count=false", {"q": "invoice", "count": "false"}),
        ("phrase \"quarterly report\"", {"q": '"quarterly report"'}),
        ("prefix invoi*", {"q": "invoi*"}),
        ("negation acme -invoice", {"q": "acme -invoice"}),
        ("field + flag: subject:acme has:attachment", {"q": "subject:acme has:attachment"}),
        ("q + to= parameter", {"q": "acme", "to": seeding.TOP_ALIAS}),
        ("no q (newest first)", {}),
    ]


def _sample(uri: str, db: str) -> dict:
    from pymongo import MongoClient

    client = MongoClient(uri)
    try:
        document = client[db].emails.find_one({"subject": {"$regex": "^Invoice [0-9]+ from"}},
                                              {"subject": 1, "message-id": 1})
    finally:
        client.close()
    return {"number": document["subject"].split()[1], "message_id": document["message-id"]}


def _index_pending(uri: str, db: str) -> dict:
    """Run the background indexer's work in this process over what seeding left pending."""
    from pymongo import MongoClient

    from improvmx_archive.archive import Archive
    from improvmx_archive.indexer import SearchIndexer

    client = MongoClient(uri, tz_aware=True)
    try:
        archive = Archive(client[db])
        archive.ensure_indexes()
        started = time.perf_counter()
        indexed = SearchIndexer(archive).index_pending()
        seconds = time.perf_counter() - started
        tokens = list(client[db].emails.aggregate([{"$project": {"n": {"$size": {"$ifNull": ["$tokens", []]}}}},
                                                   {"$group": {"_id": None, "avg": {"$avg": "$n"},
                                                               "max": {"$max": "$n"}}}]))
        vocabulary = client[db].search_terms.estimated_document_count()
    finally:
        client.close()
    return {"indexed": indexed, "seconds": round(seconds, 1),
            "per_s": round(indexed / seconds, 1) if seconds else None,
            "tokens_per_message": {"avg": round(tokens[0]["avg"], 1), "max": tokens[0]["max"]} if tokens else None,
            "vocabulary": vocabulary}


def _explain(uri: str, db: str, cases: list[tuple[str, dict]]) -> dict:
    from pymongo import MongoClient

    from improvmx_archive.archive import Archive, index_hint
    from improvmx_archive.listing import parse_filters

    client = MongoClient(uri, tz_aware=True)
    out = {}
    try:
        archive = Archive(client[db])
        for name, params in cases:
            query = archive.filter_for(parse_filters(params))
            plan = archive.page_cursor(query, 0, 11).explain()
            stats = plan.get("executionStats") or {}
            out[name] = {"filter": json.loads(json.dumps(query, default=str)), "hint": index_hint(query),
                         "plan": seeding._plan_summary((plan.get("queryPlanner") or {}).get("winningPlan")),
                         "keys_examined": stats.get("totalKeysExamined"),
                         "docs_examined": stats.get("totalDocsExamined"), "returned": stats.get("nReturned")}
    finally:
        client.close()
    return out


def _deep_cursor(client: Client, params: dict, depth: int) -> str | None:
    """The cursor after `depth` messages, walked 100 at a time."""
    cursor = None
    for _ in range(depth // 100):
        reply = client.request("GET", "/emails?" + urlencode({**params, "limit": 100, "count": "false",
                                                              **({"cursor": cursor} if cursor else {})}),
                               headers=auth()).json()
        cursor = reply.get("next")
        if cursor is None:
            return None
    return cursor


def _measure(port: int, cases: list[tuple[str, dict]], reps: int) -> dict:
    client = Client(port, timeout=900)
    out = {}
    try:
        for name, params in cases:
            samples, body = [], {}
            for rep in range(reps + 1):
                reply = client.request("GET", "/emails?" + urlencode({"limit": 10, **params}), headers=auth())
                body = reply.json()
                if reply.status != 200:
                    raise RuntimeError(f"{name}: HTTP {reply.status} {body}")
                if rep:
                    samples.append(reply.seconds)
            out[name] = {"n": len(samples), "p50_ms": round(percentile(samples, 50) * 1000, 1),
                         "p95_ms": round(percentile(samples, 95) * 1000, 1), "total": body.get("total"),
                         "count": body.get("count")}
    finally:
        client.close()
    return out


def query_figure(bench: Bench, sizes: list[int], reps: int, seed_value: int, log) -> dict:
    db = bench.db_name("ours", FIGURE)
    results, seeded = {}, 0
    for size in sizes:
        started = time.perf_counter()
        seeding.seed(bench.mongo_uri, db, None, API_KEY, seed_value, seeded, size, bench.workdir)
        log(f"seeded {seeded}..{size} in {time.perf_counter() - started:.0f}s")
        seeded = size
        indexing = _index_pending(bench.mongo_uri, db)
        log(f"indexed {indexing['indexed']} in {indexing['seconds']}s ({indexing['per_s']}/s)")
        cases = queries(_sample(bench.mongo_uri, db))
        with bench.running(("ours",), FIGURE) as servers:
            port = servers["ours"].port
            measured = _measure(port, cases, reps)
            depth = min(2000, size // 2)  # N in the tables: half the archive, at most 2,000
            client = Client(port, timeout=900)
            deep = _deep_cursor(client, {"q": "the"}, depth)
            client.close()
            paging = _measure(port, [(f"the, page at depth {depth} by skip", {"q": "the", "skip": depth}),
                                     (f"the, page at depth {depth} by cursor", {"q": "the", "cursor": deep}),
                                     ("the, first page", {"q": "the"})], reps)
        worst = max(measured.values(), key=lambda v: v["p95_ms"])
        log(f"@{size}: worst p95 {worst['p95_ms']} ms")
        results[str(size)] = {"indexing": indexing, "queries": measured, "paging": paging}
    results["explain"] = _explain(bench.mongo_uri, db, cases)
    return results


_INGEST_CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, os.environ["CODE_ROOT"])
os.environ.update({"RATELIMIT_ENABLED": "false", "SPOOL_DIR": tempfile.mkdtemp(), "LOG_LEVEL": "WARNING",
                   "BACKGROUND_TASKS": "false"})
from improvmx_archive import create_app
payloads = json.load(open(os.environ["PAYLOADS"]))
archive = create_app().extensions["archive"]
archive.ensure_indexes()
archive.ingest(payloads[0])
started = time.perf_counter()
for payload in payloads[1:]:
    archive.ingest(payload)
print(json.dumps({"per_s": (len(payloads) - 1) / (time.perf_counter() - started)}))
"""


def ingest_figure(bench: Bench, commits: list[str], count: int, rounds: int, seed_value: int, log) -> dict:
    """Messages/s of Archive.ingest (sequential, in-process) by the code at each of two commits."""
    pool = seeding.templates(seed_value)
    payloads = [seeding.seeded_payload(seed_value, i, pool)[0] for i in range(count + 1)]
    payload_file = bench.workdir / "ingest-payloads.json"
    payload_file.write_text(json.dumps(payloads))
    checkouts = {}
    for commit in commits:
        checkouts[commit] = Path(tempfile.mkdtemp(prefix=f"search-bench-{commit}-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(checkouts[commit]), commit],
                       check=True, capture_output=True)
    rates: dict[str, list[float]] = {commit: [] for commit in commits}
    try:
        for rnd in range(rounds):
            for commit in commits if rnd % 2 == 0 else list(reversed(commits)):
                bench.reset()  # a fresh server: SecantusDB's costs grow with what it holds
                env = {**os.environ, "CODE_ROOT": str(checkouts[commit]), "PAYLOADS": str(payload_file),
                       "MONGO_URI": bench.mongo_uri, "MONGO_DB": f"{bench.db_prefix}_ingest", "API_KEY": API_KEY}
                done = subprocess.run([sys.executable, "-c", _INGEST_CHILD], env=env, check=True,
                                      capture_output=True, text=True, cwd=str(checkouts[commit]))
                rates[commit].append(json.loads(done.stdout.strip().splitlines()[-1])["per_s"])
                log(f"ingest round {rnd} {commit}: {rates[commit][-1]:.0f} msg/s")
    finally:
        for checkout in checkouts.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                           capture_output=True)
    before, after = (median(rates[commit]) for commit in commits)
    return {"commits": commits, "messages": count, "rounds": rounds,
            "per_s": {commit: spread(values) for commit, values in rates.items()},
            "second_over_first": round(after / before, 3)}


def render(results: dict) -> str:
    """The markdown tables BENCHMARKS.md shows, from a results file."""
    lines: list[str] = []
    figure = results.get("queries") or {}
    sizes = [key for key in figure if key.isdigit()]
    if sizes:
        lines += ["| indexing (background pass, in-process) | " + " | ".join(f"{int(s):,} msgs" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        lines.append("| messages/s | " + " | ".join(str(figure[s]["indexing"]["per_s"]) for s in sizes) + " |")
        lines.append("| tokens per message, avg (max) | " + " | ".join(
            f"{figure[s]['indexing']['tokens_per_message']['avg']} ({figure[s]['indexing']['tokens_per_message']['max']})"
            for s in sizes) + " |")
        lines.append("| vocabulary (search_terms) | " + " | ".join(
            f"{figure[s]['indexing']['vocabulary']:,}" for s in sizes) + " |")
        lines += ["", "| query (limit 10) | " + " | ".join(f"p50 / p95 ms @{int(s):,} (total)" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        rows = {size: {_DEPTH.sub("depth N", name): row
                       for name, row in {**figure[size]["queries"], **figure[size]["paging"]}.items()}
                for size in sizes}
        for name in rows[sizes[0]]:
            cells = ["–" if rows[size].get(name) is None else
                     f"{rows[size][name]['p50_ms']:,} / {rows[size][name]['p95_ms']:,} ({rows[size][name]['total']})"
                     for size in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| query | filter MongoDB gets | hint | winning plan (SecantusDB explain) | keys / docs examined |",
                  "|---|---|---|---|---|"]
        for name, entry in figure["explain"].items():
            shown = json.dumps(entry["filter"], ensure_ascii=False).replace("|", "\\|")
            lines.append(f"| {name} | `{shown}` | {entry['hint'] or '–'} | {entry['plan']} | "
                         f"{entry['keys_examined']} / {entry['docs_examined']} |")
    ingest = results.get("ingest")
    if ingest:
        first, second = ingest["commits"]
        lines += ["", f"| Archive.ingest, {ingest['messages']} small messages, {ingest['rounds']} rounds | "
                      "median msg/s | min–max |", "|---|---|---|"]
        for commit in (first, second):
            rate = ingest["per_s"][commit]
            lines.append(f"| {commit} | {rate['median']:.0f} | {rate['min']:.0f}–{rate['max']:.0f} |")
        lines.append(f"| {second} / {first} | {ingest['second_over_first']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000", help="archive sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=20, help="measured repetitions per query")
    parser.add_argument("--ingest", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="also compare Archive.ingest at two commits")
    parser.add_argument("--ingest-count", type=int, default=1500)
    parser.add_argument("--ingest-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "search.json")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON", help="only render saved results")
    args = parser.parse_args(argv)
    if args.report:
        for path in args.report:
            print(render(json.loads(path.read_text())) + "\n")
        return 0
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="improvmx-bench-search-"))
    bench = Bench(workdir=workdir, db_prefix="improvmx_bench")
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seed": args.seed}
    try:
        bench.start_database()
        if args.sizes:
            results["queries"] = query_figure(bench, [int(s) for s in args.sizes.split(",")], args.reps, args.seed, log)
        if args.ingest:
            results["ingest"] = ingest_figure(bench, args.ingest, args.ingest_count, args.ingest_rounds,
                                              args.seed, log)
        results["seconds"] = round(time.time() - started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(render(results))
        log(f"done: {args.out}")
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
