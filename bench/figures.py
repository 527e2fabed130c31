"""The six figures of the benchmark (issue 6). Each returns a JSON-serialisable summary."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

import pymongo

from . import seed as seeding
from .corpus import MB, Corpus, describe
from .harness import (API_KEY, Bench, Client, RssSampler, auth, median, percentile, proc_status, reset_peak,
                      send_all, spread, worker_pids)

SYSTEMS = ("ours", "naive", "ceiling")
CLASSES = ("small", "attach", "huge")
BSON_LIMIT = 16 * MB
Log = Callable[[str], None]


@dataclass
class Plan:
    """How much of everything to run: `quick` proves the suite works, `full` publishes."""

    name: str
    rounds: int
    ingest_counts: dict[str, dict[int, int]]
    memory_rounds: int
    query_sizes: tuple[int, ...]
    query_reps: int
    naive_query_sizes: tuple[int, ...]
    naive_query_reps: int
    storage_counts: dict[str, int]
    download_rounds: int
    concurrencies: tuple[int, ...] = (1, 8)
    memory_payload: int = 50 * MB
    burst_sizes: tuple[int, ...] = (1, 4, 16)
    download_sizes: tuple[int, ...] = (40 * MB, 10 * MB)
    query_warmup: int = 1
    query_budget: float = 180.0  # seconds of measuring per database size, see _measure_queries
    seed_processes: int = 2


QUICK = Plan(
    name="quick", rounds=2,
    ingest_counts={"small": {1: 20, 8: 40}, "attach": {1: 5, 8: 8}, "huge": {1: 1, 8: 2}},
    memory_rounds=1, query_sizes=(1000, 3000), query_reps=8, naive_query_sizes=(1000,), naive_query_reps=2,
    storage_counts={"small": 20, "attach": 10, "repeated": 12}, download_rounds=1,
)
FULL = Plan(
    name="full", rounds=3,
    ingest_counts={"small": {1: 100, 8: 200}, "attach": {1: 24, 8: 48}, "huge": {1: 3, 8: 8}},
    memory_rounds=3, query_sizes=(1000, 10_000, 100_000), query_reps=40,
    naive_query_sizes=(1000, 10_000), naive_query_reps=3,
    storage_counts={"small": 100, "attach": 30, "repeated": 40}, download_rounds=3,
)


def _latency_summary(samples: list[float]) -> dict:
    return {"n": len(samples), "p50_ms": _ms(percentile(samples, 50)), "p95_ms": _ms(percentile(samples, 95)),
            "p99_ms": _ms(percentile(samples, 99)), "max_ms": _ms(max(samples) if samples else None)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ------------------------------------------------------------------ 1. ingest

def ingest(bench: Bench, corpus: Corpus, plan: Plan, log: Log) -> dict:
    """Messages/s and latency per size class at 1 and 8 concurrent senders, all three systems,
    the same messages, rounds interleaved (the system order rotates every round)."""
    sets = {}
    for rnd in range(plan.rounds):
        for conc in plan.concurrencies:
            for cls in CLASSES:
                sets[(rnd, conc, cls)] = corpus.messages(f"ingest-r{rnd}-c{conc}-{cls}", cls,
                                                         plan.ingest_counts[cls][conc])
    log(f"ingest corpus ready: {describe(list(sets.values()))}")
    runs: dict[tuple, list[dict]] = defaultdict(list)
    warm = corpus.messages("warmup", "small", 8).bodies()
    for rnd in range(plan.rounds):
        # Every round starts from an empty database server: on SecantusDB the cost of some of
        # the archive's operations grows with the bytes already stored (see BENCHMARKS.md), and
        # unbounded growth over the rounds took the server past the machine's memory.
        if rnd:
            bench.reset()
        order = SYSTEMS[rnd % 3:] + SYSTEMS[:rnd % 3]
        with bench.running(SYSTEMS, f"ingest_r{rnd}") as servers:
            for system in SYSTEMS:
                send_all(servers[system].port, warm, 4)
            for conc in plan.concurrencies:
                for cls in CLASSES:
                    message_set = sets[(rnd, conc, cls)]
                    bodies, sizes = message_set.bodies(), message_set.sizes
                    for system in order:
                        result = send_all(servers[system].port, bodies, conc)
                        result["sizes"] = sizes
                        runs[(system, cls, conc)].append(result)
                        log(f"ingest r{rnd} c{conc} {cls:6} {system:7} {len(bodies) / result['wall']:8.2f} msg/s "
                            f"ok={result['ok']} failed={result['failed']} {sorted(set(result['outcomes']))}")
                    del bodies
    table = {}
    for (system, cls, conc), results in runs.items():
        stored_rates = [r["ok"] / r["wall"] for r in results]
        mb_rates = [sum(s for s, o in zip(r["sizes"], r["outcomes"]) if o == "ok") / MB / r["wall"] for r in results]
        latencies = [lat for r in results for lat in r["latencies"]]
        outcomes = [o for r in results for o in r["outcomes"]]
        big = [o for r in results for s, o in zip(r["sizes"], r["outcomes"]) if s > BSON_LIMIT]
        errors = sorted({o for o in outcomes if o != "ok"})
        table[f"{system}/{cls}/c{conc}"] = {
            "system": system, "class": cls, "concurrency": conc,
            "messages_per_round": len(results[0]["outcomes"]), "rounds": len(results),
            "stored_per_s": spread(stored_rates), "stored_mib_per_s": spread(mb_rates),
            "latency": _latency_summary(latencies),
            "stored": outcomes.count("ok"), "failed": len(outcomes) - outcomes.count("ok"), "errors": errors,
            "spooled": outcomes.count("http 202"),
            "stored_per_round": [r["ok"] for r in results],
            "over_16mb_sent": len(big), "over_16mb_stored": big.count("ok"),
        }
    ratios = {}
    for cls in CLASSES:
        for conc in plan.concurrencies:
            ours = table[f"ours/{cls}/c{conc}"]["stored_per_s"]["median"]
            naive = table[f"naive/{cls}/c{conc}"]["stored_per_s"]["median"]
            ceiling = table[f"ceiling/{cls}/c{conc}"]["stored_per_s"]["median"]
            ratios[f"{cls}/c{conc}"] = {
                "ours_vs_naive": round(ours / naive, 2) if naive else None,
                "ours_vs_ceiling": round(ours / ceiling, 2) if ceiling else None,
            }
    return {"corpus": describe(list(sets.values())), "table": table, "ratios": ratios}


# ------------------------------------------------------------------ 2. memory

def memory(bench: Bench, corpus: Corpus, plan: Plan, log: Log) -> dict:
    """Peak RSS of the only worker while it ingests one ~50 MB payload (fresh gunicorn each time)."""
    raw = int(plan.memory_payload * 3 / 4 * 76 / 77)  # base64 in 76-column lines: JSON ~= payload size
    messages = corpus.messages(f"memory-{plan.memory_payload // MB}mb", "single", plan.memory_rounds, size=raw)
    warmups = corpus.messages("memory-warmup", "small", plan.memory_rounds * len(SYSTEMS))
    rows = defaultdict(list)
    for rnd in range(plan.memory_rounds):
        body = messages.paths[rnd].read_bytes()
        for position, system in enumerate(SYSTEMS):
            with bench.running((system,), "memory", workers=1) as servers:
                server = servers[system]
                client = Client(server.port)
                client.request("POST", "/webhook", warmups.paths[rnd * len(SYSTEMS) + position].read_bytes())
                if system == "ours":
                    client.request("GET", "/emails?limit=1", headers=auth())
                pid = worker_pids(server)[0]
                baseline = proc_status(pid)["VmRSS"]
                reset = reset_peak(pid)
                with RssSampler(pid) as sampler:
                    reply = client.request("POST", "/webhook", body)
                status = proc_status(pid)
                client.close()
            row = {"payload": len(body), "baseline_rss": baseline, "peak_rss": status["VmHWM"],
                   "sampled_peak_rss": sampler.peak, "peak_reset": reset, "status": reply.status,
                   "stored": reply.status == 200 and reply.json().get("success") is True,
                   "seconds": round(reply.seconds, 2)}
            rows[system].append(row)
            log(f"memory r{rnd} {system:7} payload {len(body) / MB:.1f} MiB: baseline {baseline / MB:.0f} MiB, "
                f"peak {status['VmHWM'] / MB:.0f} MiB ({status['VmHWM'] / len(body):.2f}x), http {reply.status}")
    out = {}
    for system, measured in rows.items():
        out[system] = {
            "payload_mib": round(measured[0]["payload"] / MB, 1),
            "baseline_rss_mib": round(median([r["baseline_rss"] for r in measured]) / MB, 1),
            "peak_rss_mib": round(median([r["peak_rss"] for r in measured]) / MB, 1),
            "peak_over_payload": spread([r["peak_rss"] / r["payload"] for r in measured]),
            "growth_over_payload": spread([(r["peak_rss"] - r["baseline_rss"]) / r["payload"] for r in measured]),
            "stored": sum(r["stored"] for r in measured), "attempts": len(measured),
            "seconds": median([r["seconds"] for r in measured]),
            "rounds": measured,
        }
    return out


def burst(bench: Bench, corpus: Corpus, plan: Plan, log: Log) -> dict:
    """Peak RSS of all workers together while N ~50 MB deliveries arrive at once, with the
    large-body slots on (the default, 2 per host) and off: the sizing rule's evidence."""
    raw = int(plan.memory_payload * 3 / 4 * 76 / 77)
    count = max(plan.burst_sizes)
    messages = corpus.messages(f"burst-{plan.memory_payload // MB}mb", "single", count, size=raw)
    bodies = [path.read_bytes() for path in messages.paths]
    out: dict = {"payload_mib": round(len(bodies[0]) / MB, 1), "rows": []}
    for slots in ("2", "0"):
        for concurrency in plan.burst_sizes:
            with bench.running(("ours",), f"burst{slots}x{concurrency}", LARGE_BODY_SLOTS=slots) as servers:
                server = servers["ours"]
                warm = Client(server.port)
                warm.request("GET", "/emails?limit=1", headers=auth())
                warm.close()
                pids = worker_pids(server)
                baseline = sum(proc_status(pid)["VmRSS"] for pid in pids)
                with RssSampler(*pids) as sampler:
                    sent = send_all(server.port, bodies[:concurrency], concurrency)
            row = {"slots": int(slots), "concurrency": concurrency, "workers": len(pids),
                   "baseline_mib": round(baseline / MB, 1), "peak_mib": round(sampler.peak / MB, 1),
                   "growth_mib": round((sampler.peak - baseline) / MB, 1),
                   "stored": sent["ok"], "seconds": round(sent["wall"], 1),
                   "slowest_s": round(max(sent["latencies"]), 1)}
            out["rows"].append(row)
            log(f"burst slots={slots} n={concurrency}: peak {row['peak_mib']} MiB over {len(pids)} workers "
                f"(+{row['growth_mib']} MiB), stored {row['stored']}/{concurrency} in {row['seconds']} s")
    return out


# ------------------------------------------------------------------ 3. queries

def query_cases() -> list[tuple[str, dict]]:
    base = {
        "none": {},
        "from_email": {"from_email": seeding.TOP_SENDER},
        "to": {"to": seeding.TOP_ALIAS},
        "subject": {"subject": seeding.SUBJECT_WORD},
        "since/until": {"since": seeding.WINDOW[0], "until": seeding.WINDOW[1]},
        "processed=true": {"processed": "true"},
        "processed=false": {"processed": "false"},
        "has_attachments": {"has_attachments": "true"},
    }
    return [(f"{name} skip={skip}", {**params, "limit": 10, "skip": skip})
            for skip in (0, 5000) for name, params in base.items()]


def _measure_queries(port: int, cases, reps: int, warmup: int, headers: dict, naive: bool,
                     budget: float) -> dict:
    """Every case once per pass, passes repeated `reps` times; after `budget` seconds, stop
    once every case has 3 samples (a slow server then gets fewer, reported as n)."""
    client = Client(port, timeout=900)
    samples: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        for rep in range(warmup + reps):
            if rep >= warmup + 3 and time.perf_counter() - started > budget:
                break
            for name, params in cases:
                if naive and "has_attachments" in params:
                    continue
                reply = client.request("GET", "/emails?" + urlencode(params), headers=headers)
                body = reply.json()
                if rep >= warmup:
                    samples[name].append(reply.seconds)
                info[name] = {"status": reply.status, "count": body.get("count"), "total": body.get("total"),
                              "bytes": reply.size}
    finally:
        client.close()
    return {name: {**_latency_summary(values), **info[name]} for name, values in samples.items()}


def queries(bench: Bench, plan: Plan, log: Log, seed_value: int) -> dict:
    """GET /emails latency as the archive grows to 100,000 messages, per filter, skip 0 and 5,000."""
    ours_db, naive_db = bench.db_name("ours", "queries"), bench.db_name("naive", "queries")
    cases = query_cases()
    sizes: dict[int, dict] = {}
    seeded = 0
    with bench.running(("ours", "naive"), "queries") as servers:
        for size in plan.query_sizes:
            started = time.perf_counter()
            seeding.seed(bench.mongo_uri, ours_db, naive_db, API_KEY, seed_value, seeded, size,
                         bench.workdir, processes=plan.seed_processes)
            log(f"queries: seeded {seeded}..{size} in {time.perf_counter() - started:.0f}s")
            seeded = size
            entry = {"ours": _measure_queries(servers["ours"].port, cases, plan.query_reps, plan.query_warmup,
                                              auth(), naive=False, budget=plan.query_budget)}
            worst = max(entry["ours"].values(), key=lambda v: v["p95_ms"])
            log(f"queries @{size}: ours worst p95 {worst['p95_ms']} ms")
            if size in plan.naive_query_sizes:
                entry["naive"] = _measure_queries(servers["naive"].port, cases, plan.naive_query_reps, 1, {},
                                                  naive=True, budget=plan.query_budget / 2)
                log(f"queries @{size}: naive done")
            sizes[size] = entry
    explain = seeding.explain(bench.mongo_uri, ours_db, API_KEY, [(n, p) for n, p in cases], bench.workdir)
    flat = {}
    first, last = plan.query_sizes[0], plan.query_sizes[-1]
    for name in sizes[last]["ours"]:
        lo, hi = sizes[first]["ours"][name]["p95_ms"], sizes[last]["ours"][name]["p95_ms"]
        flat[name] = round(hi / lo, 2) if lo else None
    return {"sizes": {str(k): v for k, v in sizes.items()}, "growth_p95": flat,
            "growth_between": [first, last], "explain": explain,
            "filter_values": {"from_email": seeding.TOP_SENDER, "to": seeding.TOP_ALIAS,
                              "subject": seeding.SUBJECT_WORD, "since/until": list(seeding.WINDOW)}}


# ------------------------------------------------------------------ 4 + 5. wire and storage

def _db_stats(uri: str, name: str) -> dict:
    client = pymongo.MongoClient(uri)
    try:
        stats = client[name].command("dbStats")
    finally:
        client.close()
    keep = ("objects", "dataSize", "storageSize", "indexSize", "totalSize")
    out = {key: int(stats.get(key, 0)) for key in keep}
    if not out["totalSize"]:
        out["totalSize"] = out["storageSize"] + out["indexSize"]
    return out


def wire_and_storage(bench: Bench, corpus: Corpus, plan: Plan, log: Log) -> dict:
    """Bytes stored per message (dbStats) and bytes on the wire for GET /emails?limit=10."""
    out = {}
    for kind, count in plan.storage_counts.items():
        message_set = corpus.messages(f"storage-{kind}", kind, count)
        figure = f"storage_{kind}"
        entry = {"messages": count, "payload_bytes": sum(message_set.sizes)}
        with bench.running(("ours", "naive"), figure) as servers:
            bodies = message_set.bodies()
            for system in ("ours", "naive"):
                result = send_all(servers[system].port, bodies, 1)
                stats = _db_stats(bench.mongo_uri, bench.db_name(system, figure))
                client = Client(servers[system].port)
                replies = [client.request("GET", "/emails?limit=10", headers=auth() if system == "ours" else {})
                           for _ in range(3)]
                client.close()
                reply = replies[-1]
                entry[system] = {
                    "stored": result["ok"], **stats,
                    "total_per_message": round(stats["totalSize"] / max(result["ok"], 1)),
                    "list_limit10_body_bytes": reply.size, "list_limit10_header_bytes": reply.header_bytes,
                    "list_limit10_count": reply.json().get("count"), "list_status": reply.status,
                    "list_ms": _ms(median([r.seconds for r in replies])),
                }
            del bodies
        entry["storage_ratio"] = round(entry["ours"]["totalSize"] / entry["naive"]["totalSize"], 3)
        entry["wire_ratio_naive_over_ours"] = round(
            (entry["naive"]["list_limit10_body_bytes"] + entry["naive"]["list_limit10_header_bytes"])
            / (entry["ours"]["list_limit10_body_bytes"] + entry["ours"]["list_limit10_header_bytes"]), 1)
        log(f"storage {kind}: ours {entry['ours']['totalSize'] / MB:.1f} MiB, naive "
            f"{entry['naive']['totalSize'] / MB:.1f} MiB (x{entry['storage_ratio']}); list bytes "
            f"ours {entry['ours']['list_limit10_body_bytes']} naive {entry['naive']['list_limit10_body_bytes']}")
        out[kind] = entry
    return out


# ------------------------------------------------------------------ 6. download

def download(bench: Bench, corpus: Corpus, plan: Plan, log: Log) -> dict:
    """MiB/s and the worker's RSS growth while one attachment streams to a slow-reading client."""
    out = {}
    for size in plan.download_sizes:
        path = corpus.one(f"download-{size // MB}mb", "single", size=size)
        body = path.read_bytes()
        for system in ("ours", "naive"):
            key = f"{system}/{size // MB}MiB"
            figure = f"download_{size // MB}"
            with bench.running((system,), figure, workers=1) as servers:
                reply = Client(servers[system].port).request("POST", "/webhook", body)
            email_id = reply.json().get("email_id")
            if reply.status != 200 or not email_id:
                out[key] = {"stored": False, "status": reply.status, "error": reply.body[:200].decode(errors="replace")}
                log(f"download {key}: could not store ({reply.status})")
                continue
            rows = []
            for _ in range(plan.download_rounds):
                with bench.running((system,), figure, workers=1) as servers:
                    server = servers[system]
                    client = Client(server.port)
                    headers = auth() if system == "ours" else {}
                    if system == "ours":
                        client.request("GET", f"/emails/{email_id}", headers=headers)
                        client.request("GET", "/emails?limit=1", headers=headers)
                    else:
                        client.request("GET", "/emails?limit=1", headers=headers)
                    pid = worker_pids(server)[0]
                    baseline = proc_status(pid)["VmRSS"]
                    reset = reset_peak(pid)
                    with RssSampler(pid) as sampler:
                        got = client.request("GET", f"/emails/{email_id}/attachments/0", headers=headers, sink=True)
                    status = proc_status(pid)
                    client.close()
                rows.append({"bytes": got.size, "status": got.status, "seconds": got.seconds,
                             "mib_per_s": got.size / MB / got.seconds if got.seconds else None,
                             "baseline_rss": baseline, "peak_rss": status["VmHWM"], "sampled_peak_rss": sampler.peak,
                             "growth": status["VmHWM"] - baseline, "peak_reset": reset})
            out[key] = {
                "stored": True, "size_mib": size / MB, "complete": all(r["bytes"] == size for r in rows),
                "mib_per_s": spread([r["mib_per_s"] for r in rows]),
                "rss_growth_mib": spread([r["growth"] / MB for r in rows]),
                "baseline_rss_mib": round(median([r["baseline_rss"] for r in rows]) / MB, 1),
                "rounds": rows,
            }
            log(f"download {key}: {out[key]['mib_per_s']['median']:.1f} MiB/s, RSS growth "
                f"{out[key]['rss_growth_mib']['max']:.1f} MiB (max of {len(rows)})")
    return out
