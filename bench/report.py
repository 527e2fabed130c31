"""Markdown tables (for BENCHMARKS.md) from the results of one run."""

from __future__ import annotations

from .corpus import MB

KIB = 1024


def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _size(value: int) -> str:
    return f"{value / MB:,.1f} MiB" if value >= MB else f"{value / KIB:,.0f} KiB"


def _range(entry: dict, digits: int = 1) -> str:
    if not entry or entry.get("median") is None:
        return "n/a"
    return f"{_f(entry['median'], digits)} ({_f(entry['min'], digits)}–{_f(entry['max'], digits)})"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    figs = results.get("figures", {})
    rows: list[tuple[str, str, bool | None]] = []
    ingest = figs.get("ingest")
    if ingest:
        for cls, goal in (("small", 1.0), ("attach", 1.5)):
            ratios = {k: v["ours_vs_naive"] for k, v in ingest["ratios"].items() if k.startswith(cls + "/")}
            shown = ", ".join(f"{k.split('/')[1]}: {_f(v, 2)}x" for k, v in ratios.items())
            ok = all(v is not None and v >= goal for v in ratios.values())
            label = "small messages" if cls == "small" else "messages with attachments"
            rows.append((f"Ingest throughput, {label}: ≥ {goal}x naive", shown, ok))
        table = ingest["table"]
        sent = {s: sum(v["over_16mb_sent"] for v in table.values() if v["system"] == s) for s in ("ours", "naive")}
        stored = {s: sum(v["over_16mb_stored"] for v in table.values() if v["system"] == s) for s in ("ours", "naive")}
        rows.append(("Messages over 16 MB: naive fails, ours stores them all",
                     f"ours {stored['ours']}/{sent['ours']}, naive {stored['naive']}/{sent['naive']}",
                     sent["ours"] > 0 and stored["ours"] == sent["ours"] and stored["naive"] == 0))
    memory = figs.get("memory")
    if memory and "ours" in memory:
        value = memory["ours"]["peak_over_payload"]["max"]
        rows.append(("Peak worker RSS ingesting a 50 MB message: ≤ 2.5x payload",
                     f"{_f(value, 2)}x ({_f(memory['ours']['peak_rss_mib'])} MiB for "
                     f"{_f(memory['ours']['payload_mib'])} MiB; naive {_f(memory['naive']['peak_over_payload']['max'], 2)}x)"
                     if "naive" in memory else f"{_f(value, 2)}x", value <= 2.5))
    queries = figs.get("queries")
    if queries:
        last = max(queries["sizes"], key=int)
        ours = queries["sizes"][last]["ours"]
        worst_name = max(ours, key=lambda n: ours[n]["p95_ms"])
        worst = ours[worst_name]["p95_ms"]
        rows.append((f"GET /emails p95 < 20 ms at {int(last):,} messages, every filter",
                     f"worst {_f(worst, 1)} ms ({worst_name})", worst < 20))
        growth = {k: v for k, v in queries["growth_p95"].items() if v is not None}
        worst_growth = max(growth, key=growth.get) if growth else None
        lo, hi = queries["growth_between"]
        rows.append((f"p95 flat (within 2x) from {lo:,} to {hi:,} messages",
                     f"worst {_f(growth[worst_growth], 2)}x ({worst_growth})" if worst_growth else "n/a",
                     all(v <= 2 for v in growth.values()) if growth else None))
        scans = [n for n, e in queries["explain"].items() if "COLLSCAN" in e["plan"]]
        rows.append(("Query plans use indexes (explain)",
                     "no COLLSCAN" if not scans else "COLLSCAN in: " + ", ".join(scans), not scans))
    storage = figs.get("storage")
    if storage:
        if "attach" in storage:
            ratio = storage["attach"]["wire_ratio_naive_over_ours"]
            rows.append(("GET /emails?limit=10 bytes, messages with attachments: ≥ 20x fewer than naive",
                         f"{_f(ratio, 1)}x fewer", ratio >= 20))
        if "repeated" in storage:
            ratio = storage["repeated"]["storage_ratio"]
            rows.append(("Storage, repeated-attachment set: ≤ 0.6x naive", f"{_f(ratio, 3)}x", ratio <= 0.6))
    download = figs.get("download")
    if download:
        entry = next((v for k, v in download.items() if k.startswith("ours/40")), None)
        if entry and entry.get("stored"):
            growth = entry["rss_growth_mib"]["max"]
            rows.append(("Download of a 40 MB attachment: worker RSS growth < 16 MB",
                         f"{_f(growth, 1)} MiB at {_f(entry['mib_per_s']['median'], 0)} MiB/s", growth < 16))
    return rows


def render(results: dict) -> str:
    out: list[str] = []
    add = out.append
    machine = results.get("machine", {})
    add(f"### Run: {results.get('plan')} plan, seed {results.get('seed')}, {results.get('started')}, "
        f"{results.get('seconds', '?')} s")
    add("")
    add("| machine | |")
    add("|---|---|")
    for key, label in (("cpu", "CPU"), ("nproc", "cores (nproc)"), ("ram_gib", "RAM (GiB)"), ("kernel", "kernel"),
                       ("python", "Python"), ("pymongo", "pymongo"), ("database", "database"),
                       ("secantusdb", "SecantusDB"), ("server_version_reported", "server reports version"),
                       ("gunicorn_conf", "gunicorn settings"), ("workers", "workers"), ("git_head", "git HEAD")):
        add(f"| {label} | {machine.get(key, 'n/a')} |")
    add("")
    rows = targets(results)
    if rows:
        add("#### Targets (ours versus naive, same run)")
        add("")
        add("| target | measured | verdict |")
        add("|---|---|---|")
        for label, measured, ok in rows:
            add(f"| {label} | {measured} | {_verdict(ok)} |")
        add("")
    figs = results.get("figures", {})
    if "ingest" in figs:
        _ingest(figs["ingest"], add)
    if "memory" in figs:
        _memory(figs["memory"], add)
    if "burst" in figs:
        _burst(figs["burst"], add)
    if "queries" in figs:
        _queries(figs["queries"], add)
    if "storage" in figs:
        _storage(figs["storage"], add)
    if "download" in figs:
        _download(figs["download"], add)
    for name, error in results.get("errors", {}).items():
        add(f"**Figure {name} failed:**\n\n```\n{error.strip()[-2000:]}\n```\n")
    return "\n".join(out) + "\n"


def _ingest(fig: dict, add) -> None:
    add("#### 1. Ingest throughput and latency")
    add("")
    corpus = fig["corpus"]
    add("Corpus sent (each message once to each system): " + "; ".join(
        f"{cls} {c['messages']} messages of {_size(c['min'])}–{_size(c['max'])} JSON "
        f"({c['over_16mb']} over 16 MiB)" for cls, c in corpus.items()) + ".")
    add("")
    add("Stored messages/s: median of the rounds (min–max). Latency percentiles pool every request of every round.")
    add("")
    add("| class | senders | system | stored msg/s | stored MiB/s | p50 ms | p99 ms | stored / failed | vs naive | vs ceiling |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    table = fig["table"]
    for cls in ("small", "attach", "huge"):
        for conc in sorted({v["concurrency"] for v in table.values()}):
            for system in ("ours", "naive", "ceiling"):
                entry = table.get(f"{system}/{cls}/c{conc}")
                if not entry:
                    continue
                ratio = fig["ratios"][f"{cls}/c{conc}"]
                vs_naive = (f"{_f(ratio['ours_vs_naive'], 2)}x" if ratio["ours_vs_naive"] is not None
                            else "naive stored none") if system == "ours" else ""
                vs_ceiling = f"{_f(ratio['ours_vs_ceiling'], 2)}x" if system == "ours" else ""
                failed = f"{entry['failed']}" + (f" ({', '.join(entry['errors'])})" if entry["errors"] else "")
                add(f"| {cls} | {conc} | {system} | {_range(entry['stored_per_s'], 2)} | "
                    f"{_f(entry['stored_mib_per_s']['median'], 1)} | {_f(entry['latency']['p50_ms'], 1)} | "
                    f"{_f(entry['latency']['p99_ms'], 1)} | {entry['stored']} / {failed} | {vs_naive} | {vs_ceiling} |")
    add("")
    add("The ceiling parses the JSON and stores nothing: its 'stored' column counts 200 answers. "
        "'http 202' is the archive answering 'accepted, spooled to disk' because MongoDB did not answer within "
        "MONGO_TIMEOUT_MS; 'http 500' is the naive receiver's failed insert (a document over 16 MB, or no database).")
    add("")


def _memory(fig: dict, add) -> None:
    add("#### 2. Peak RSS of one worker ingesting a 50 MB message")
    add("")
    add("One gunicorn worker, restarted for every measurement; peak = the worker's VmHWM after the request "
        "(reset to current RSS just before it).")
    add("")
    add("| system | payload MiB | RSS before MiB | peak RSS MiB | peak / payload | (peak − before) / payload | stored | seconds |")
    add("|---|---|---|---|---|---|---|---|")
    for system in ("ours", "naive", "ceiling"):
        entry = fig.get(system)
        if entry:
            add(f"| {system} | {_f(entry['payload_mib'])} | {_f(entry['baseline_rss_mib'])} | {_f(entry['peak_rss_mib'])} | "
                f"{_range(entry['peak_over_payload'], 2)} | {_range(entry['growth_over_payload'], 2)} | "
                f"{entry['stored']}/{entry['attempts']} | {_f(entry['seconds'], 2)} |")
    add("")


def _burst(fig: dict, add) -> None:
    add(f"#### 2b. Peak RSS of all workers during a burst of {_f(fig['payload_mib'])} MiB deliveries")
    add("")
    add("N deliveries sent at once to the archive (the run's workers, 4 threads each), each a distinct "
        "message; peak = the highest sum of every worker's RSS, sampled every 5 ms. Slots: "
        "LARGE_BODY_SLOTS (2 is the default; 0 turns the limit off).")
    add("")
    add("| slots | concurrent | workers | RSS before MiB | peak MiB | growth MiB | stored | seconds | slowest answer s |")
    add("|---|---|---|---|---|---|---|---|---|")
    for row in fig["rows"]:
        add(f"| {row['slots']} | {row['concurrency']} | {row['workers']} | {_f(row['baseline_mib'])} | "
            f"{_f(row['peak_mib'])} | {_f(row['growth_mib'])} | {row['stored']}/{row['concurrency']} | "
            f"{_f(row['seconds'])} | {_f(row['slowest_s'])} |")
    add("")


def _queries(fig: dict, add) -> None:
    add("#### 3. GET /emails latency")
    add("")
    values = fig["filter_values"]
    add(f"Filters: from_email={values['from_email']} (the busiest sender), to={values['to']} (the busiest alias), "
        f"subject contains '{values['subject']}', since/until {values['since/until'][0]} – {values['since/until'][1]}; "
        "limit 10. Sequential requests, one client.")
    add("")
    sizes = sorted(fig["sizes"], key=int)
    header = "| query | " + " | ".join(f"ours p50 / p95 ms @{int(s):,}" for s in sizes)
    naive_sizes = [s for s in sizes if "naive" in fig["sizes"][s]]
    header += "".join(f" | naive p50 / p95 ms @{int(s):,}" for s in naive_sizes)
    header += f" | total @{int(sizes[-1]):,} | p95 growth |"
    add(header)
    add("|" + "---|" * (len(sizes) + len(naive_sizes) + 3))
    for name in fig["sizes"][sizes[-1]]["ours"]:
        cells = [f"{_f(fig['sizes'][s]['ours'][name]['p50_ms'])} / {_f(fig['sizes'][s]['ours'][name]['p95_ms'])}"
                 for s in sizes]
        for s in naive_sizes:
            entry = fig["sizes"][s]["naive"].get(name)
            cells.append(f"{_f(entry['p50_ms'])} / {_f(entry['p95_ms'])}" if entry else "–")
        total = fig["sizes"][sizes[-1]]["ours"][name].get("total")
        add(f"| {name} | " + " | ".join(cells) + f" | {_f(total)} | {_f(fig['growth_p95'].get(name), 2)}x |")
    add("")
    add("`explain()` of the list query the route runs (the app's own `parse_filters`), and of its count:")
    add("")
    add("| query | filter | hint | winning plan | keys / docs examined | server ms | count plan |")
    add("|---|---|---|---|---|---|---|")
    for name, entry in fig["explain"].items():
        add(f"| {name} | `{entry['filter']}` | {entry.get('hint') or '–'} | {entry['plan']} | "
            f"{entry['keys_examined']} / {entry['docs_examined']} | {_f(entry.get('server_ms'))} | {entry['count_plan']} |")
    add("")


def _storage(fig: dict, add) -> None:
    add("#### 4. Bytes on the wire for GET /emails?limit=10")
    add("")
    add("| set | ours bytes (body + headers) | naive bytes | naive / ours |")
    add("|---|---|---|---|")
    for kind, entry in fig.items():
        ours, naive = entry["ours"], entry["naive"]
        add(f"| {kind} ({entry['messages']} msgs) | {ours['list_limit10_body_bytes'] + ours['list_limit10_header_bytes']:,} | "
            f"{naive['list_limit10_body_bytes'] + naive['list_limit10_header_bytes']:,} | "
            f"{_f(entry['wire_ratio_naive_over_ours'], 1)}x |")
    add("")
    add("#### 5. Bytes stored in the database")
    add("")
    add("dbStats of each system's own database after ingesting the set (dataSize + indexSize; GridFS included).")
    add("")
    add("| set | messages | payload KiB / msg | ours KiB / msg (data + index) | naive KiB / msg | ours / naive |")
    add("|---|---|---|---|---|---|")
    for kind, entry in fig.items():
        ours, naive = entry["ours"], entry["naive"]
        add(f"| {kind} | {entry['messages']} | {entry['payload_bytes'] / entry['messages'] / KIB:,.1f} | "
            f"{ours['total_per_message'] / KIB:,.1f} ({ours['dataSize'] / KIB / entry['messages']:,.1f} + "
            f"{ours['indexSize'] / KIB / entry['messages']:,.1f}) | {naive['total_per_message'] / KIB:,.1f} | "
            f"{_f(entry['storage_ratio'], 3)}x |")
    add("")


def _download(fig: dict, add) -> None:
    add("#### 6. Attachment download")
    add("")
    add("One worker, restarted for every download; the client reads 256 KiB at a time.")
    add("")
    add("| system / attachment | MiB/s (min–max) | worker RSS growth MiB (min–max) | RSS before MiB |")
    add("|---|---|---|---|")
    for key, entry in fig.items():
        if not entry.get("stored"):
            add(f"| {key} | could not be stored (HTTP {entry.get('status')}) | – | – |")
            continue
        add(f"| {key} | {_range(entry['mib_per_s'], 1)} | {_range(entry['rss_growth_mib'], 1)} | "
            f"{_f(entry['baseline_rss_mib'])} |")
    add("")
