"""What a replica has done: the counters behind ``/v1/status`` and ``/metrics``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

# Upper bounds of the latency histogram, in seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Stats:
    """Thread-safe counters of one replica (the event loop and the decoding thread both count)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.videos_done = self.videos_failed = self.in_flight = 0
        self.clips = self.kept_tokens = self.dense_tokens = 0
        self.responses: Counter[int] = Counter()
        self.latency_sum = 0.0
        self.latency_buckets = [0] * len(LATENCY_BUCKETS)

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, code: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.responses[code] += 1
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_buckets[i] += 1

    def done(self, *, clips: int, kept: int, dense: int) -> None:
        with self._lock:
            self.videos_done += 1
            self.clips += clips
            self.kept_tokens += kept
            self.dense_tokens += dense

    def failed(self, videos: int) -> None:
        with self._lock:
            self.videos_failed += videos

    def snapshot(self) -> dict[str, Any]:
        """``/v1/status``: videos done, queued (in flight) and failed, throughput since the start,
        the kept-token ratio, the requests by HTTP status, and this replica's resident memory."""
        with self._lock:
            uptime = max(time.time() - self.started, 1e-9)
            return {
                "videos_done": self.videos_done,
                "videos_queued": self.in_flight,
                "videos_failed": self.videos_failed,
                "clips": self.clips,
                "kept_tokens": self.kept_tokens,
                "dense_tokens": self.dense_tokens,
                "kept_ratio": self.kept_tokens / self.dense_tokens if self.dense_tokens else None,
                "uptime_s": uptime,
                "videos_per_s": self.videos_done / uptime,
                "clips_per_s": self.clips / uptime,
                "tokens_per_s": self.kept_tokens / uptime,
                "requests": {str(code): n for code, n in sorted(self.responses.items())},
                **_memory(),
            }

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format (version 0.0.4)."""
        s = self.snapshot()
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP rlt_serve_{name} {help}", f"# TYPE rlt_serve_{name} {kind}"])
            lines.extend(f"rlt_serve_{name}{labels} {_number(value)}" for labels, value in samples)

        metric("videos_done_total", "counter", "Videos tokenized.", [("", s["videos_done"])])
        metric("videos_failed_total", "counter", "Videos that could not be decoded.", [("", s["videos_failed"])])
        metric("videos_queued", "gauge", "Requests received and not yet answered.", [("", s["videos_queued"])])
        metric("clips_total", "counter", "Clips tokenized.", [("", s["clips"])])
        metric("kept_tokens_total", "counter", "Tokens kept by RLT.", [("", s["kept_tokens"])])
        metric("dense_tokens_total", "counter", "Tokens before RLT dropped any.", [("", s["dense_tokens"])])
        requests = [(f'{{code="{code}"}}', n) for code, n in s["requests"].items()]
        metric("requests_total", "counter", "Tokenize requests answered, by HTTP status.", requests)
        with self._lock:
            cumulative = list(self.latency_buckets)
            count, total = sum(self.responses.values()), self.latency_sum
        buckets = [(f'_bucket{{le="{bound:g}"}}', n) for bound, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        lines.extend(
            [
                "# HELP rlt_serve_request_seconds Tokenize request latency.",
                "# TYPE rlt_serve_request_seconds histogram",
                *(f"rlt_serve_request_seconds{suffix} {n}" for suffix, n in buckets),
                f'rlt_serve_request_seconds_bucket{{le="+Inf"}} {count}',
                f"rlt_serve_request_seconds_sum {total:g}",
                f"rlt_serve_request_seconds_count {count}",
            ]
        )
        metric("resident_memory_bytes", "gauge", "Resident memory of this replica.", [("", s["rss_bytes"])])
        if "rss_anon_bytes" in s:
            anon = [("", s["rss_anon_bytes"])]
            metric("resident_private_memory_bytes", "gauge", "Private (anonymous) resident memory.", anon)
        metric("uptime_seconds", "gauge", "Seconds since this replica started.", [("", s["uptime_s"])])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _memory() -> dict[str, int]:
    """This process's resident memory, and on Linux its private (anonymous) and shared parts: a Ray
    worker's resident memory also counts the pages of the shared object store it has touched, which
    grow towards the store's size and are not the process's own."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        kib = {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "RssAnon", "RssShmem")}
        return {"rss_bytes": kib["VmRSS"], "rss_anon_bytes": kib["RssAnon"], "rss_shmem_bytes": kib["RssShmem"]}
    except (OSError, KeyError, ValueError):
        import resource  # elsewhere: the peak, which is what there is

        return {"rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
