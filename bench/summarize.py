#!/usr/bin/env python3
"""Print a Markdown table row per matrix_bench.py JSON result (stdlib only).

    bench/summarize.py bench/results/*.json
"""
import json
import sys


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


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
    srv = f"{srv.get('name')} {srv.get('version')}" if isinstance(srv, dict) else (r.get("label") or "?")
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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for p in sys.argv[1:]:
        print("| " + " | ".join(row(p)) + " |")


if __name__ == "__main__":
    main()
