#!/usr/bin/env python3
"""Federation load generator (stdlib only): two homeservers that federate, driven over the client API.

  1. latency: alice on --hs1 and bob on --hs2 share a room; alice sends --messages messages one
     at a time, each waiting for the previous to arrive; bob's /sync long-poll records when each
     arrives. Reported: send-to-delivery p50/p99 across servers, and the same for a burst of
     --burst messages sent back to back (throughput = burst / time until bob has them all).
  2. big join: --members users on hs1 join one public room and send --history messages; then
     carol on hs2 joins it over federation. Reported: time of carol's /join call, time until her
     /sync shows the room with its last message, and both servers' RSS.

Only loopback URLs are accepted. Prints a summary and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

CS = "/_matrix/client/v3"


def call(base, method, path, token=None, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def ok(result, what):
    status, body = result
    if status != 200:
        raise SystemExit(f"{what}: {status} {body}")
    return body


def register(base, localpart):
    body = {"username": localpart, "password": "bench-password-" + localpart, "auth": {"type": "m.login.dummy"}}
    b = ok(call(base, "POST", f"{CS}/register", body=body), f"register {localpart}")
    return b["user_id"], b["access_token"]


def enc(s):
    return urllib.parse.quote(s, safe="")


def percentile(vals, p):
    if not vals:
        return None
    v = sorted(vals)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def ms(vals):
    return {"count": len(vals), "p50": round(percentile(vals, 50) * 1000, 2), "p99": round(percentile(vals, 99) * 1000, 2),
            "max": round(max(vals) * 1000, 2)} if vals else {"count": 0}


def rss_kib(pid):
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class Watcher(threading.Thread):
    """Long-polls /sync for one user and records when each bench message arrives."""

    def __init__(self, base, token, room):
        super().__init__(daemon=True)
        self.base, self.token, self.room = base, token, room
        self.arrived = {}
        self.since = None
        self.stop = False
        self.cv = threading.Condition()

    def run(self):
        while not self.stop:
            # A big timeline limit: a burst must not be cut to the last 20
            # events of a "limited" sync.
            q = "?timeout=10000&filter=" + enc(json.dumps({"room": {"timeline": {"limit": 1000}}}))
            q += f"&since={enc(self.since)}" if self.since else ""
            status, body = call(self.base, "GET", f"{CS}/sync{q}", self.token, timeout=60)
            if status != 200:
                time.sleep(0.2)
                continue
            t = time.monotonic()
            self.since = body.get("next_batch", self.since)
            events = body.get("rooms", {}).get("join", {}).get(self.room, {}).get("timeline", {}).get("events", [])
            with self.cv:
                for e in events:
                    mark = e.get("content", {}).get("bench_id")
                    if mark and mark not in self.arrived:
                        self.arrived[mark] = t
                self.cv.notify_all()

    def wait_for(self, marks, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not all(m in self.arrived for m in marks):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(left)
        return True


def send(base, token, room, mark):
    body = {"msgtype": "m.text", "body": f"bench {mark}", "bench_id": mark}
    return ok(call(base, "PUT", f"{CS}/rooms/{enc(room)}/send/m.room.message/{mark}", token, body), "send")


def latency(args, tag):
    alice, at = register(args.hs1, f"alice{tag}")
    bob, bt = register(args.hs2, f"bob{tag}")
    room = ok(call(args.hs1, "POST", f"{CS}/createRoom", at, {"preset": "private_chat", "invite": [bob]}), "createRoom")["room_id"]
    deadline = time.monotonic() + 30
    while True:
        status, body = call(args.hs2, "POST", f"{CS}/join/{enc(room)}", bt, {})
        if status == 200:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bob cannot join: {status} {body}")
        time.sleep(0.2)
    w = Watcher(args.hs2, bt, room)
    w.start()
    # Warm-up: the first message also waits for bob's first sync.
    send(args.hs1, at, room, "warm")
    if not w.wait_for(["warm"], 30):
        raise SystemExit("warm-up message never reached bob")
    one = []
    for i in range(args.messages):
        mark = f"seq{i}"
        t0 = time.monotonic()
        send(args.hs1, at, room, mark)
        if not w.wait_for([mark], 30):
            raise SystemExit(f"{mark} never reached bob")
        one.append(w.arrived[mark] - t0)
    marks = [f"burst{i}" for i in range(args.burst)]
    sent_at = {}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(8) as pool:
        def go(m):
            sent_at[m] = time.monotonic()
            send(args.hs1, at, room, m)
        list(pool.map(go, marks))
    if not w.wait_for(marks, 120):
        raise SystemExit("burst did not fully arrive")
    burst_s = max(w.arrived[m] for m in marks) - t0
    w.stop = True
    return {
        "one_at_a_time_ms": ms(one),
        "burst_ms": ms([w.arrived[m] - sent_at[m] for m in marks]),
        "burst_messages": args.burst,
        "burst_seconds": round(burst_s, 3),
        "burst_msgs_per_s": round(args.burst / burst_s, 1),
    }


def big_join(args, tag):
    with cf.ThreadPoolExecutor(args.threads) as pool:
        users = list(pool.map(lambda i: register(args.hs1, f"m{tag}x{i}"), range(args.members)))
    owner = users[0]
    room = ok(call(args.hs1, "POST", f"{CS}/createRoom", owner[1], {"preset": "public_chat"}), "createRoom")["room_id"]
    with cf.ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda u: ok(call(args.hs1, "POST", f"{CS}/join/{enc(room)}", u[1], {}), "join"), users[1:]))
    last = f"last{tag}"
    with cf.ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda i: send(args.hs1, users[i % len(users)][1], room, f"h{tag}x{i}"), range(args.history - 1)))
    send(args.hs1, owner[1], room, last)
    carol, ct = register(args.hs2, f"carol{tag}")
    hs1_name = args.hs1_name
    t0 = time.monotonic()
    ok(call(args.hs2, "POST", f"{CS}/join/{enc(room)}?via={enc(hs1_name)}", ct, {}, timeout=600), "carol's federated join")
    join_s = time.monotonic() - t0
    # Her first sync must show the room; the latest history arrives with the next event.
    status, body = call(args.hs2, "GET", f"{CS}/sync?timeout=0", ct, timeout=600)
    first_sync_s = time.monotonic() - t0
    joined = room in body.get("rooms", {}).get("join", {})
    members = ok(call(args.hs2, "GET", f"{CS}/rooms/{enc(room)}/joined_members", ct), "joined_members")
    return {
        "members": args.members,
        "history_events": args.history,
        "join_call_s": round(join_s, 3),
        "join_to_first_sync_s": round(first_sync_s, 3),
        "room_in_first_sync": joined,
        "members_seen_by_joiner": len(members.get("joined", {})),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hs1", required=True, help="client URL of the first server")
    ap.add_argument("--hs2", required=True, help="client URL of the second server")
    ap.add_argument("--hs1-name", required=True, help="server name of the first server")
    ap.add_argument("--pids", default="", help="comma-separated PIDs for RSS")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--history", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    for url in (args.hs1, args.hs2):
        host = urllib.parse.urlparse(url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing non-loopback {url}")
    tag = secrets.token_hex(3)
    result = {"label": args.label, "latency": latency(args, tag), "big_join": big_join(args, tag)}
    result["rss_kib"] = {pid: rss_kib(int(pid)) for pid in args.pids.split(",") if pid}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
