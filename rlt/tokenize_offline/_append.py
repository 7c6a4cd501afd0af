"""A dataset that grows while it is read: the job's side of `rlt-prep serve DATASET --watch SOURCE`.

Each round plans the new videos into new shards (never into committed ones), runs them on the
job's `Executor`, and publishes the next index generation. A generation lists the longest run of
committed shards in plan order, so the shards of every generation are the first shards of the next
and a reader that took generation g in keeps its row numbers. A video that failed stays failed
until `GrowingDataset.retry` plans it again, into a new shard; its old shard is not rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlt.dataset import DatasetIndex, ShardMeta, remove_temporary_files
from rlt.tokenize_offline._config import TokenizeConfig
from rlt.tokenize_offline._executor import Executor
from rlt.tokenize_offline._job import (
    ConfigMismatchError,
    _diff,
    _identity,
    _remove_leftovers,
    last_shards,
    record_generation,
    shard_size,
    write_index,
)
from rlt.tokenize_offline._output import Output
from rlt.tokenize_offline._shard import ShardSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Video:
    """A video to add: its name in the dataset, where it is, and its label.

    Attributes:
        video: its name (the manifest's, or its path relative to a watched folder).
        path: the resolved file path or URL.
        label: a class index (int), or a class name (str), numbered into the dataset's classes.
        identity: ``(size, mtime_ns)`` of the file when it was found (a URL's mtime is 0).
    """

    video: str
    path: str
    label: int | str
    identity: tuple[int, int] | None


class GrowingDataset:
    """The dataset in ``output``, grown by rounds of new videos; the caller holds its lock."""

    def __init__(self, output: Output, config: TokenizeConfig, executor: Executor) -> None:
        self.output, self.config, self.executor = output, config, executor
        output.local.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(output.local)
        wanted = config.to_dict()
        plan = output.read_plan()
        if plan is not None and plan["config"] != wanted:
            raise ConfigMismatchError(
                f"{output} holds a dataset made with another configuration:\n{_diff(plan['config'], wanted)}\n"
                f"give the options it was made with, or another DATASET"
            )
        self.plan: dict[str, Any] | None = plan
        self._metas: dict[str, ShardMeta] = {}
        self._committed_names = set(output.committed_names())  # grows as shards commit
        self.published = output.read_index() if output.has_index() else None
        if plan is not None:
            record_generation(output, plan, self.published)

    # --- what the dataset holds ------------------------------------------------------------------

    def entries(self) -> dict[str, list[Any]]:
        """Each planned video's last plan entry: ``[video, path, label, size, mtime_ns]``."""
        return {entry[0]: entry for shard in self.shards() for entry in shard["videos"]}

    def owners(self) -> dict[str, str]:
        """Each planned video's last shard: the one whose attempt counts."""
        return last_shards(self.plan) if self.plan else {}

    def shards(self) -> list[dict[str, Any]]:
        """The plan's shards, ``{"name", "videos"}``, in order."""
        return self.plan["shards"] if self.plan else []

    def pending(self) -> list[ShardSpec]:
        """The planned shards not yet committed (a restart's first round runs them)."""
        specs = [ShardSpec(s["name"], tuple(tuple(v[:3]) for v in s["videos"])) for s in self.shards()]
        return [s for s in specs if not self.committed(s.name)]

    def meta(self, name: str) -> ShardMeta:
        if name not in self._metas:
            self._metas[name] = self.output.meta(name)
        return self._metas[name]

    def committed(self, name: str) -> bool:
        """Known without asking the disk or the store: this process is the dataset's one writer."""
        return name in self._committed_names

    def failed(self) -> dict[str, str]:
        """The videos whose last attempt failed, with the reason (committed shards only)."""
        owner = self.owners()
        failed: dict[str, str] = {}
        for shard in self.shards():
            name = shard["name"]
            if self.committed(name):
                for error in self.meta(name).errors:
                    if owner.get(error.video) == name:
                        failed[error.video] = error.reason
        return failed

    # --- growing it ------------------------------------------------------------------------------

    def add(self, videos: Iterable[Video]) -> list[tuple[str, str]]:
        """Plans ``videos`` (those not planned yet) into new shards.

        Returns:
            ``(video, reason)`` for each video refused: another spelling of a planned file, or a
            label of the other kind than the dataset's (class names against class indices).
        """
        planned = self.entries()
        files = {entry[1]: video for video, entry in planned.items()}
        new: list[Video] = []
        refused: list[tuple[str, str]] = []
        for v in videos:
            if v.video in planned:
                continue
            if v.path in files:
                refused.append((v.video, f"the same file as {files[v.path]!r} ({v.path}), already in the dataset"))
                continue
            files[v.path] = v.video
            new.append(v)
        if not new:
            return refused
        classes = self._classes(new)
        entries = []
        for v in new:
            if classes is None and isinstance(v.label, str):
                refused.append((v.video, f"class name {v.label!r} in a dataset whose labels are class indices"))
            elif classes is not None and isinstance(v.label, int):
                refused.append((v.video, f"class index {v.label} in a dataset whose labels are class names"))
            else:
                label = classes.index(v.label) if classes is not None and isinstance(v.label, str) else v.label
                entries.append([v.video, v.path, label, *(v.identity or ())])
        self._plan_shards(entries, classes)
        return refused

    def retry(self) -> set[str]:
        """Plans the failed videos again, into new shards (their old shards are kept); returns them."""
        failed = self.failed()
        planned = self.entries()
        entries = [[*planned[video][:3], *_identity(planned[video][1])] for video in failed]
        self._plan_shards(entries, self.plan["classes"] if self.plan else None)
        return set(failed)

    def _classes(self, new: list[Video]) -> list[str] | None:
        """The dataset's class names, extended by the new ones (numbered after the old, sorted
        among themselves, so a first round numbers them as `read_manifest` does); None when the
        labels are class indices (decided by the first videos, by majority)."""
        classes: list[str] | None
        if self.shards():
            classes = self.plan["classes"] if self.plan else None
        else:
            names = sum(isinstance(v.label, str) for v in new)
            classes = [] if names > len(new) - names else None
        if classes is None:
            return None
        known = set(classes)
        return [*classes, *sorted({v.label for v in new if isinstance(v.label, str) and v.label not in known})]

    def _plan_shards(self, entries: list[list[Any]], classes: list[str] | None) -> None:
        if not entries:
            return
        if self.plan is None:
            self.plan = {"config": self.config.to_dict(), "classes": None, "shards": []}
        self.plan["classes"] = classes
        shards = self.plan["shards"]
        first = len(shards)
        size = shard_size(len(entries), self.config.shard_size, self.executor.workers)
        for k in range(0, len(entries), size):
            shards.append({"name": f"shard-{first + k // size:05d}", "videos": entries[k : k + size]})
        self.output.write_plan(self.plan)

    # --- running and publishing --------------------------------------------------------------------

    def run(self, on_shard: Callable[[ShardMeta], None] | None = None) -> int:
        """Runs the pending shards (until `Executor.stop`); returns how many were written."""
        written = 0
        for result in self.executor.run(self.output.name, self.pending()):
            meta: ShardMeta = result["meta"]
            self._metas[meta.name] = meta
            self._committed_names.add(meta.name)
            written += not result["skipped"]
            if on_shard:
                on_shard(meta)
        _remove_leftovers(self.output.local)
        return written

    def publish(self) -> DatasetIndex | None:
        """Writes the next index generation if more shards are committed than the last one lists;
        returns the index now published (None while no shard is)."""
        names = []
        for shard in self.shards():
            if not self.committed(shard["name"]):
                break
            names.append(shard["name"])
        listed = len(self.published.shards) if self.published else 0
        if self.plan is not None and names and len(names) > listed:
            self.published = write_index(self.output, self.plan, names)
        return self.published
