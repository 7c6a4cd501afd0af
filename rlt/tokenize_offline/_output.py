"""Where the job writes: a local folder, or a folder at a URL (``s3://bucket/prefix``).

A local OUT is written in place: shards commit by rename, the small files atomically. A URL OUT is
staged in a local folder of the cache (`rlt.dataset._remote.mirror`): each shard is committed there
first, then published object by object (data, then ``meta.json``), and ``index.json`` goes up last,
so a reader of the store never sees a shard or a dataset before it is whole. The lock that keeps one
writer per OUT is taken on the staging folder: it holds for runs on one machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlt.dataset import (
    INDEX,
    META,
    PLAN,
    SHARDS,
    DatasetIndex,
    ShardMeta,
    open_atomic,
    read_index,
    read_plan,
    read_shard_meta,
    shard_folder,
    write_index,
    write_json_atomic,
)
from rlt.dataset._format import parse_json
from rlt.dataset._remote import Store, is_url, local_path, mirror

ERRORS = "errors.jsonl"


class Output:
    """The job's OUT, local or at a URL: what is committed, and how files are written there.

    Attributes:
        local: where shards are written (OUT itself, or its staging folder for a URL).
        store: the URL's store, or None for a local OUT.
    """

    def __init__(self, out: str | Path) -> None:
        self.name = str(out)
        self.store = Store(str(out)) if is_url(out) else None
        self.local = mirror(str(out)) / "staging" if self.store else local_path(out)

    def __str__(self) -> str:
        return self.name

    def committed(self, name: str) -> bool:
        if self.store:
            return self.store.exists(f"{SHARDS}/{name}/{META}")
        return shard_folder(self.local, name).is_dir()

    def meta(self, name: str) -> ShardMeta:
        if self.store:
            relative = f"{SHARDS}/{name}/{META}"
            url = self.store.where(relative)
            return ShardMeta.from_dict(parse_json(self.store.read_bytes(relative), url), url)
        return read_shard_meta(shard_folder(self.local, name))

    def committed_names(self) -> list[str]:
        if self.store:
            return [name for name in self.store.children(SHARDS) if self.committed(name)]
        return sorted(p.name for p in (self.local / SHARDS).glob("shard-*") if p.is_dir())

    def read_plan(self) -> dict[str, Any] | None:
        if self.store:
            (self.local / PLAN).unlink(missing_ok=True)
            if self.store.exists(PLAN):
                self.local.mkdir(parents=True, exist_ok=True)
                with open_atomic(self.local / PLAN, "wb") as f:
                    f.write(self.store.read_bytes(PLAN))
        return read_plan(self.local)

    def write_plan(self, plan: dict[str, Any]) -> None:
        write_json_atomic(self.local / PLAN, plan)
        if self.store:
            self.store.upload(self.local / PLAN, PLAN)

    def has_index(self) -> bool:
        return self.store.exists(INDEX) if self.store else (self.local / INDEX).is_file()

    def remove_index(self) -> None:
        """From now on the folder is an unfinished dataset."""
        (self.local / INDEX).unlink(missing_ok=True)
        if self.store:
            self.store.remove(INDEX)

    def finish(self, errors: list[dict[str, str]], index: DatasetIndex) -> None:
        """Writes ``errors.jsonl``, then ``index.json``: the last file, that finishes the dataset."""
        with open_atomic(self.local / ERRORS) as f:
            for error in errors:
                f.write(json.dumps(error) + "\n")
        write_index(self.local, index)
        if self.store:
            self.store.upload(self.local / ERRORS, ERRORS)
            self.store.upload(self.local / INDEX, INDEX)

    def read_index(self) -> DatasetIndex:
        return read_index(self.name)  # a local path, or the URL

    def forget(self, names: list[str]) -> None:
        """Removes committed shards, so that the run writes them again (the index goes first)."""
        names = [name for name in names if self.committed(name)]
        if names:
            self.remove_index()
        for name in names:
            if self.store:
                self.store.remove(f"{SHARDS}/{name}/{META}")  # uncommits it; the data objects are overwritten
                shutil.rmtree(shard_folder(self.local, name), ignore_errors=True)
            else:
                shutil.rmtree(shard_folder(self.local, name))

    def remove_dataset(self) -> None:
        """Removes what the job writes (and nothing else a user may keep there).

        Raises:
            OSError: something could not be removed; the run must not go on over old shards.
        """
        for name in (INDEX, PLAN, ERRORS):
            (self.local / name).unlink(missing_ok=True)
        if (self.local / SHARDS).exists():
            shutil.rmtree(self.local / SHARDS)
        if self.store:
            for name in (INDEX, PLAN, ERRORS, SHARDS):
                self.store.remove(name)
            if self.store.objects(SHARDS):
                raise OSError(f"{self.store.where(SHARDS)}: could not remove every old shard")
