"""`rlt-prep tokenize`: plan shards, run them as Ray tasks, write the index last.

The plan (which videos go to which shard) is written once and extended, never reshuffled, so a
re-run after a crash redoes exactly the shards that were not committed and produces the same bytes;
a re-run with new manifest rows plans new shards for the new videos only.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rlt._lock import lock_output
from rlt.dataset import (
    SHARDS,
    DatasetIndex,
    ShardMeta,
    Totals,
    remove_temporary_files,
    shard_folder,
)
from rlt.dataset._remote import Store, is_url
from rlt.pipeline import read_manifest
from rlt.tokenize_offline._config import TokenizeConfig
from rlt.tokenize_offline._executor import RAY_AFTER, Executor
from rlt.tokenize_offline._output import Output
from rlt.tokenize_offline._shard import ShardSpec

log = logging.getLogger(__name__)

TASKS_PER_WORKER = 4


class ConfigMismatchError(ValueError):
    """``OUT`` holds a dataset made with another configuration."""


@dataclass(frozen=True)
class JobSummary(Totals):
    """What a run of the job did, and what the dataset holds (its index's `Totals`)."""

    out: Path | str  # a str for a URL
    shards: int
    shards_written: int
    seconds: float
    task_seconds: float = 0.0
    work_seconds: float = 0.0

    @property
    def write_overhead(self) -> float:
        """Time the shard tasks of this run spent writing and committing, over their decode+RLT time."""
        return (self.task_seconds - self.work_seconds) / self.work_seconds if self.work_seconds else 0.0

    @property
    def kept_ratio(self) -> float:
        return self.tokens / max(self.dense_tokens, 1)


@dataclass
class Progress:
    """Counts handed to the progress callback after each shard."""

    videos_done: int
    videos_total: int
    clips: int
    tokens: int
    dense_tokens: int
    failed: int


def tokenize_dataset(
    manifest: str | Path,
    out: str | Path,
    config: TokenizeConfig = TokenizeConfig(),  # noqa: B008 (frozen)
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    gpus_per_task: float | None = None,
    videos_per_batch: int = 8,
    ray_after: float = RAY_AFTER,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> JobSummary:
    """Decodes and tokenizes every video of ``manifest`` once, into sharded files under ``out``.

    Args:
        manifest: CSV of ``path,label``.
        out: the dataset folder; nothing is written outside it.
        config: sampling, RLT options, storage and shard size.
        ray_address: an existing Ray cluster (``ray://`` or ``host:port``); default is the
            ``RAY_ADDRESS`` environment variable, else an embedded local Ray.
        workers: shards in flight at once (and CPUs of the embedded Ray); default: the cores this
            process may use (a cluster's CPUs with ``ray_address``).
        overwrite: replace a dataset in ``out`` made with another configuration.
        gpus_per_task: GPU fraction each task asks Ray for; default 0.25 where the cluster has GPUs.
        videos_per_batch: videos decoded together inside a shard (one DALI batch).
        ray_after: without an address, ``workers`` threads of this process start on the shards,
            and those still left after this many seconds go to an embedded Ray (default 0: Ray
            starts at once and the threads fill its start-up). One worker never starts Ray. See
            `rlt.tokenize_offline._executor`.
        retry_failed: decode again the videos listed in ``errors.jsonl`` (their shards are written
            again; the others are kept byte for byte).
        on_progress: called after each committed shard.

    Raises:
        ConfigMismatchError: ``out`` holds a dataset made with another configuration.
        ManifestChangedError: a re-run's manifest changed a label, names another or a changed file
            for a video already tokenized, or lost rows; ``overwrite`` rebuilds instead.
    """
    started = time.perf_counter()
    output = Output(out)
    out = output.local
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if videos_per_batch < 1:
        raise ValueError(f"videos_per_batch must be >= 1, got {videos_per_batch}")
    rows = read_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    if (out / SHARDS).is_symlink():
        # Shards written through it would land outside OUT, and --overwrite would not remove them.
        raise ValueError(f"{out / SHARDS} is a symbolic link; the job writes only inside {out}: remove the link")
    executor = Executor(
        config,
        address=ray_address,
        workers=workers,
        gpus_per_task=gpus_per_task,
        videos_per_batch=videos_per_batch,
        ray_after=ray_after,
    )
    # One writer per OUT for the whole run, --overwrite included.
    with lock_output(out):
        return _run_job(rows, output, config, executor, overwrite, retry_failed, on_progress, started)


def _run_job(
    rows: Any,
    output: Output,
    config: TokenizeConfig,
    executor: Executor,
    overwrite: bool,
    retry_failed: bool,
    on_progress: Callable[[Progress], None] | None,
    started: float,
) -> JobSummary:
    # Under the lock, so they are a dead run's: one killed while writing the plan, errors or index.
    remove_temporary_files(output.local)
    if overwrite:
        output.remove_dataset()
    written = 0
    task_seconds = work_seconds = 0.0
    with executor:
        retry = _failed_videos(output) if retry_failed else None
        plan = _extend_plan(output, rows, config, executor.workers, retry)
        published = _published(output)
        record_generation(output, plan, published)
        # An entry is [video, resolved path, label, size, mtime_ns]; the last two identify the file.
        specs = [ShardSpec(s["name"], tuple(tuple(v[:3]) for v in s["videos"])) for s in plan["shards"]]
        if retry:
            output.forget([s.name for s in specs if any(video in retry for video, _, _ in s.videos)])
        pending = [s for s in specs if not output.committed(s.name)]
        total_videos = sum(len(s.videos) for s in specs)
        if pending or published is None:
            # Until the index is rewritten, the folder must not look like a finished dataset.
            output.remove_index()
            counts = Progress(0, total_videos, 0, 0, 0, 0)
            for s in specs:
                if s not in pending:
                    _add(counts, output.meta(s.name))
            if on_progress:
                on_progress(counts)
            for result in executor.run(output.name, pending):
                written += not result["skipped"]
                task_seconds += result["seconds"]
                work_seconds += result["work_seconds"]
                _add(counts, result["meta"])
                if on_progress:
                    on_progress(counts)
            write_index(output, plan, [s.name for s in specs])
            _remove_leftovers(output.local)
    return JobSummary(
        out=output.local if output.store is None else output.name,
        **asdict(output.read_index().totals),
        shards=len(specs),
        shards_written=written,
        seconds=time.perf_counter() - started,
        task_seconds=task_seconds,
        work_seconds=work_seconds,
    )


def _add(counts: Progress, meta: ShardMeta) -> None:
    counts.videos_done += meta.videos
    counts.clips += meta.rows
    counts.tokens += meta.tokens
    counts.dense_tokens += meta.dense_tokens
    counts.failed += meta.failed


def _extend_plan(
    output: Output, manifest: Any, config: TokenizeConfig, workers: int, retry: set[str] | None
) -> dict[str, Any]:
    """The plan of ``output``, extended by the manifest's new videos, and with ``retry`` (the failed
    videos, under --retry-failed) taken as the manifest has them now."""
    out = output.name
    wanted = config.to_dict()
    plan = output.read_plan()
    is_new = plan is None
    if plan is not None:
        if plan["config"] != wanted:
            raise ConfigMismatchError(
                f"{out} holds a dataset made with another configuration:\n{_diff(plan['config'], wanted)}\n"
                f"use another OUT, the same options, or --overwrite to replace it"
            )
        if plan.get("classes") != (list(manifest.classes) if manifest.classes else None):
            raise ConfigMismatchError(f"{out}: the manifest's class names differ from the dataset's; use --overwrite")
    else:
        plan = {"config": wanted, "classes": list(manifest.classes) if manifest.classes else None, "shards": []}
    planned = {entry[0]: entry for shard in plan["shards"] for entry in shard["videos"]}
    seen: set[str] = set()
    files: dict[str, str] = {}  # resolved path -> the manifest's name for it
    new = []
    changes = _Changes()
    for row in manifest.rows:
        if row.video in seen:
            raise ValueError(f"{manifest.path}: video {row.video!r} appears twice")
        seen.add(row.video)
        # os.path.realpath, not Path.resolve: a symlink loop is then a video that fails to open
        # (recorded in errors.jsonl) instead of a RuntimeError that stops the job.
        resolved = row.path if isinstance(row.path, str) else os.path.realpath(row.path)
        if resolved in files:  # two spellings of one file (./a.mp4, sub/../a.mp4, a link to it)
            raise ValueError(
                f"{manifest.path}: videos {files[resolved]!r} and {row.video!r} are the same file, {resolved}"
            )
        files[resolved] = row.video
        identity = _identity(resolved)
        if row.video not in planned:
            new.append([row.video, resolved, row.label, *identity])
        elif retry is not None and row.video in retry:
            planned[row.video][1:] = [resolved, row.label, *identity]
        else:
            changes.compare(row.video, planned[row.video], resolved, row.label, identity)
    changes.removed = [video for video in planned if video not in seen]
    if changes:
        # Videos that failed left no rows: their files may change (be fixed) without spoiling the
        # dataset. Read from the shards only when something changed.
        changes.forgive(retry if retry is not None else _failed_videos(output))
    changes.check(out)
    if new or retry or is_new:
        first = len(plan["shards"])
        size = shard_size(len(new), config.shard_size, workers)
        for k in range(0, len(new), size):
            plan["shards"].append({"name": f"shard-{first + k // size:05d}", "videos": new[k : k + size]})
        output.write_plan(plan)
    return plan


def _failed_videos(output: Output) -> set[str]:
    """The videos that failed in the committed shards (as ``errors.jsonl`` lists them)."""
    return {e.video for name in output.committed_names() for e in output.meta(name).errors}


def _identity(path: str) -> list[int]:
    """[size, mtime_ns] of a video file, recorded in the plan to recognise it on a re-run (an
    object at a URL has its size, and 0 for the time)."""
    try:
        if is_url(path):
            parent, _, name = path.rpartition("/")
            size = Store(parent).size(name)
            return [] if size is None else [size, 0]
        stat = os.stat(path)
    except (OSError, ValueError):  # ValueError: a path os.stat refuses (a NUL in it)
        return []  # a missing video fails when decoded, and is recorded then
    return [stat.st_size, stat.st_mtime_ns]


class ManifestChangedError(ConfigMismatchError):
    """The manifest no longer describes the dataset in ``OUT``: rows changed or went away."""


class _Changes:
    """What a re-run's manifest says differently from the dataset's plan."""

    def __init__(self) -> None:
        # (video, what changed) pairs
        self.labels: list[tuple[str, str]] = []
        self.files: list[tuple[str, str]] = []
        self.removed: list[str] = []

    def compare(self, video: str, entry: list[Any], path: str, label: int, identity: list[int]) -> None:
        if entry[2] != label:
            self.labels.append((video, f"label {entry[2]} in the dataset, {label} in the manifest"))
        elif entry[1] != path:
            self.files.append((video, f"{path}, not the {entry[1]} that was tokenized"))
        elif len(entry) == 5 and identity and entry[3:] != identity:
            self.files.append((video, f"{path} changed since it was tokenized (size or modification time)"))

    def __bool__(self) -> bool:
        return bool(self.labels or self.files or self.removed)

    def forgive(self, failed: set[str]) -> None:
        """Drops the changes of videos that left no rows (they failed); a removed row stays one."""
        self.labels = [c for c in self.labels if c[0] not in failed]
        self.files = [c for c in self.files if c[0] not in failed]

    def check(self, out: str | Path) -> None:
        parts = []
        for what, items in (
            ("labels changed", [f"{video}: {change}" for video, change in self.labels]),
            ("other or changed files", [f"{video}: {change}" for video, change in self.files]),
            ("rows no longer in the manifest", self.removed),
        ):
            if items:
                shown = "\n".join(f"    {item}" for item in items[:5])
                more = f"\n    ... and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"  {len(items)} {what}:\n{shown}{more}")
        if parts:
            raise ManifestChangedError(
                f"{out} was tokenized from another version of this manifest:\n" + "\n".join(parts) + "\n"
                "use --overwrite to rebuild the dataset from this manifest, or another OUT"
            )


def shard_size(videos: int, largest: int, workers: int) -> int:
    """Videos per shard: at most ``largest``, and few enough that every worker gets
    `TASKS_PER_WORKER` tasks, so that uneven videos still leave no worker idle at the end."""
    return max(1, min(largest, math.ceil(videos / (TASKS_PER_WORKER * workers))))


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _diff(a, b, f"{prefix}{key}.")
            if inner:
                lines.append(inner)
        elif a != b:
            lines.append(f"  {prefix}{key}: {a!r} in the dataset, {b!r} now")
    return "\n".join(lines)


def _remove_leftovers(out: Path) -> None:
    """Removes temporary folders of attempts whose shard another attempt has committed.

    Never those of uncommitted shards: after a kill -9, Ray workers of the dead job may still be
    writing them for a moment, and pulling a folder from under a writer could commit a broken shard.
    """
    for tmp in (out / SHARDS).glob(".tmp-*"):
        name = tmp.name.removeprefix(".tmp-").rsplit("-", 1)[0]
        if shard_folder(out, name).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_index(output: Output, plan: dict[str, Any], names: list[str]) -> DatasetIndex:
    """Publishes the committed shards ``names`` (in plan order) as the dataset's next index generation.

    ``errors.jsonl`` lists each video whose last attempt failed: a video planned again later (a
    retry in `rlt-prep serve --watch`) is listed by its last shard only. The generation is counted
    in ``plan.json``, written after the index: a publication that failed does not count, and a run
    killed between the two finds the index's generation (`record_generation`).
    """
    metas = [output.meta(name) for name in names]
    last = last_shards(plan)
    errors = [
        {"video": e.video, "reason": e.reason, "shard": m.name}
        for m in metas
        for e in m.errors
        if last.get(e.video, m.name) == m.name
    ]
    index = DatasetIndex.of(
        metas,
        storage=plan["config"]["storage"],
        config=plan["config"],
        classes=plan["classes"],
        versions=_versions(),
        generation=int(plan.get("generation", 0)) + 1,
    )
    output.finish(errors, index)
    plan["generation"] = index.generation
    output.write_plan(plan)
    return index


def last_shards(plan: dict[str, Any]) -> dict[str, str]:
    """Each planned video's last shard in ``plan``: the one whose attempt counts (a video is planned
    again, into a new shard, when `rlt-prep serve --watch` retries it)."""
    return {entry[0]: shard["name"] for shard in plan["shards"] for entry in shard["videos"]}


def _published(output: Output) -> DatasetIndex | None:
    """The dataset's index; None where there is none, or it does not read (the run writes it again)."""
    if not output.has_index():
        return None
    try:
        return output.read_index()
    except ValueError as e:  # FormatError: damaged, or edited
        log.warning("%s; it is written again", e)
        return None


def record_generation(output: Output, plan: dict[str, Any], index: DatasetIndex | None) -> None:
    """Records in ``plan`` the generation of the published ``index``, if a run was killed after
    writing it and before recording it, so that the next generation is one past it."""
    if index is not None and index.generation > int(plan.get("generation", 0)):
        plan["generation"] = index.generation
        output.write_plan(plan)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "rlt-prep",
        "torch",
        "numpy",
        "decord",
        "torchcodec",
        "nvidia-dali-cuda120",
        "nvidia-dali-cuda130",
        "zarr",
        "pyarrow",
        "ray",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
