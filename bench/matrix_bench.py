#!/usr/bin/env python3
"""Send-to-sync-delivery load generator for any Matrix homeserver (client-server API v3).

What it does (see bench/README.md for the long version):

  1. registers --users N fresh accounts (UIA: m.login.dummy, or m.login.registration_token
     when --registration-token is given);
  2. creates --rooms M rooms (preset private_chat + invites + joins, or public_chat + joins)
     and spreads the users over them round-robin;
  3. every user runs a /sync long-poll loop (timeout=30000, `since` tokens);
  4. senders PUT /rooms/{roomId}/send/m.room.message/{txnId} --messages K messages in total,
     each carrying a unique `bench_id` and the send timestamp;
  5. for every (message, other room member) pair it measures the time from just before the PUT
     to the moment that member's /sync response containing the event has been read;
  6. prints a human summary and writes a JSON result file (--out).

Everything is bounded: the send phase stops after --messages or --duration seconds, the drain
phase after --drain-timeout seconds, setup after --setup-timeout seconds, and every loop has a
hard iteration cap. Only loopback targets are accepted unless --allow-remote is given.

The script bootstraps its own venv (bench/.venv) with aiohttp on first run and re-executes
itself inside it; nothing is installed globally.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".venv"
REQUIREMENTS = BENCH_DIR / "requirements.txt"


def _bootstrap_venv() -> None:
    """Create bench/.venv with aiohttp and re-exec this script inside it (once)."""
    try:
        import aiohttp  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("MATRIX_BENCH_BOOTSTRAPPED") == "1":
        sys.exit("matrix_bench: aiohttp still missing inside %s; remove it and retry" % VENV_DIR)
    py = VENV_DIR / "bin" / "python"
    if not py.exists():
        print(f"[bootstrap] creating venv {VENV_DIR}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV_DIR)])
    probe = subprocess.run([str(py), "-c", "import aiohttp"], capture_output=True)
    if probe.returncode != 0:
        print("[bootstrap] pip install -r requirements.txt into the venv", file=sys.stderr)
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)])
    env = dict(os.environ, MATRIX_BENCH_BOOTSTRAPPED="1")
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]], env)


if __name__ == "__main__":
    _bootstrap_venv()

# ---------------------------------------------------------------------------------------------
import argparse
import asyncio
import ipaddress
import json
import platform
import random
import resource
import secrets
import string
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CS = "/_matrix/client/v3"
SYNC_TIMEOUT_MS = 30000
MAX_SYNCS_PER_USER = 20000          # hard cap on /sync iterations per user
MAX_SYNC_CONSECUTIVE_ERRORS = 20    # a sync loop gives up after this many errors in a row
MAX_SEND_ATTEMPTS = 5               # per message (only 429 / transport errors are retried)
MAX_UIA_STAGES = 5
MAX_RATE_LIMIT_RETRIES = 30         # setup requests answered 429 are retried this often


# ----------------------------------------------------------------------------- helpers
def now() -> float:
    return time.monotonic()


def percentile(sorted_vals: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (same as numpy's default), p in [0, 100]."""
    if not sorted_vals:
        return None
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def summarize_ms(vals_s: list[float]) -> dict[str, Any]:
    v = sorted(x * 1000.0 for x in vals_s)
    out: dict[str, Any] = {"count": len(v)}
    if v:
        out.update(
            min=round(v[0], 2),
            mean=round(sum(v) / len(v), 2),
            p50=round(percentile(v, 50), 2),
            p90=round(percentile(v, 90), 2),
            p95=round(percentile(v, 95), 2),
            p99=round(percentile(v, 99), 2),
            max=round(v[-1], 2),
        )
    return out


def check_loopback(url: str, allow_remote: bool) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        sys.exit(f"--url must be http(s)://host:port, got {url!r}")
    if allow_remote:
        return
    # No DNS look-up: only loopback IP literals (127.0.0.0/8, ::1) and "localhost" pass.
    host = parsed.hostname.lower()
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost" or host.endswith(".localhost")
    if not ok:
        sys.exit(f"refusing non-loopback target {url!r} (only 127.0.0.0/8, [::1] and localhost "
                 "are allowed); pass --allow-remote if you really mean it")


def read_proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB from /proc/PID/status (empty dict if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def read_system_busy_seconds() -> float | None:
    """Busy CPU time of the whole machine (all cores, non-idle, non-iowait) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def read_proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of PID (all its threads) in seconds, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- state
class BenchError(RuntimeError):
    pass


@dataclass
class User:
    idx: int
    localpart: str
    password: str
    user_id: str = ""
    token: str = ""
    rooms: list[str] = field(default_factory=list)
    since: str | None = None
    filter_param: str | None = None
    syncs: int = 0
    sync_in_flight: bool = False


@dataclass
class Sent:
    t0: float                # monotonic, just before the (first) PUT
    sender: int
    room_id: str
    t_ack: float | None = None
    event_id: str | None = None
    expected: int = 0        # number of other members that should receive it


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.base = args.url.rstrip("/")
        self.run_id = args.run_id or "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        self.users: list[User] = []
        self.room_members: dict[str, list[int]] = {}
        self.sent: dict[str, Sent] = {}
        self.latencies: list[float] = []          # send->other member's sync delivery
        self.echo_latencies: list[float] = []     # send->sender's own sync (informational)
        self.ack_latencies: list[float] = []      # PUT round trip
        self.delivered: set[tuple[int, str]] = set()
        self.duplicates = 0
        self.unexpected = 0                       # deliveries to users not in the room (bug)
        self.limited_timelines = 0
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.rate_limited = 0
        self.expected_deliveries = 0
        self.acked = 0
        self.send_failed = 0
        self.t_send_start: float | None = None
        self.t_last_ack: float | None = None
        self.t_last_delivery: float | None = None
        self.ack_times: list[float] = []
        self.delivery_times: list[float] = []
        self.phase_times: dict[str, float] = {}
        self.stop_sync = asyncio.Event()
        self.all_delivered = asyncio.Event()
        self.rss_samples: list[tuple[float, int]] = []
        self.rss_stop = asyncio.Event()
        self.filter_mode_used: str = args.filter
        self.server_info: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None
        self.t_origin = now()
        self.client_cpu_s = 0.0
        self.loadavg_start = self.loadavg_end = (0.0, 0.0, 0.0)
        self.machine_cpu: dict[str, Any] = {}

    # -------------------------------------------------------------- http
    def err(self, key: str, detail: str = "") -> None:
        self.errors[key] += 1
        if key not in self.error_samples and detail:
            self.error_samples[key] = detail[:300]

    async def req(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                  params: dict[str, str] | None = None, timeout: float | None = None
                  ) -> tuple[int, Any]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        to = aiohttp.ClientTimeout(total=timeout or self.a.request_timeout)
        async with self.session.request(method, self.base + path, json=body, params=params,
                                        headers=headers, timeout=to,
                                        allow_redirects=False) as resp:
            raw = await resp.read()
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {"_raw": raw[:200].decode("utf-8", "replace")}
            return resp.status, data

    # -------------------------------------------------------------- setup
    async def fetch_server_info(self) -> None:
        try:
            st, data = await self.req("GET", "/_matrix/client/versions")
            self.server_info["client_versions"] = data.get("versions") if st == 200 else f"HTTP {st}"
        except Exception as e:  # noqa: BLE001
            raise BenchError(f"cannot reach {self.base}: {type(e).__name__}: {e}")
        try:
            st, data = await self.req("GET", "/_matrix/federation/v1/version", timeout=5)
            if st == 200:
                self.server_info["server"] = data.get("server")
        except Exception:  # noqa: BLE001
            pass

    async def register(self, u: User) -> None:
        body: dict[str, Any] = {
            "username": u.localpart,
            "password": u.password,
            "initial_device_display_name": "matrix_bench",
            "inhibit_login": False,
        }
        completed: list[str] = []
        session: str | None = None
        stages_tried = 0
        for _ in range(MAX_UIA_STAGES + 1 + MAX_RATE_LIMIT_RETRIES):
            st, data = await self.req("POST", f"{CS}/register", body=body)
            if st == 200:
                u.user_id, u.token = data["user_id"], data["access_token"]
                return
            if st == 429:
                self.rate_limited += 1
                self.err("register:429")
                await asyncio.sleep(min(data.get("retry_after_ms", 1000), 10000) / 1000)
                continue
            stages_tried += 1
            if stages_tried > MAX_UIA_STAGES + 1:
                break
            if st != 401 or "session" not in data and "flows" not in data:
                raise RuntimeError(f"register {u.localpart}: HTTP {st} {data}")
            if "auth" in body and data.get("errcode"):  # the stage we just submitted was refused
                raise RuntimeError(f"register {u.localpart}: stage {body['auth']['type']} refused: "
                                   f"{data.get('errcode')} {data.get('error')}")
            session = data.get("session", session)
            completed = data.get("completed", completed)
            can_do = {"m.login.dummy"}
            if self.a.registration_token:
                can_do.add("m.login.registration_token")
            flows = [f.get("stages", []) for f in data.get("flows", [])]
            flow = next((f for f in flows if set(f) <= can_do and f), None)
            if flow is None:
                raise RuntimeError(f"register: no usable UIA flow among {flows} "
                                   f"(have {sorted(can_do)}; need --registration-token?)")
            stage = next((s for s in flow if s not in completed), None)
            if stage is None:  # all done but still 401: retry with session only
                stage = flow[-1]
            auth: dict[str, Any] = {"type": stage}
            if session:
                auth["session"] = session
            if stage == "m.login.registration_token":
                auth["token"] = self.a.registration_token
            body["auth"] = auth
        raise RuntimeError(f"register {u.localpart}: UIA did not finish")

    async def create_room(self, creator: User, name: str) -> str:
        body = {"preset": self.a.preset, "name": name, "topic": f"matrix_bench {self.run_id}"}
        if self.a.preset == "public_chat":
            body["visibility"] = "private"  # don't pollute the room directory
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            st, data = await self.req("POST", f"{CS}/createRoom", token=creator.token, body=body)
            if st == 200:
                return data["room_id"]
            if st == 429:
                self.rate_limited += 1
                self.err("createRoom:429")
                await asyncio.sleep(min(data.get("retry_after_ms", 1000), 10000) / 1000)
                continue
            raise RuntimeError(f"createRoom: HTTP {st} {data}")
        raise RuntimeError("createRoom: rate limited too often")

    async def room_op(self, what: str, path: str, token: str, body: dict[str, Any]) -> None:
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            st, data = await self.req("POST", path, token=token, body=body)
            if st == 200:
                return
            if st == 429:
                self.rate_limited += 1
                self.err(f"{what}:429")
                await asyncio.sleep(min(data.get("retry_after_ms", 1000), 10000) / 1000)
                continue
            raise RuntimeError(f"{what}: HTTP {st} {data}")
        raise RuntimeError(f"{what}: rate limited too often")

    async def setup_filter(self, u: User) -> None:
        filt = {
            "room": {
                "timeline": {"limit": self.a.timeline_limit},
                "state": {"lazy_load_members": True},
                "ephemeral": {"not_types": ["*"]},
            },
            "presence": {"not_types": ["*"]},
        }
        mode = self.a.filter
        if mode == "upload":
            st, data = await self.req("POST", f"{CS}/user/{urllib.parse.quote(u.user_id)}/filter",
                                      token=u.token, body=filt)
            if st == 200 and "filter_id" in data:
                u.filter_param = data["filter_id"]
                return
            self.err(f"filter_upload:{st}", json.dumps(data))
            mode = "inline"
            self.filter_mode_used = "inline (upload failed)"
        if mode == "inline":
            u.filter_param = json.dumps(filt, separators=(",", ":"))

    async def initial_sync(self, u: User) -> None:
        params = {"timeout": "0"}
        if u.filter_param:
            params["filter"] = u.filter_param
        st, data = await self.req("GET", f"{CS}/sync", token=u.token, params=params, timeout=120)
        if st != 200 or "next_batch" not in data:
            raise RuntimeError(f"initial sync {u.user_id}: HTTP {st} {str(data)[:300]}")
        u.since = data["next_batch"]

    async def bounded_gather(self, coros: list, limit: int) -> None:
        sem = asyncio.Semaphore(limit)

        async def run(c):
            async with sem:
                return await c

        await asyncio.gather(*(run(c) for c in coros))

    async def setup(self) -> None:
        a = self.a
        pw = secrets.token_urlsafe(12)
        self.users = [User(i, f"{a.user_prefix}{self.run_id}_{i}", pw) for i in range(a.users)]

        t = now()
        await self.bounded_gather([self.register(u) for u in self.users], a.setup_concurrency)
        self.phase_times["register_s"] = now() - t
        print(f"  registered {len(self.users)} users in {self.phase_times['register_s']:.2f}s")

        # Room r's members: user i is in rooms (i + j) % M for j < rooms_per_user.
        rpu = min(a.rooms_per_user, a.rooms)
        members: dict[int, list[int]] = defaultdict(list)
        for u in self.users:
            for j in range(rpu):
                members[(u.idx + j) % a.rooms].append(u.idx)
        t = now()
        room_ids: dict[int, str] = {}

        async def make_room(r: int) -> None:
            creator = self.users[members[r][0]]
            room_ids[r] = await self.create_room(creator, f"bench {self.run_id} #{r}")

        await self.bounded_gather([make_room(r) for r in sorted(members)], a.setup_concurrency)
        self.phase_times["create_rooms_s"] = now() - t
        print(f"  created {len(room_ids)} rooms ({a.preset}) in {self.phase_times['create_rooms_s']:.2f}s")

        t = now()
        ops = []
        for r, idxs in members.items():
            rid = room_ids[r]
            self.room_members[rid] = idxs
            creator = self.users[idxs[0]]
            creator.rooms.append(rid)
            for i in idxs[1:]:
                ops.append(self.invite_and_join(creator, self.users[i], rid))
        await self.bounded_gather(ops, a.setup_concurrency)
        self.phase_times["invite_join_s"] = now() - t
        print(f"  {'invited+joined' if a.preset == 'private_chat' else 'joined'} {len(ops)} "
              f"memberships in {self.phase_times['invite_join_s']:.2f}s")

        t = now()
        await self.bounded_gather([self.setup_filter(u) for u in self.users], a.setup_concurrency)
        await self.bounded_gather([self.initial_sync(u) for u in self.users], a.setup_concurrency)
        self.phase_times["initial_sync_s"] = now() - t
        print(f"  filters ({self.filter_mode_used}) + initial syncs in {self.phase_times['initial_sync_s']:.2f}s")

    async def invite_and_join(self, inviter: User, u: User, room_id: str) -> None:
        q = urllib.parse.quote(room_id)
        if self.a.preset == "private_chat":
            await self.room_op("invite", f"{CS}/rooms/{q}/invite", inviter.token, {"user_id": u.user_id})
        await self.room_op("join", f"{CS}/rooms/{q}/join", u.token, {})
        u.rooms.append(room_id)

    # -------------------------------------------------------------- sync loop
    async def sync_loop(self, u: User, hard_deadline: float) -> None:
        consecutive_errors = 0
        while not self.stop_sync.is_set() and u.syncs < MAX_SYNCS_PER_USER and now() < hard_deadline:
            params = {"timeout": str(SYNC_TIMEOUT_MS), "since": u.since or ""}
            if u.filter_param:
                params["filter"] = u.filter_param
            u.syncs += 1
            u.sync_in_flight = True
            try:
                st, data = await self.req("GET", f"{CS}/sync", token=u.token, params=params,
                                          timeout=SYNC_TIMEOUT_MS / 1000 + 30)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.err(f"sync:{type(e).__name__}", str(e))
                consecutive_errors += 1
                if consecutive_errors >= MAX_SYNC_CONSECUTIVE_ERRORS:
                    return
                await asyncio.sleep(1)
                continue
            t_recv = now()
            if st != 200:
                self.err(f"sync:{st}", json.dumps(data)[:300])
                consecutive_errors += 1
                if consecutive_errors >= MAX_SYNC_CONSECUTIVE_ERRORS:
                    return
                await asyncio.sleep(min(data.get("retry_after_ms", 1000), 5000) / 1000 if st == 429 else 1)
                continue
            consecutive_errors = 0
            u.since = data.get("next_batch", u.since)
            self.process_sync(u, data, t_recv)

    def process_sync(self, u: User, data: dict[str, Any], t_recv: float) -> None:
        joined = (data.get("rooms") or {}).get("join") or {}
        prefix = self.run_id + ":"
        for room_id, room in joined.items():
            tl = room.get("timeline") or {}
            if tl.get("limited") and self.t_send_start is not None:
                self.limited_timelines += 1
            for ev in tl.get("events") or []:
                if ev.get("type") != "m.room.message":
                    continue
                bid = (ev.get("content") or {}).get("bench_id")
                if not isinstance(bid, str) or not bid.startswith(prefix):
                    continue
                s = self.sent.get(bid)
                if s is None:
                    self.err("sync:unknown_bench_id", bid)
                    continue
                if u.idx == s.sender:
                    self.echo_latencies.append(t_recv - s.t0)
                    continue
                key = (u.idx, bid)
                if key in self.delivered:
                    self.duplicates += 1
                    continue
                if u.idx not in self.room_members.get(s.room_id, ()):
                    self.unexpected += 1
                    continue
                self.delivered.add(key)
                self.latencies.append(t_recv - s.t0)
                self.delivery_times.append(t_recv)
                self.t_last_delivery = t_recv
        if (self.expected_deliveries and self.sending_done
                and len(self.delivered) >= self.expected_deliveries):
            self.all_delivered.set()

    # -------------------------------------------------------------- senders
    sending_done = False

    async def sender(self, u: User, msgs: list[int], t_end: float, interval: float, offset: float) -> None:
        rooms = [r for r in u.rooms if len(self.room_members[r]) > 1] or u.rooms
        next_t = self.t_send_start + offset if interval > 0 else None
        for n, seq in enumerate(msgs):
            if next_t is not None:
                delay = next_t - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_t += interval
            if now() >= t_end:
                return
            room_id = rooms[n % len(rooms)]
            bid = f"{self.run_id}:{u.idx}:{seq}"
            txn = f"{self.run_id}-{seq}"
            path = f"{CS}/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{txn}"
            s = Sent(t0=0.0, sender=u.idx, room_id=room_id)
            body = {"msgtype": "m.text", "body": f"bench message {bid}",
                    "bench_id": bid, "bench_ts": 0}
            for attempt in range(MAX_SEND_ATTEMPTS):
                if attempt == 0:
                    s.t0 = now()
                    body["bench_ts"] = int(time.time() * 1000)
                    self.sent[bid] = s
                try:
                    st, data = await self.req("PUT", path, token=u.token, body=body)
                except Exception as e:  # noqa: BLE001
                    self.err(f"send:{type(e).__name__}", str(e))
                    await asyncio.sleep(0.5)
                    continue
                if st == 200:
                    s.t_ack = now()
                    s.event_id = data.get("event_id")
                    s.expected = len(self.room_members[room_id]) - 1
                    self.expected_deliveries += s.expected
                    self.acked += 1
                    self.ack_latencies.append(s.t_ack - s.t0)
                    self.ack_times.append(s.t_ack)
                    self.t_last_ack = s.t_ack
                    break
                if st == 429:
                    self.rate_limited += 1
                    self.err("send:429")
                    await asyncio.sleep(min(data.get("retry_after_ms", 500), 5000) / 1000)
                    continue
                self.err(f"send:{st}", json.dumps(data))
                break
            if s.t_ack is None:
                self.send_failed += 1

    # -------------------------------------------------------------- rss sampler
    async def rss_sampler(self) -> None:
        pid = self.a.pid
        while not self.rss_stop.is_set():
            st = read_proc_status(pid)
            if "VmRSS" in st:
                self.rss_samples.append((now() - self.t_origin, st["VmRSS"]))
            try:
                await asyncio.wait_for(self.rss_stop.wait(), self.a.rss_interval)
            except asyncio.TimeoutError:
                pass

    # -------------------------------------------------------------- main
    async def run(self) -> dict[str, Any]:
        a = self.a
        connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            self.session = session
            rss_task = None
            cpu0 = None
            rss_start = None
            if a.pid:
                if not Path(f"/proc/{a.pid}").exists():
                    raise BenchError(f"--pid {a.pid}: no such process")
                rss_start = read_proc_status(a.pid).get("VmRSS")
                cpu0 = read_proc_cpu_seconds(a.pid)
                rss_task = asyncio.create_task(self.rss_sampler())

            await self.fetch_server_info()
            print(f"target {self.base}  server={server_str(self.server_info)}  run_id={self.run_id}")
            print("setup:")
            t_setup = now()
            try:
                await asyncio.wait_for(self.setup(), a.setup_timeout)
            except asyncio.TimeoutError:
                raise BenchError(f"setup did not finish within --setup-timeout {a.setup_timeout}s")
            self.phase_times["setup_total_s"] = now() - t_setup
            rss_after_setup = read_proc_status(a.pid).get("VmRSS") if a.pid else None
            cpu_after_setup = read_proc_cpu_seconds(a.pid) if a.pid else None

            # ---- sync loops
            hard_deadline = now() + a.duration + a.drain_timeout + SYNC_TIMEOUT_MS / 1000 + 60
            sync_tasks = [asyncio.create_task(self.sync_loop(u, hard_deadline)) for u in self.users]
            await asyncio.sleep(a.warmup)  # let every long-poll reach the server

            # ---- senders: K messages in total, spread round-robin over users that share a room
            senders = [u for u in self.users if any(len(self.room_members[r]) > 1 for r in u.rooms)]
            if a.senders:
                senders = senders[: a.senders]
            if not senders:
                raise BenchError("no user shares a room with anyone: increase --users or lower --rooms")
            plan: dict[int, list[int]] = defaultdict(list)
            for seq in range(a.messages):
                plan[senders[seq % len(senders)].idx].append(seq)
            interval = len(senders) / a.rate if a.rate > 0 else 0.0
            print(f"send phase: {a.messages} messages from {len(senders)} senders "
                  f"({'unpaced, 1 in flight per sender' if not a.rate else f'paced at {a.rate}/s total'}), "
                  f"max {a.duration}s")
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            self.loadavg_start = os.getloadavg()
            busy0 = read_system_busy_seconds()
            cpu_load0 = read_proc_cpu_seconds(a.pid) if a.pid else None
            self.t_send_start = now()
            t_end = self.t_send_start + a.duration
            send_tasks = [
                asyncio.create_task(self.sender(
                    self.users[i], msgs, t_end, interval,
                    (k / len(senders)) * interval if interval else 0.0))
                for k, (i, msgs) in enumerate(plan.items())
            ]
            progress = asyncio.create_task(self.progress(t_end))
            try:
                await asyncio.wait_for(asyncio.gather(*send_tasks), a.duration + a.request_timeout + 5)
            except asyncio.TimeoutError:
                for t in send_tasks:
                    t.cancel()
                self.err("send:phase_timeout")
            t_send_end = now()
            self.sending_done = True
            # ---- drain: wait for outstanding deliveries
            if len(self.delivered) >= self.expected_deliveries:
                self.all_delivered.set()
            try:
                await asyncio.wait_for(self.all_delivered.wait(), a.drain_timeout)
            except asyncio.TimeoutError:
                pass
            t_drain_end = now()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            self.loadavg_end = os.getloadavg()
            self.client_cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            busy1 = read_system_busy_seconds()
            cpu_load1 = read_proc_cpu_seconds(a.pid) if a.pid else None
            wall = t_drain_end - self.t_send_start
            if busy0 is not None and busy1 is not None and wall > 0:
                srv = (cpu_load1 - cpu_load0) if cpu_load0 is not None and cpu_load1 is not None else 0.0
                self.machine_cpu = {
                    "wall_s": round(wall, 2),
                    "all_processes_cores": round((busy1 - busy0) / wall, 2),
                    "server_cores": round(srv / wall, 2) if a.pid else None,
                    "bench_client_cores": round(self.client_cpu_s / wall, 2),
                    # what else was running (e.g. a cargo build) while we measured
                    "other_processes_cores": round(max(0.0, (busy1 - busy0) - srv - self.client_cpu_s) / wall, 2)
                                             if a.pid else None,
                }
            progress.cancel()
            self.stop_sync.set()
            for t in sync_tasks:
                t.cancel()
            await asyncio.gather(*sync_tasks, progress, return_exceptions=True)

            rss_end = cpu_end = hwm = None
            if a.pid:
                stt = read_proc_status(a.pid)
                rss_end, hwm = stt.get("VmRSS"), stt.get("VmHWM")
                cpu_end = read_proc_cpu_seconds(a.pid)
                self.rss_stop.set()
                await rss_task

        return self.result(t_send_end, t_drain_end, rss_start, rss_after_setup, rss_end, hwm,
                           cpu0, cpu_after_setup, cpu_end)

    async def progress(self, t_end: float) -> None:
        while True:
            await asyncio.sleep(5)
            el = now() - self.t_send_start
            print(f"  t+{el:5.1f}s acked {self.acked}/{self.a.messages} "
                  f"delivered {len(self.delivered)}/{self.expected_deliveries} errors {sum(self.errors.values())}",
                  flush=True)

    def result(self, t_send_end, t_drain_end, rss_start, rss_setup, rss_end, hwm,
               cpu0, cpu_setup, cpu_end) -> dict[str, Any]:
        a = self.a
        t0 = self.t_send_start
        send_window = (self.t_last_ack - t0) if self.t_last_ack else None
        deliv_window = (self.t_last_delivery - t0) if self.t_last_delivery else None
        timeline: dict[int, dict[str, int]] = defaultdict(lambda: {"acked": 0, "delivered": 0})
        for t in self.ack_times:
            timeline[int(t - t0)]["acked"] += 1
        for t in self.delivery_times:
            timeline[int(t - t0)]["delivered"] += 1
        rss_peak = max((kb for _, kb in self.rss_samples), default=None)
        kib_to_mib = (lambda x: round(x / 1024, 1) if x is not None else None)
        res: dict[str, Any] = {
            "benchmark": "send-to-sync-delivery",
            "tool": "bench/matrix_bench.py",
            "run_id": self.run_id,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (now() - self.t_origin))),
            "target": {"url": self.base, **self.server_info},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                        "mem_total_gib": mem_total_gib(),
                        "loadavg_at_send_start": [round(x, 2) for x in self.loadavg_start],
                        "loadavg_at_end": [round(x, 2) for x in self.loadavg_end],
                        "cpu_during_load_phase": self.machine_cpu},
            "config": {
                "users": a.users, "rooms": a.rooms, "rooms_per_user": min(a.rooms_per_user, a.rooms),
                "messages_total": a.messages, "senders": len({s.sender for s in self.sent.values()}),
                "rate_per_s": a.rate or None, "duration_cap_s": a.duration, "drain_timeout_s": a.drain_timeout,
                "preset": a.preset, "filter": self.filter_mode_used, "timeline_limit": a.timeline_limit,
                "sync_timeout_ms": SYNC_TIMEOUT_MS,
                "registration": "m.login.registration_token" if a.registration_token else "m.login.dummy",
            },
            "setup_s": {k: round(v, 3) for k, v in self.phase_times.items()},
            "sends": {
                "attempted": len(self.sent), "acked": self.acked, "failed": self.send_failed,
                "send_window_s": round(send_window, 3) if send_window else None,
                "sustained_msgs_per_s": round(self.acked / send_window, 2) if send_window else None,
                "ack_latency_ms": summarize_ms(self.ack_latencies),
            },
            "deliveries": {
                "expected": self.expected_deliveries, "received": len(self.delivered),
                "missing": max(0, self.expected_deliveries - len(self.delivered)),
                "duplicates": self.duplicates, "to_non_members": self.unexpected,
                "limited_timelines": self.limited_timelines,
                "deliveries_per_s": round(len(self.delivered) / deliv_window, 2) if deliv_window else None,
                "latency_ms": summarize_ms(self.latencies),
                "own_echo_latency_ms": summarize_ms(self.echo_latencies),
            },
            "errors": {"total": sum(self.errors.values()), "by_kind": dict(self.errors),
                       "samples": self.error_samples, "rate_limited_429": self.rate_limited},
            "phases_s": {"send": round(t_send_end - t0, 3), "drain": round(t_drain_end - t_send_end, 3)},
            "client_cpu_s_load_phase": round(self.client_cpu_s, 2),
            "timeline_per_s": [{"t": k, **timeline[k]} for k in sorted(timeline)],
        }
        if a.pid:
            res["server_process"] = {
                "pid": a.pid,
                "rss_mib": {"start": kib_to_mib(rss_start), "after_setup": kib_to_mib(rss_setup),
                            "peak_sampled": kib_to_mib(rss_peak), "end": kib_to_mib(rss_end),
                            "vm_hwm_lifetime": kib_to_mib(hwm)},
                "rss_sample_interval_s": a.rss_interval,
                "cpu_s": {"setup": round(cpu_setup - cpu0, 2) if cpu0 is not None and cpu_setup is not None else None,
                          "load": round(cpu_end - cpu_setup, 2) if cpu_setup is not None and cpu_end is not None else None},
                "rss_samples": [[round(t, 2), kb] for t, kb in self.rss_samples],
            }
        return res


def server_str(info: dict[str, Any]) -> str:
    srv = info.get("server")
    if isinstance(srv, dict):
        return f"{srv.get('name', '?')} {srv.get('version', '')}".strip()
    return str(srv) if srv else "unknown server"


def print_summary(r: dict[str, Any]) -> None:
    s, d, c = r["sends"], r["deliveries"], r["config"]
    lat, ack = d["latency_ms"], s["ack_latency_ms"]

    def f(x, unit=""):
        return "-" if x is None else f"{x}{unit}"

    print()
    print("=" * 72)
    print(f"send-to-sync-delivery  {r['target']['url']}  ({server_str(r['target'])})")
    print(f"  users={c['users']} rooms={c['rooms']} rooms/user={c['rooms_per_user']} "
          f"messages={c['messages_total']} senders={c['senders']} rate={f(c['rate_per_s'], '/s') if c['rate_per_s'] else 'unpaced'} "
          f"preset={c['preset']} filter={c['filter']}")
    print(f"  setup: {r['setup_s']}   loadavg at send start {r['machine']['loadavg_at_send_start']}")
    print(f"  sends: {s['acked']}/{s['attempted']} acked, {s['failed']} failed, "
          f"window {f(s['send_window_s'], 's')} -> sustained {f(s['sustained_msgs_per_s'])} msgs/s")
    print(f"  PUT ack latency ms:  p50 {f(ack.get('p50'))}  p95 {f(ack.get('p95'))}  "
          f"p99 {f(ack.get('p99'))}  max {f(ack.get('max'))}")
    print(f"  deliveries: {d['received']}/{d['expected']} (missing {d['missing']}, dup {d['duplicates']}, "
          f"limited timelines {d['limited_timelines']}), {f(d['deliveries_per_s'])} deliveries/s")
    print(f"  SEND->SYNC latency ms: p50 {f(lat.get('p50'))}  p95 {f(lat.get('p95'))}  "
          f"p99 {f(lat.get('p99'))}  max {f(lat.get('max'))}  (mean {f(lat.get('mean'))}, n={lat['count']})")
    print(f"  errors: {r['errors']['total']} {r['errors']['by_kind'] or ''}   "
          f"(bench client CPU during load: {r['client_cpu_s_load_phase']}s)")
    sp = r.get("server_process")
    if sp:
        m = sp["rss_mib"]
        print(f"  server pid {sp['pid']} RSS MiB: start {f(m['start'])}  after setup {f(m['after_setup'])}  "
              f"peak {f(m['peak_sampled'])}  end {f(m['end'])}  (VmHWM {f(m['vm_hwm_lifetime'])})")
        print(f"  server CPU s: setup {f(sp['cpu_s']['setup'])}  load phase {f(sp['cpu_s']['load'])}")
    mc = r["machine"].get("cpu_during_load_phase") or {}
    if mc:
        print(f"  CPU cores busy during load phase ({mc['wall_s']}s): all {mc['all_processes_cores']}  "
              f"server {f(mc['server_cores'])}  bench {mc['bench_client_cores']}  "
              f"OTHER {f(mc['other_processes_cores'])}  (of {r['machine']['cpus']})")
    print("=" * 72)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Matrix send-to-sync-delivery load generator (see bench/README.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", required=True, help="homeserver base URL, e.g. http://127.0.0.1:8008")
    p.add_argument("--users", type=int, default=10, help="number of users to register (each runs a /sync loop)")
    p.add_argument("--rooms", type=int, default=5, help="number of rooms")
    p.add_argument("--rooms-per-user", type=int, default=1,
                   help="each user joins this many rooms (round-robin: user i is in rooms (i+j) %% M)")
    p.add_argument("--messages", type=int, default=200,
                   help="TOTAL number of messages sent, spread round-robin over the senders")
    p.add_argument("--senders", type=int, default=0, help="limit the number of sending users (0 = every user)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="target total send rate in msgs/s (0 = unpaced: each sender keeps one PUT in flight)")
    p.add_argument("--duration", type=float, default=120.0, help="hard cap on the send phase, seconds")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="after the last send, wait at most this long for outstanding deliveries")
    p.add_argument("--setup-timeout", type=float, default=180.0, help="hard cap on register/rooms/joins, seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds between starting /sync loops and first send")
    p.add_argument("--request-timeout", type=float, default=60.0, help="per-request timeout (non-sync), seconds")
    p.add_argument("--setup-concurrency", type=int, default=4, help="parallel requests during setup")
    p.add_argument("--preset", choices=["private_chat", "public_chat"], default="private_chat",
                   help="private_chat: creator invites, members join; public_chat: members just join")
    p.add_argument("--filter", choices=["upload", "inline", "none"], default="upload",
                   help="sync filter: upload via POST /user/{id}/filter (falls back to inline), inline JSON, or none")
    p.add_argument("--timeline-limit", type=int, default=500,
                   help="sync filter room.timeline.limit (too low -> limited timelines -> missed deliveries)")
    p.add_argument("--registration-token", default=None,
                   help="use the m.login.registration_token UIA stage with this token (else m.login.dummy)")
    p.add_argument("--user-prefix", default="bench_", help="localpart prefix; run id and index are appended")
    p.add_argument("--run-id", default=None, help="run id (default random); must be unique per server")
    p.add_argument("--pid", type=int, default=None, help="server PID: sample VmRSS from /proc/PID/status")
    p.add_argument("--rss-interval", type=float, default=0.25, help="RSS sampling interval, seconds")
    p.add_argument("--out", default=None, help="write the JSON result here (default bench/results/<run_id>.json)")
    p.add_argument("--label", default=None, help="free-form label stored in the JSON (e.g. 'synapse 1.x')")
    p.add_argument("--allow-remote", action="store_true", help="allow non-loopback --url (off by default)")
    a = p.parse_args(argv)
    if a.users < 2:
        p.error("--users must be >= 2")
    if a.rooms < 1 or a.messages < 1:
        p.error("--rooms and --messages must be >= 1")
    if a.users > 2000 or a.messages > 1_000_000:
        p.error("refusing absurd load (--users <= 2000, --messages <= 1e6)")
    if a.duration <= 0 or a.duration > 3600:
        p.error("--duration must be in (0, 3600]")
    return a


def main() -> None:
    a = parse_args()
    check_loopback(a.url, a.allow_remote)
    bench = Bench(a)
    overall = a.setup_timeout + a.duration + a.drain_timeout + a.request_timeout + SYNC_TIMEOUT_MS / 1000 + 60
    try:
        res = asyncio.run(asyncio.wait_for(bench.run(), overall))
    except asyncio.TimeoutError:
        sys.exit(f"overall bound of {overall:.0f}s hit; aborting")
    except RuntimeError as e:
        sys.exit(f"matrix_bench: {e}")
    if a.label:
        res["label"] = a.label
    out = Path(a.out) if a.out else BENCH_DIR / "results" / f"{res['run_id']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print_summary(res)
    print(f"JSON result: {out}")


if __name__ == "__main__":
    main()
