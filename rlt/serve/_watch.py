"""Watch mode: `rlt-prep serve DATASET --watch SOURCE` tokenizes new videos as they appear.

SOURCE is a manifest (``path,label`` CSV, read again every poll), a folder of videos, or an
object-store prefix (``s3://bucket/videos``). In a folder or under a prefix, a video's class is the
name of its first-level subfolder (``SOURCE/jumping/v1.mp4``), and videos directly in SOURCE get
class index 0. A file is taken once it looks the same (size and modification time) in two
scans in a row, so a video still being copied in is not read half-written; names starting with a
dot and partial-download suffixes are skipped.

Each round runs the new videos' shards and publishes the next index generation
(`rlt.tokenize_offline.GrowingDataset`). A failed video is listed in ``errors.jsonl`` and the
status once, and tried again only when asked (`Watcher.request_retry`, ``POST /v1/retry``, or
``--retry-failed`` at start). Stopping (`Watcher.stop`, on SIGTERM) takes no new shard, lets the
running ones commit, publishes them, and ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from rlt.dataset import ShardMeta
from rlt.dataset._remote import Store, is_url, local_path
from rlt.pipeline import ManifestError, read_manifest
from rlt.tokenize_offline._append import GrowingDataset, Video
from rlt.tokenize_offline._job import _identity

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .m2ts .mts .flv .wmv .ogv .3gp .y4m .mjpeg .mjpg".split()  # noqa: SIM905
)
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", "~")
ERRORS_KEPT = 50
HISTORY_KEPT = 720
HISTORY_EVERY_S = 2.0


class Source:
    """What is watched: a manifest file, a folder, or a URL prefix (a URL ending in ``.csv`` is a
    manifest)."""

    def __init__(self, location: str) -> None:
        self.location = location
        if is_url(location):
            self.kind = "manifest" if location.endswith(".csv") else "prefix"
        else:
            path = local_path(location)
            if path.is_dir():
                self.kind = "folder"
            elif path.is_file():
                self.kind = "manifest"
            else:
                raise FileNotFoundError(f"--watch {location}: no such file or folder")

    def scan(self) -> list[Video]:
        """The videos SOURCE lists now.

        Raises:
            ManifestError, OSError: the manifest or listing cannot be read now (perhaps being
                written); the watcher reports it and scans again at the next poll.
        """
        if self.kind == "manifest":
            return list(self._manifest())
        if self.kind == "folder":
            return list(self._folder())
        return list(self._prefix())

    def _manifest(self) -> Iterator[Video]:
        manifest = read_manifest(self.location)
        for row in manifest.rows:
            label: int | str = manifest.classes[row.label] if manifest.classes else row.label
            if isinstance(row.path, str):  # a URL
                yield Video(row.video, row.path, label, _found(row.path))
            else:
                # os.path.realpath, as the job does: a symlink loop is a video that fails to open.
                path = os.path.realpath(row.path)
                yield Video(row.video, path, label, _found(path))

    def _folder(self) -> Iterator[Video]:
        root = local_path(self.location)
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(files):
                if not _is_video_name(name):
                    continue
                path = Path(folder) / name
                relative = path.relative_to(root).as_posix()
                real = os.path.realpath(path)
                yield Video(relative, real, _label(relative), _found(real))

    def _prefix(self) -> Iterator[Video]:
        base = self.location.rstrip("/")
        for relative, size in Store(base).objects(""):
            if any(part.startswith(".") for part in relative.split("/")) or not _is_video_name(relative):
                continue
            yield Video(relative, f"{base}/{relative}", _label(relative), (size, 0))


def _is_video_name(name: str) -> bool:
    return (
        not name.startswith(".")
        and not name.endswith(PARTIAL_SUFFIXES)
        and PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES
    )


def _label(relative: str) -> int | str:
    """The first-level subfolder's name, or class index 0 for a video directly in SOURCE."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else 0


def _found(path: str) -> tuple[int, int] | None:
    """How a video looks now, as the job records it in the plan (None: not there)."""
    identity = _identity(path)
    return (identity[0], identity[1]) if identity else None


class Watcher:
    """Grows ``dataset`` from ``source`` until stopped; `status` is ``/v1/status``'s ``watch``.

    Args:
        dataset: the dataset to grow (its folder's lock is the caller's).
        source: what to watch.
        poll_s: seconds between scans.
        retry_failed: plan the failed videos again on the first round.
        on_status: called with `status` after every change (the server hands it to the replicas).
        retry_requested: called before every round; True plans the failed videos again (the
            server asks its control actor whether ``POST /v1/retry`` came).
    """

    def __init__(
        self,
        dataset: GrowingDataset,
        source: Source,
        *,
        poll_s: float = 2.0,
        retry_failed: bool = False,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        retry_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.dataset, self.source, self.poll_s = dataset, source, poll_s
        self.on_status, self.retry_requested = on_status, retry_requested
        self._stop = threading.Event()
        self._retry = threading.Event()
        if retry_failed:
            self._retry.set()
        self._lock = threading.Lock()
        self._previous: dict[str, tuple[int, int] | None] = {}  # the last scan
        self._reported: set[tuple[str, str]] = set()  # (video, reason) already in the errors
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)
        self.history: deque[list[float]] = deque(maxlen=HISTORY_KEPT)
        self.state = "starting"
        self.started = time.time()
        self.videos_queued = 0
        self.rounds = 0
        self._counts = {"videos_done": 0, "videos_failed": 0, "clips": 0, "kept_tokens": 0, "dense_tokens": 0}
        self._count_committed()
        # What earlier runs did does not count towards this one's throughput.
        self._done_at_start, self._kept_at_start = self._counts["videos_done"], self._counts["kept_tokens"]

    # --- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Takes no new work; `run` returns once the running shards have committed and are published."""
        self._stop.set()
        self.dataset.executor.stop()
        self._set_state("draining")

    def request_retry(self) -> None:
        """Plans the failed videos again at the next round."""
        self._retry.set()

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Rounds until stopped. A restart's first round finishes the shards a stopped run planned."""
        try:
            while True:
                self.round()
                if self._stop.wait(self.poll_s):
                    break
        finally:
            self._set_state("stopped")

    def round(self) -> int:
        """One scan, the shards of what it found, and their publication; returns shards written."""
        if self._stop.is_set():
            return 0
        if self.retry_requested is not None and self.retry_requested():
            self._retry.set()
        if self._retry.is_set():
            self._retry.clear()
            failed = self.dataset.retry()
            if failed:
                log.warning("trying %d failed videos again", len(failed))
                # They may fail again: then they are reported again.
                self._reported = {r for r in self._reported if r[0] not in failed}
                self._count_committed()
        self._plan_what_settled()
        pending = self.dataset.pending()
        written = 0
        if pending and not self._stop.is_set():
            self.videos_queued = sum(len(s.videos) for s in pending)
            self._set_state("tokenizing")
            written = self.dataset.run(self._on_shard)
            self.videos_queued = sum(len(s.videos) for s in self.dataset.pending())
        self.dataset.publish()
        self.rounds += 1
        self._set_state("draining" if self._stop.is_set() else "watching")
        return written

    def _plan_what_settled(self) -> None:
        try:
            found = self.source.scan()
        except (ManifestError, OSError) as e:
            self._error(self.source.location, f"cannot be read now, tried again at the next scan: {e}")
            return
        known = self.dataset.entries()
        settled = []
        scan: dict[str, tuple[int, int] | None] = {}
        for f in found:
            scan[f.video] = f.identity
            entry = known.get(f.video)
            if entry is not None:
                if f.identity is not None and len(entry) == 5 and tuple(entry[3:]) != f.identity:
                    self._error(f.video, "changed after it was tokenized: the dataset keeps the first version")
                continue
            # Taken once it looks the same in two scans: a file being copied in keeps growing.
            if f.video in self._previous and self._previous[f.video] == f.identity:
                settled.append(f)
        self._previous = scan
        for video, reason in self.dataset.add(settled):
            self._error(video, reason)

    def _on_shard(self, meta: ShardMeta) -> None:
        with self._lock:
            self._add(meta, None)
            self.videos_queued = max(self.videos_queued - meta.videos, 0)
        for error in meta.errors:
            self._error(error.video, error.reason)
        self._publish_status()

    def _count_committed(self) -> None:
        """Counts from the committed shards: a video counts once, by its last attempt."""
        with self._lock:
            for key in self._counts:
                self._counts[key] = 0
            owners = self.dataset.owners()
            for shard in self.dataset.shards():
                if self.dataset.committed(shard["name"]):
                    self._add(self.dataset.meta(shard["name"]), owners)

    def _add(self, meta: ShardMeta, owners: dict[str, str] | None) -> None:
        """Adds a committed shard's counts; with ``owners``, less its failed videos tried again later."""
        c = self._counts
        superseded = sum(owners.get(e.video) != meta.name for e in meta.errors) if owners else 0
        c["videos_done"] += meta.videos - superseded
        c["videos_failed"] += meta.failed - superseded
        c["clips"] += meta.rows
        c["kept_tokens"] += meta.tokens
        c["dense_tokens"] += meta.dense_tokens

    # --- status ----------------------------------------------------------------------------------

    def _error(self, video: str, reason: str) -> None:
        if (video, reason) in self._reported:
            return
        self._reported.add((video, reason))
        log.warning("error: %s: %s", video, reason)
        with self._lock:
            self.errors.append({"time": time.time(), "video": video, "reason": reason})
        self._publish_status()

    def _set_state(self, state: str) -> None:
        self.state = state
        self._publish_status()

    def status(self) -> dict[str, Any]:
        published = self.dataset.published
        with self._lock:
            now = time.time()
            c = dict(self._counts)
            if not self.history or now - self.history[-1][0] >= HISTORY_EVERY_S:
                self.history.append([now, c["videos_done"], c["kept_tokens"], c["videos_failed"]])
            uptime = max(now - self.started, 1e-9)
            return {
                "source": self.source.location,
                "dataset": self.dataset.output.name,
                "state": self.state,
                "generation": published.generation if published else 0,
                "shards": len(published.shards) if published else 0,
                "rounds": self.rounds,
                **c,
                "videos_queued": self.videos_queued,
                "kept_ratio": c["kept_tokens"] / c["dense_tokens"] if c["dense_tokens"] else None,
                "uptime_s": uptime,
                "videos_per_s": (c["videos_done"] - self._done_at_start) / uptime,
                "tokens_per_s": (c["kept_tokens"] - self._kept_at_start) / uptime,
                "errors": list(self.errors),
                "history": [list(sample) for sample in self.history],
            }

    def _publish_status(self) -> None:
        if self.on_status is not None:
            try:
                self.on_status(self.status())
            except Exception as e:  # the status is a view: it never stops the work
                log.warning("could not publish the watch status: %s", e)


def watch_prometheus(status: dict[str, Any] | None) -> str:
    """The watcher's counters in Prometheus' text format (none before its first status)."""
    if status is None:
        return ""
    lines: list[str] = []
    for name, kind, help, key in (
        ("watch_generation", "gauge", "Index generation last published.", "generation"),
        ("watch_shards", "gauge", "Shards the published index lists.", "shards"),
        (
            "watch_videos_done_total",
            "counter",
            "Videos of the dataset tokenized (failed ones included).",
            "videos_done",
        ),
        ("watch_videos_failed_total", "counter", "Videos of the dataset whose last attempt failed.", "videos_failed"),
        ("watch_videos_queued", "gauge", "Videos planned and not yet in a committed shard.", "videos_queued"),
        ("watch_clips_total", "counter", "Clips in the dataset's committed shards.", "clips"),
        ("watch_kept_tokens_total", "counter", "Tokens kept in the dataset's committed shards.", "kept_tokens"),
        ("watch_dense_tokens_total", "counter", "Tokens before RLT in the committed shards.", "dense_tokens"),
    ):
        lines += [
            f"# HELP rlt_serve_{name} {help}",
            f"# TYPE rlt_serve_{name} {kind}",
            f"rlt_serve_{name} {status[key]}",
        ]
    return "\n".join(lines) + "\n"
