#!/usr/bin/env python3
"""Medians [min-max] of write_bench runs, two sets side by side with their ratio.

    bench/summarize_write.py BEFORE.json... -- AFTER.json...
"""
import json
import statistics
import sys


def load(paths):
    return [json.load(open(p)) for p in paths]


def stat(runs, phase, key):
    values = [r[phase][key] for r in runs]
    return statistics.median(values), min(values), max(values)


def main():
    args = sys.argv[1:]
    if "--" not in args:
        sys.exit(__doc__)
    cut = args.index("--")
    before, after = load(args[:cut]), load(args[cut + 1:])
    if not before or not after:
        sys.exit("need runs on both sides")
    print(f"runs: {len(before)} before, {len(after)} after (alternating)\n")
    print("| phase | metric | before | after | after / before |")
    print("| --- | --- | --- | --- | --- |")
    for phase, name in [("sequential", "sequential, 1 sender"), ("concurrent", f"concurrent, {after[0]['workers']} senders")]:
        for key, label, fmt in [("msgs_per_s", "msg/s", "{:.0f}"), ("put_ms_p50", "PUT p50 ms", "{:.3f}"), ("put_ms_p99", "PUT p99 ms", "{:.3f}")]:
            b, a = stat(before, phase, key), stat(after, phase, key)
            cell = lambda s: f"{fmt.format(s[0])} [{fmt.format(s[1])}–{fmt.format(s[2])}]"
            print(f"| {name} | {label} | {cell(b)} | {cell(a)} | {a[0] / b[0]:.2f} |")


if __name__ == "__main__":
    main()
