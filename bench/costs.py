"""CPU and memory per message, read from the processes' own counters (issue 19, items 15-16).

    .venv/bin/python -m bench.costs                    # 3 rounds, small and attach mail
    .venv/bin/python -m bench.costs --rounds 5 --small 400 --attach 60
    .venv/bin/python -m bench.costs --only memory

**CPU.** For every round, message class (small, attach) and system (ours, naive, original),
in an order that rotates from round to round: a fresh SecantusDB (new process, new data
directory), gunicorn as gunicorn.conf.py configures it, warm-up deliveries, then a quiet
window to learn each side's idle rate. Then the messages are POSTed by a few sender
threads, and the CPU of the gunicorn workers (utime + stime of every worker process,
threads included, from /proc/<pid>/stat) and of the database server process is read
before and after: the **request** window. The archive then keeps working without any
request (search indexing in the workers' background thread, its reads and writes in the
database), so the counters are read again once both sides have gone back to their idle
rate: the **after** window. Each figure is CPU milliseconds per stored message; the idle
rate times the window's length is reported beside it and subtracted in the "net" columns
(the archive's idle workers poll for mail to index every SEARCH_INDEX_INTERVAL).

**Memory.** One worker per system on a fresh database: RSS, PSS and USS
(/proc/<pid>/smaps_rollup) right after boot and after one small delivery (idle), then VmHWM
reset and one ~12 MB delivery: the peak. And with the default number of workers, the
same idle figures for every worker, since shared pages (preload_app) count fully in each
worker's RSS but only once in the sum of their PSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from devtools.processes import ManagedProcess, gunicorn_serving

from . import harness
from .corpus import MB, Corpus
from .harness import Bench, Client, environment_facts, proc_status, reset_peak, send_all, worker_pids

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("ours", "naive", "original")
# `--before TREE`: the archive as it was in another source tree (e.g. `git archive <commit>`),
# measured in the same run as a fourth system, so before and after share machine and load.
BEFORE = "before"
harness.APP_SPECS.setdefault(BEFORE, "app:app")
CLASSES = ("small", "attach")
TICK = os.sysconf("SC_CLK_TCK")
QUIET_WINDOW = 3.0  # longer than the archive's 2 s indexing poll, so a window always holds one
SETTLE_LIMIT = 90.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def total_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def process_tree(pid: int) -> list[int]:
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


@dataclass
class Sides:
    """The processes whose counters are read: the gunicorn workers, the database server."""
    workers: list[int]
    database: list[int]

    def read(self) -> tuple[float, float, float]:
        return time.monotonic(), total_cpu(self.workers), total_cpu(self.database)


def idle_rate(sides: Sides, seconds: float = QUIET_WINDOW) -> tuple[float, float]:
    """CPU seconds per second of each side with no request in flight."""
    t0, w0, d0 = sides.read()
    time.sleep(seconds)
    t1, w1, d1 = sides.read()
    return (w1 - w0) / (t1 - t0), (d1 - d0) / (t1 - t0)


def settle(sides: Sides, idle: tuple[float, float], limit: float = SETTLE_LIMIT) -> float:
    """Wait until both sides are back near their idle rate (a quiet window of QUIET_WINDOW);
    returns how long that took. Bounded: a side that never settles is reported as such."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        worker_rate, db_rate = idle_rate(sides)
        if worker_rate <= idle[0] + 0.02 and db_rate <= idle[1] + 0.02:
            return time.monotonic() - started
    return -1.0


class CostBench(Bench):
    """Bench whose `before` system is the archive served from another source tree."""

    before_tree: Path | None = None

    def start(self, system: str, figure: str, workers: int | None = None, **env: str) -> ManagedProcess:
        if system != BEFORE:
            return super().start(system, figure, workers, **env)
        server = gunicorn_serving(harness.APP_SPECS[BEFORE], self.env(system, figure, **env),
                                  log_path=self.workdir / "logs" / f"{figure}-{system}.log",
                                  extra_args=self.gunicorn_args(workers) + ["--chdir", str(self.before_tree)])
        server.start(timeout=60)
        self.servers.append(server)
        harness._wait_ready(server)
        return server


def measure_cpu(bench: Bench, system: str, bodies: list[bytes], warmups: list[bytes],
                concurrency: int, workers: int | None) -> dict:
    bench.reset()  # a fresh SecantusDB for every system, class and round
    # The archive indexes new mail for search in its workers' background thread: measured too.
    extra = {"BACKGROUND_TASKS": "true"} if system in ("ours", BEFORE) else {}
    with bench.running((system,), "cpu", workers=workers, **extra) as servers:
        server = servers[system]
        warm = send_all(server.port, warmups, concurrency)
        sides = Sides(worker_pids(server), process_tree(bench.database.proc.pid))
        settle(sides, (0.05, 0.05), limit=30)
        idle = idle_rate(sides, 2 * QUIET_WINDOW)
        t0, w0, d0 = sides.read()
        sent = send_all(server.port, bodies, concurrency)
        t1, w1, d1 = sides.read()
        settled = settle(sides, idle)
        t2, w2, d2 = sides.read()
        alive = all(psutil.pid_exists(pid) for pid in sides.workers)
    stored = sent["ok"]
    per = (lambda seconds: seconds / stored * 1000) if stored else (lambda seconds: None)
    return {
        "stored": stored, "failed": sent["failed"], "warmup_ok": warm["ok"],
        "outcomes": sorted(set(sent["outcomes"])), "workers": len(sides.workers), "workers_survived": alive,
        "request_seconds": round(t1 - t0, 3), "after_seconds": round(t2 - t1, 3), "settled": settled >= 0,
        "idle_worker_cpu_per_s": round(idle[0], 4), "idle_db_cpu_per_s": round(idle[1], 4),
        "worker_ms": per(w1 - w0), "db_ms": per(d1 - d0),
        "worker_after_ms": per(w2 - w1), "db_after_ms": per(d2 - d1),
        "worker_net_ms": per(w1 - w0 - idle[0] * (t1 - t0)), "db_net_ms": per(d1 - d0 - idle[1] * (t1 - t0)),
        "worker_after_net_ms": per(w2 - w1 - idle[0] * (t2 - t1)),
        "db_after_net_ms": per(d2 - d1 - idle[1] * (t2 - t1)),
        "msg_per_s": stored / (t1 - t0),
    }


def cpu_figure(bench: Bench, corpus: Corpus, args, log) -> dict:
    counts = {"small": args.small, "attach": args.attach}
    sets = {kind: corpus.messages(f"cpu-{kind}", kind, counts[kind]).bodies() for kind in CLASSES}
    warm = {kind: corpus.messages(f"cpu-warm-{kind}", kind, args.warmup).bodies() for kind in CLASSES}
    rounds: list[dict] = []
    systems = [s for s in (*SYSTEMS, BEFORE) if s in args.systems]
    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for kind in CLASSES:
            for system in order:
                row = measure_cpu(bench, system, sets[kind], warm[kind], args.concurrency, args.workers)
                row.update(round=rnd, kind=kind, system=system, load=os.getloadavg()[0])
                rounds.append(row)
                log(f"cpu r{rnd} {kind:6} {system:8} stored {row['stored']}/{len(sets[kind])} "
                    f"workers {_f(row['worker_ms'])} ms/msg (+{_f(row['worker_after_ms'])} after), "
                    f"db {_f(row['db_ms'])} ms/msg (+{_f(row['db_after_ms'])} after), "
                    f"{row['msg_per_s']:.1f} msg/s, load {row['load']:.2f}")
    summary = {}
    for kind in CLASSES:
        for system in systems:
            mine = [r for r in rounds if r["kind"] == kind and r["system"] == system]
            summary[f"{kind}/{system}"] = {
                key: _spread([r[key] for r in mine if r[key] is not None])
                for key in ("worker_ms", "db_ms", "worker_after_ms", "db_after_ms", "worker_net_ms", "db_net_ms",
                            "worker_after_net_ms", "db_after_net_ms", "msg_per_s", "idle_worker_cpu_per_s",
                            "idle_db_cpu_per_s", "load")
            } | {"stored": sum(r["stored"] for r in mine), "failed": sum(r["failed"] for r in mine)}
    return {"counts": counts, "concurrency": args.concurrency, "rounds": rounds, "summary": summary}


# ---------------------------------------------------------------- memory

def smaps(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of a process, in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                values[parts[0][:-1]] = int(parts[1]) * 1024
    return {"rss": values.get("Rss", 0), "pss": values.get("Pss", 0),
            "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


def booted_workers(server: ManagedProcess, expected: int, timeout: float = 60.0) -> list[int]:
    """The worker pids once all `expected` workers have loaded the app (_wait_ready returns
    when the first answers): each holds clearly more memory of its own than a fresh fork of
    the master (which shares all of its pages) and has stopped growing."""
    deadline = time.monotonic() + timeout
    previous: dict[int, int] = {}
    while time.monotonic() < deadline:
        current = {pid: smaps(pid)["uss"] for pid in worker_pids(server)}
        if len(current) == expected and all(uss > 4 * MB and abs(uss - previous.get(pid, 0)) < MB // 4
                                            for pid, uss in current.items()):
            return list(current)
        previous = current
        time.sleep(0.5)
    raise RuntimeError(f"{server.name}: not all {expected} workers booted within {timeout:.0f} s")


def default_workers() -> int:
    """What gunicorn.conf.py starts without WEB_CONCURRENCY: 2 x cores + 1."""
    return 2 * len(os.sched_getaffinity(0)) + 1


def memory_figure(bench: Bench, corpus: Corpus, args, log) -> dict:
    raw = int(args.large_mb * MB * 3 / 4 * 76 / 77)  # base64 in 76-column lines: JSON ~= payload
    large = corpus.messages(f"costs-{args.large_mb}mb", "single", args.memory_rounds, size=raw).bodies()
    systems = [s for s in (*SYSTEMS, BEFORE) if s in args.systems]
    small = corpus.messages("costs-memory-warm", "small", args.memory_rounds * len(systems) * 2).bodies()
    rows: list[dict] = []
    for rnd in range(args.memory_rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for position, system in enumerate(order):
            bench.reset()
            # One worker: its idle and peak figures.
            with bench.running((system,), "memory", workers=1) as servers:
                server = servers[system]
                pid = worker_pids(server)[0]
                booted = smaps(pid)
                client = Client(server.port)
                client.request("POST", "/webhook", small[(rnd * len(systems) + position) * 2])
                idle = smaps(pid)
                reset = reset_peak(pid)
                reply = client.request("POST", "/webhook", large[rnd])
                peak = proc_status(pid)["VmHWM"]
                client.close()
            # The default number of workers: what each one and all of them hold when idle.
            with bench.running((system,), "memory", workers=args.workers) as servers:
                server = servers[system]
                pids = booted_workers(server, args.workers or default_workers())
                send_all(server.port, [small[(rnd * len(systems) + position) * 2 + 1]], 1)
                each = [smaps(p) for p in pids]
                master = smaps(server.proc.pid)
            row = {"round": rnd, "system": system, "payload": len(large[rnd]), "peak_reset": reset,
                   "status": reply.status, "stored": reply.status == 200 and reply.json().get("success") is True,
                   "booted": booted, "idle": idle, "peak_rss": peak,
                   "workers": len(pids), "workers_rss": sum(e["rss"] for e in each),
                   "workers_pss": sum(e["pss"] for e in each), "workers_uss": sum(e["uss"] for e in each),
                   "master": master}
            rows.append(row)
            log(f"memory r{rnd} {system:8} booted rss {booted['rss'] / MB:.1f} / pss {booted['pss'] / MB:.1f} MiB, "
                f"idle rss {idle['rss'] / MB:.1f} / pss {idle['pss'] / MB:.1f} / uss {idle['uss'] / MB:.1f} MiB, "
                f"peak {peak / MB:.1f} MiB for {len(large[rnd]) / MB:.1f} MiB (http {reply.status}); "
                f"{len(pids)} workers: rss {row['workers_rss'] / MB:.0f} pss {row['workers_pss'] / MB:.0f} "
                f"uss {row['workers_uss'] / MB:.0f} MiB")
    summary = {}
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        summary[system] = {
            "booted_rss_mib": _spread([r["booted"]["rss"] / MB for r in mine]),
            "idle_rss_mib": _spread([r["idle"]["rss"] / MB for r in mine]),
            "idle_pss_mib": _spread([r["idle"]["pss"] / MB for r in mine]),
            "idle_uss_mib": _spread([r["idle"]["uss"] / MB for r in mine]),
            "peak_rss_mib": _spread([r["peak_rss"] / MB for r in mine]),
            "payload_mib": round(mine[0]["payload"] / MB, 1),
            "stored": sum(r["stored"] for r in mine), "attempts": len(mine),
            "workers": mine[0]["workers"],
            "workers_rss_mib": _spread([r["workers_rss"] / MB for r in mine]),
            "workers_pss_mib": _spread([r["workers_pss"] / MB for r in mine]),
            "workers_uss_mib": _spread([r["workers_uss"] / MB for r in mine]),
            # What the service holds: every worker's share and the master's (which holds the
            # code the workers share, when it does).
            "service_pss_mib": _spread([(r["workers_pss"] + r["master"]["pss"]) / MB for r in mine]),
        }
    return {"rounds": rows, "summary": summary}


# ---------------------------------------------------------------- report

def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _spread(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _cell(spread: dict, digits: int = 2) -> str:
    if spread["median"] is None:
        return "–"
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def render(result: dict) -> str:
    lines = [f"### CPU and memory per message: {result['started']}, {result['seconds']:.0f} s", ""]
    env = result["environment"]
    lines += [f"Machine: {env['cpu']}, {env['nproc']} cores, {env['ram_gib']} GiB, kernel {env['kernel']}, "
              f"Python {env['python']}, SecantusDB {env['secantusdb']}, git {env['git_head']}. "
              f"Load average (1 min) at the start {result['load_start']:.2f}, at the end {result['load_end']:.2f}.", ""]
    if "cpu" in result:
        cpu = result["cpu"]
        lines += [f"CPU ms per stored message, median of {result['args']['rounds']} rounds (min–max); "
                  f"{cpu['counts']['small']} small / {cpu['counts']['attach']} attach messages per round, "
                  f"{cpu['concurrency']} senders. 'request' = while the messages were sent; 'after' = from the "
                  "last answer until both sides were back at their idle rate; 'net' subtracts the idle rate.", "",
                  "| class | system | workers, request | workers, after | database, request | database, after "
                  "| workers net (req + after) | database net (req + after) | msg/s | stored / failed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, row in cpu["summary"].items():
            kind, system = key.split("/")
            mine = [r for r in cpu["rounds"] if r["kind"] == kind and r["system"] == system]
            worker_net = _spread([r["worker_net_ms"] + r["worker_after_net_ms"] for r in mine if r["stored"]])
            db_net = _spread([r["db_net_ms"] + r["db_after_net_ms"] for r in mine if r["stored"]])
            lines.append(f"| {kind} | {system} | {_cell(row['worker_ms'])} | {_cell(row['worker_after_ms'])} | "
                         f"{_cell(row['db_ms'])} | {_cell(row['db_after_ms'])} | {_cell(worker_net)} | "
                         f"{_cell(db_net)} | {_cell(row['msg_per_s'], 1)} | {row['stored']} / {row['failed']} |")
        lines.append("")
    if "memory" in result:
        memory = result["memory"]
        lines += ["Memory, MiB, median of the rounds (min–max). One worker: RSS right after boot, RSS/PSS/USS "
                  "after one small delivery (idle), peak RSS (VmHWM) while storing the large message. "
                  "Default workers: the sum over every worker after one delivery; service PSS adds the master's.", "",
                  "| system | booted RSS | idle RSS | idle PSS | idle USS | peak RSS (payload) | stored "
                  "| workers | all workers RSS | all workers PSS | all workers USS | service PSS |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for system, row in memory["summary"].items():
            lines.append(f"| {system} | {_cell(row['booted_rss_mib'], 1)} | {_cell(row['idle_rss_mib'], 1)} | "
                         f"{_cell(row['idle_pss_mib'], 1)} | {_cell(row['idle_uss_mib'], 1)} | "
                         f"{_cell(row['peak_rss_mib'], 1)} ({row['payload_mib']}) | {row['stored']}/{row['attempts']} | "
                         f"{row['workers']} | {_cell(row['workers_rss_mib'], 0)} | {_cell(row['workers_pss_mib'], 0)} | "
                         f"{_cell(row['workers_uss_mib'], 0)} | {_cell(row.get('service_pss_mib') or _spread([]), 0)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=300, help="small messages per round")
    parser.add_argument("--attach", type=int, default=40, help="messages with attachments per round")
    parser.add_argument("--warmup", type=int, default=20, help="deliveries before the counters are read")
    parser.add_argument("--concurrency", type=int, default=4, help="sender threads")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py)")
    parser.add_argument("--memory-rounds", type=int, default=3)
    parser.add_argument("--large-mb", type=int, default=12, help="size of the large message (JSON MiB)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"any of {', '.join(SYSTEMS)} and {BEFORE} (with --before)")
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="source tree of the archive to measure as the 'before' system, e.g. from "
                             "`git archive <commit> | tar -x -C TREE`")
    parser.add_argument("--only", default="cpu,memory", help="cpu, memory or both")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, metavar="JSON", help="only print the tables of a saved result")
    args = parser.parse_args(argv)
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return 0
    args.systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if args.before and BEFORE not in args.systems:
        args.systems += (BEFORE,)
    if BEFORE in args.systems and not args.before:
        parser.error("the 'before' system needs --before TREE")
    selected = {s.strip() for s in args.only.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(args.out / "corpus", args.seed)
    started = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {text}", flush=True)

    result: dict = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                             if k not in ("out", "report")},
                    "load_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as workdir:
        bench = CostBench(Path(workdir), workers=args.workers, db_prefix="costs")
        bench.before_tree = args.before.resolve() if args.before else None
        try:
            bench.start_database()
            result["environment"] = environment_facts(bench.mongo_uri)
            if "cpu" in selected:
                result["cpu"] = cpu_figure(bench, corpus, args, log)
            if "memory" in selected:
                result["memory"] = memory_figure(bench, corpus, args, log)
        finally:
            bench.close()
    result["seconds"] = time.time() - started
    result["load_end"] = os.getloadavg()[0]
    result["args"]["systems"] = list(args.systems)
    (args.out / "costs-latest.json").write_text(json.dumps(result, indent=1, default=str))
    text = render(result)
    (args.out / "costs-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
