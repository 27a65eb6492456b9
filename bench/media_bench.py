#!/usr/bin/env python3
"""Media repository load generator: upload and download throughput (MB/s) and thumbnail latency.

Stdlib only (http.client over keep-alive connections, one per worker thread), so it needs
no venv. Against any homeserver on loopback:

  1. registers one user (m.login.dummy, or --registration-token);
  2. uploads --files files of --size-mib MiB of random bytes with --concurrency workers
     (POST /_matrix/media/v3/upload) and reports MB/s and per-request latency;
  3. downloads each of them --downloads times through the authenticated endpoint
     (GET /_matrix/client/v1/media/download) and checks every byte;
  4. uploads --images PNG photos (--image-size WxH, generated here) and asks each for a
     320x240 scale and a 96x96 crop thumbnail twice: the first request generates it, the
     second is served from the server's cache; reports both latencies;
  5. prints a summary and writes --out JSON. With --pid, reports the server's peak RSS.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return round(xs[k], 2)


class Conn:
    """One keep-alive connection per thread."""

    local = threading.local()

    def __init__(self, host, port):
        self.host, self.port = host, port

    def request(self, method, path, body=None, headers=None):
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.local.c = c
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, data
        except (http.client.HTTPException, OSError):
            self.local.c = None
            raise


def png(w, h, seed):
    rnd = random.Random(seed)
    rows = []
    for y in range(h):
        base = rnd.randrange(256)
        rows.append(b"\x00" + bytes(((x * 3 + y + base) & 0xFF) for x in range(w * 3)))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))


def rss_peak_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--size-mib", type=float, default=5.0)
    ap.add_argument("--downloads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--image-size", default="1600x1200")
    ap.add_argument("--registration-token")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("only loopback targets")
    conn = Conn(u.hostname, u.port or 80)

    user = "media" + os.urandom(4).hex()
    auth = {"type": "m.login.registration_token", "token": a.registration_token} if a.registration_token else {"type": "m.login.dummy"}
    st, body = conn.request("POST", "/_matrix/client/v3/register", json.dumps({"username": user, "password": "bench-password-1", "auth": auth}), {"Content-Type": "application/json"})
    if st == 401 and b"session" in body:
        auth["session"] = json.loads(body)["session"]
        st, body = conn.request("POST", "/_matrix/client/v3/register", json.dumps({"username": user, "password": "bench-password-1", "auth": auth}), {"Content-Type": "application/json"})
    if st != 200:
        sys.exit(f"register failed: {st} {body[:200]!r}")
    token = json.loads(body)["access_token"]
    H = {"Authorization": f"Bearer {token}"}

    size = int(a.size_mib * 1024 * 1024)
    payloads = [os.urandom(size) for _ in range(a.files)]
    result = {"label": a.label, "url": a.url, "files": a.files, "size_mib": a.size_mib, "concurrency": a.concurrency}

    def upload(i):
        t = time.perf_counter()
        st, b = conn.request("POST", f"/_matrix/media/v3/upload?filename=f{i}.bin", payloads[i], {**H, "Content-Type": "application/octet-stream"})
        if st != 200:
            raise RuntimeError(f"upload {st} {b[:200]!r}")
        return time.perf_counter() - t, json.loads(b)["content_uri"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as ex:
        ups = list(ex.map(upload, range(a.files)))
    up_s = time.perf_counter() - t0
    uris = [u for _, u in ups]
    result["upload_MBps"] = round(a.files * size / 1e6 / up_s, 1)
    result["upload_ms_p50"] = pct([d * 1000 for d, _ in ups], 50)
    result["upload_ms_p99"] = pct([d * 1000 for d, _ in ups], 99)

    def download(j):
        i = j % a.files
        server, mid = uris[i][len("mxc://"):].split("/", 1)
        t = time.perf_counter()
        st, b = conn.request("GET", f"/_matrix/client/v1/media/download/{server}/{mid}", None, H)
        if st != 200 or b != payloads[i]:
            raise RuntimeError(f"download {st}, {len(b)} bytes, equal={b == payloads[i]}")
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as ex:
        downs = list(ex.map(download, range(a.files * a.downloads)))
    down_s = time.perf_counter() - t0
    result["download_MBps"] = round(a.files * a.downloads * size / 1e6 / down_s, 1)
    result["download_ms_p50"] = pct([d * 1000 for d in downs], 50)
    result["download_ms_p99"] = pct([d * 1000 for d in downs], 99)

    w, h = (int(x) for x in a.image_size.split("x"))
    images = [png(w, h, i) for i in range(a.images)]
    image_uris = []
    for i, img in enumerate(images):
        st, b = conn.request("POST", f"/_matrix/media/v3/upload?filename=p{i}.png", img, {**H, "Content-Type": "image/png"})
        if st != 200:
            sys.exit(f"image upload {st}")
        image_uris.append(json.loads(b)["content_uri"])

    lat = {"first": [], "cached": []}

    def thumbs(uri):
        server, mid = uri[len("mxc://"):].split("/", 1)
        out = []
        for q in ("width=320&height=240&method=scale", "width=96&height=96&method=crop"):
            for kind in ("first", "cached"):
                t = time.perf_counter()
                st, b = conn.request("GET", f"/_matrix/client/v1/media/thumbnail/{server}/{mid}?{q}", None, H)
                if st != 200 or not b:
                    raise RuntimeError(f"thumbnail {st}")
                out.append((kind, (time.perf_counter() - t) * 1000))
        return out

    with ThreadPoolExecutor(a.concurrency) as ex:
        for res in ex.map(thumbs, image_uris):
            for kind, ms in res:
                lat[kind].append(ms)
    for kind in ("first", "cached"):
        result[f"thumbnail_{kind}_ms_p50"] = pct(lat[kind], 50)
        result[f"thumbnail_{kind}_ms_p99"] = pct(lat[kind], 99)
        result[f"thumbnail_{kind}_ms_mean"] = round(statistics.mean(lat[kind]), 2) if lat[kind] else None
    result["image"] = f"{w}x{h} PNG, {round(len(images[0]) / 1e6, 2)} MB"
    if a.pid:
        result["server_rss_peak_mib"] = rss_peak_mib(a.pid)

    print(json.dumps(result, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
