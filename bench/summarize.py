#!/usr/bin/env python3
"""Print a Markdown table of matrix_bench.py JSON results (stdlib only).

    bench/summarize.py bench/results/*.json             # one row per result file
    bench/summarize.py --median bench/results/*.json    # one column per scenario+server:
                                                        # median [min–max] over repeated runs
"""
import statistics
import json
import sys


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def server_name(r):
    srv = g(r, "target", "server")
    if isinstance(srv, dict):
        # Synapse appends " (b=<branch>,<sha>)" of whatever git repo it is installed inside
        return f"{srv.get('name')} {str(srv.get('version', '')).split(' (')[0]}"
    return r.get("label") or "?"


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else str(x)


COLS = ["file", "server", "users/rooms/msgs", "rate", "msgs/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
        "deliv recv/exp", "errors", "RSS peak MiB", "RSS end MiB", "srv CPU s", "other cores"]


def row(path):
    r = json.load(open(path))
    c = r["config"]
    lat = g(r, "deliveries", "latency_ms") or {}
    srv = g(r, "target", "server")
    srv = server_name(r)
    return [
        path.rsplit("/", 1)[-1], srv, f"{c['users']}/{c['rooms']}/{c['messages_total']}",
        fmt(c.get("rate_per_s")) if c.get("rate_per_s") else "unpaced",
        fmt(g(r, "sends", "sustained_msgs_per_s"), 1),
        fmt(lat.get("p50")), fmt(lat.get("p95")), fmt(lat.get("p99")), fmt(lat.get("max")),
        f"{g(r, 'deliveries', 'received')}/{g(r, 'deliveries', 'expected')}",
        fmt(g(r, "errors", "total")),
        fmt(g(r, "server_process", "rss_mib", "peak_sampled"), 1),
        fmt(g(r, "server_process", "rss_mib", "end"), 1),
        fmt(g(r, "server_process", "cpu_s", "load"), 1),
        fmt(g(r, "machine", "cpu_during_load_phase", "other_processes_cores"), 2),
    ]


METRICS = [
    ("send→sync p50 ms", ("deliveries", "latency_ms", "p50"), 0),
    ("send→sync p95 ms", ("deliveries", "latency_ms", "p95"), 0),
    ("send→sync p99 ms", ("deliveries", "latency_ms", "p99"), 0),
    ("send→sync max ms", ("deliveries", "latency_ms", "max"), 0),
    ("sustained msgs/s (acked)", ("sends", "sustained_msgs_per_s"), 1),
    ("PUT ack p50 ms", ("sends", "ack_latency_ms", "p50"), 0),
    ("deliveries received", ("deliveries", "received"), 0),
    ("deliveries expected", ("deliveries", "expected"), 0),
    ("errors", ("errors", "total"), 0),
    ("server RSS start MiB", ("server_process", "rss_mib", "start"), 1),
    ("server RSS peak MiB", ("server_process", "rss_mib", "peak_sampled"), 1),
    ("server RSS end MiB", ("server_process", "rss_mib", "end"), 1),
    ("server CPU s (load phase)", ("server_process", "cpu_s", "load"), 1),
    ("other processes, cores", ("machine", "cpu_during_load_phase", "other_processes_cores"), 2),
]


def scenario(r):
    c = r["config"]
    srv = g(r, "target", "server")
    srv = server_name(r)
    rate = f"{fmt(c['rate_per_s'])}/s" if c.get("rate_per_s") else "unpaced"
    return f"{srv}: {c['users']}u/{c['rooms']}r/{c['messages_total']}m {rate}"


def median_table(paths):
    groups = {}
    for p in paths:
        r = json.load(open(p))
        groups.setdefault(scenario(r), []).append(r)
    keys = list(groups)
    print("| metric | " + " | ".join(f"{k} (n={len(groups[k])})" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, path, nd in METRICS:
        cells = []
        for k in keys:
            vals = [v for v in (g(r, *path) for r in groups[k]) if isinstance(v, (int, float))]
            if not vals:
                cells.append("–")
            elif len(vals) == 1 or min(vals) == max(vals):
                cells.append(fmt(statistics.median(vals), nd))
            else:
                cells.append(f"{fmt(statistics.median(vals), nd)} [{fmt(min(vals), nd)}–{fmt(max(vals), nd)}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if args[0] == "--median":
        median_table(args[1:])
        return
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for p in args:
        print("| " + " | ".join(row(p)) + " |")


if __name__ == "__main__":
    main()
