"""Does `rlt-prep serve` hold up under load: throughput, latency, errors and memory.

N client threads post the sample videos' bytes to ``POST /v1/tokenize`` on loopback for T seconds (at
most ``--max-requests`` in all), after a warm-up, against one server (embedded Ray, one replica,
default options: 16 frames x 4, 224 crop, 2 clips per video). Reports requests and clips per
second, p50/p99 latency, errors (goal: 0), and the replica's resident memory after the warm-up and
at the end (goal: flat). The first answer of each video is checked against `tokenize_video`.

Loopback only: the server binds 127.0.0.1 and Ray's node address is 127.0.0.1.

Found by it: the replica's private memory grew without bound under load (385 MB to 1.3 GB in 60 s
with 4 clients on 2 cores), glibc serving the MB-sized buffers of each batch from heaps that
fragment once its mmap threshold has risen; with `malloc_trim` after each batch it stays flat
(344 to 358 MB over 60 s) at the same throughput (22 against 23 requests/s).

    python benchmarks/bench_serve.py [--clients 4] [--seconds 20] [--max-requests 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from rlt.pipeline import ClipSampling, read_manifest, tokenize_video
from rlt.samples import make_samples
from rlt.serve import Client, ServeConfig, ServeError, start

CLIPS_PER_VIDEO = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(client: Client, videos: list[bytes], *, clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    sent = 0

    def worker(index: int) -> None:
        nonlocal sent
        k = index
        while time.monotonic() < deadline:
            with lock:
                if sent >= max_requests:
                    return
                sent += 1
            data = videos[k % len(videos)]
            k += clients
            start_s = time.perf_counter()
            try:
                client.tokenize(data, clips_per_video=CLIPS_PER_VIDEO)
            except (ServeError, OSError) as e:
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - start_s)

    rss_mb: list[tuple[float, float]] = []
    done = threading.Event()

    def monitor() -> None:  # the replica's memory every 2 s, to tell growth from a plateau
        while not done.wait(2.0):
            status = client.status()
            rss_mb.append((round(status["rss_bytes"] / 2**20, 1), round(status["rss_anon_bytes"] / 2**20, 1)))

    begin = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in [*threads, watcher := threading.Thread(target=monitor)]:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    done.set()
    watcher.join()
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "clips_per_s": CLIPS_PER_VIDEO * len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "rss_and_private_mb_every_2s": rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before memory is first read")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.clients < 1 or not 0 < args.seconds <= 600 or args.max_requests < 1:
        parser.error("--clients >= 1, 0 < --seconds <= 600 and --max-requests >= 1")

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RLT_PREP_CACHE"] = str(Path(tmp) / "cache")  # the replica's uploads go here
        manifest = make_samples(Path(tmp) / "videos", num_videos=args.videos)
        paths = [row.path for row in read_manifest(manifest).rows]
        videos = [Path(p).read_bytes() for p in paths]
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
        try:
            with start(ServeConfig(port=_free_port())) as server:
                client = Client(server.url, timeout=120)
                sampling = ClipSampling(clips_per_video=CLIPS_PER_VIDEO)
                for path, data in zip(paths, videos, strict=True):
                    got, want = (
                        client.tokenize(data, clips_per_video=CLIPS_PER_VIDEO),
                        tokenize_video(path, sampling=sampling),
                    )
                    if not (torch.equal(got.tokens, want.tokens) and torch.equal(got.lengths, want.lengths)):
                        raise SystemExit(f"{path}: the server's tokens differ from tokenize_video's")
                load(client, videos, clients=args.clients, seconds=args.warmup, max_requests=args.max_requests)
                before = client.status()
                result = load(
                    client, videos, clients=args.clients, seconds=args.seconds, max_requests=args.max_requests
                )
                after = client.status()
        finally:
            ray.shutdown()
    result |= {
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "clients": args.clients,
        "seconds": args.seconds,
        "options": {"clips_per_video": CLIPS_PER_VIDEO, "num_frames": 16, "frame_interval": 4, "size": 224},
        "video": f"{args.videos} sample videos, 96 frames 320x240 H.264",
        "rss_before_mb": before["rss_bytes"] / 2**20,
        "rss_after_mb": after["rss_bytes"] / 2**20,
        "rss_growth": after["rss_bytes"] / before["rss_bytes"],
        "private_before_mb": before["rss_anon_bytes"] / 2**20,
        "private_after_mb": after["rss_anon_bytes"] / 2**20,
        "private_growth": after["rss_anon_bytes"] / before["rss_anon_bytes"],
        "kept_ratio": after["kept_ratio"],
        "server_videos_failed": after["videos_failed"] - before["videos_failed"],
    }
    r = result
    print(f"{args.clients} clients x {args.seconds:g} s on {r['cores']} cores ({r['machine']}):")
    print(f"  {r['ok']} ok, {r['errors']} errors, {r['requests_per_s']:.2f} req/s, {r['clips_per_s']:.2f} clips/s")
    print(f"  latency p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
    print(f"  replica RSS {r['rss_before_mb']:.0f} MB after the warm-up, {r['rss_after_mb']:.0f} MB at the end")
    print(f"  ({r['rss_growth']:.3f}x); private {r['private_before_mb']:.0f} -> {r['private_after_mb']:.0f} MB")
    print(f"  ({r['private_growth']:.3f}x); (RSS, private) MB every 2 s: {r['rss_and_private_mb_every_2s']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
