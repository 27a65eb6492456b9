#!/usr/bin/env python3
"""Wait until the machine is quiet (e.g. no cargo build running), so benchmark figures are not
contaminated by other processes. Stdlib only; reads /proc/stat.

    bench/wait_quiet.py [--threshold 0.3] [--window 15] [--max-wait 1200]

Exits 0 as soon as the average number of busy cores over the last --window seconds is below
--threshold, 1 if that did not happen within --max-wait seconds.
"""
import argparse
import os
import sys
import time
from collections import deque


def busy_idle():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal), (idle + iowait)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threshold", type=float, default=0.3, help="busy cores (average) counted as quiet")
    p.add_argument("--window", type=float, default=15.0, help="seconds the average is taken over")
    p.add_argument("--max-wait", type=float, default=1200.0, help="give up after this many seconds")
    a = p.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    samples = deque()
    t_start = time.monotonic()
    last_print = 0.0
    while True:
        t = time.monotonic()
        b, _ = busy_idle()
        samples.append((t, b))
        while samples and t - samples[0][0] > a.window:
            samples.popleft()
        if t - samples[0][0] >= a.window * 0.9:
            cores = (b - samples[0][1]) / hz / (t - samples[0][0])
            if cores < a.threshold:
                print(f"quiet: {cores:.2f} busy cores over {a.window:.0f}s", file=sys.stderr)
                return 0
            if t - last_print > 60:
                print(f"waiting for quiet: {cores:.2f} busy cores", file=sys.stderr)
                last_print = t
        if t - t_start > a.max_wait:
            print(f"machine not quiet within {a.max_wait:.0f}s", file=sys.stderr)
            return 1
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
