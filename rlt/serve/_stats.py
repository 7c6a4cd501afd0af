"""What a replica has done: the counters behind ``/v1/status`` and ``/metrics``."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

# Upper bounds of the latency histogram, in seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The history behind the status page's throughput chart: a sample at most every 5 s, the last 720
# (an hour when busy; longer when idle, as nothing is sampled while nothing is asked or done).
HISTORY_EVERY_S = 5.0
HISTORY_SAMPLES = 720
# The failed videos the status page lists, newest last.
ERRORS_KEPT = 50


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
        # (Unix time, videos done, kept tokens, videos failed), from the start on.
        self.history: deque[tuple[float, int, int, int]] = deque([(self.started, 0, 0, 0)], maxlen=HISTORY_SAMPLES)
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)

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
            self._sample(time.time())

    def failed(self, *, video: str, reason: str) -> None:
        """One video that could not be tokenized, and why (kept among the last `ERRORS_KEPT`)."""
        with self._lock:
            self.videos_failed += 1
            now = time.time()
            self.errors.append({"time": now, "video": video, "reason": reason})
            self._sample(now)

    def _sample(self, now: float) -> None:
        """Adds the counters to the history if its last sample is `HISTORY_EVERY_S` old; call with the lock held."""
        if now - self.history[-1][0] >= HISTORY_EVERY_S:
            self.history.append((now, self.videos_done, self.kept_tokens, self.videos_failed))

    def snapshot(self) -> dict[str, Any]:
        """``/v1/status``: videos done, queued (in flight) and failed, throughput since the start,
        the kept-token ratio, the requests by HTTP status, this replica's resident memory, the
        history of the counters (``[[time, videos_done, kept_tokens, videos_failed], ...]``, ending
        with now's) and the last failed videos (``[{"time", "video", "reason"}, ...]``)."""
        with self._lock:
            now = time.time()
            self._sample(now)
            uptime = max(now - self.started, 1e-9)
            current = (now, self.videos_done, self.kept_tokens, self.videos_failed)
            history = [list(sample) for sample in self.history]
            if history[-1] != list(current):
                history.append(list(current))
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
                "history": history,
                "errors": [dict(error) for error in self.errors],
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
