"""`open_dataset`: random access and iteration over a dataset written by `rlt-prep tokenize`."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlt.dataset._files import META, checksum, file_list
from rlt.dataset._record import FIELDS, ClipRecord
from rlt.dataset._storage import ShardReader

FORMAT = "rlt-tokens"
FORMAT_VERSION = 1
INDEX = "index.json"
SHARDS = "shards"


# Shards whose checksum this process has recomputed: (folder, checksum). Training reads every shard
# each epoch, often from several worker processes; hashing each shard once per process is enough to
# catch a truncated or altered file before its rows are used.
_verified: set[tuple[str, str]] = set()


class CorruptShardError(OSError):
    """A shard's files do not match the checksum its index records.

    Attributes:
        shard: the shard's folder.
        reason: what does not match.
    """

    def __init__(self, shard: str | Path, reason: str) -> None:
        self.shard, self.reason = str(shard), reason
        super().__init__(f"{self.shard}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.shard, self.reason))


@dataclass(frozen=True)
class ShardInfo:
    """A shard as the index records it."""

    name: str
    rows: int
    tokens: int
    bytes: int
    checksum: str


def read_index(root: str | Path) -> dict[str, Any]:
    """Reads and checks ``root/index.json``; raises a clear error for a missing or unknown one."""
    path = Path(root) / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {root} is not a finished rlt-prep dataset (a job that did not finish "
            f"writes no index; run `rlt-prep tokenize` again to complete it)"
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r} is not {FORMAT!r}")
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {index.get('version')!r} is not supported (this rlt-prep reads version "
            f"{FORMAT_VERSION}); upgrade rlt-prep or re-run `rlt-prep tokenize`"
        )
    return index


def verify_shard(folder: Path, expected: str) -> None:
    """Recomputes a shard's checksum from its files; raises `CorruptShardError` if it differs."""
    if not folder.is_dir():
        raise CorruptShardError(folder, "the shard folder is missing")
    try:
        recorded = json.loads((folder / META).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptShardError(folder, f"unreadable {META} ({e})") from e
    actual = file_list(folder)
    if checksum(actual) != expected:
        by_path = {e["path"]: e for e in actual}
        for entry in recorded:
            found = by_path.get(entry["path"])
            if found is None:
                raise CorruptShardError(folder, f"{entry['path']} is missing")
            if found["bytes"] != entry["bytes"]:
                raise CorruptShardError(
                    folder, f"{entry['path']} has {found['bytes']} bytes, expected {entry['bytes']} (truncated?)"
                )
            if found["sha256"] != entry["sha256"]:
                raise CorruptShardError(folder, f"{entry['path']} does not match its checksum (altered)")
        raise CorruptShardError(folder, "the shard's files do not match the checksum in the index")


class TokenDataset:
    """A finished dataset: length, random access and iteration over `ClipRecord` rows.

    Args:
        root: the dataset folder (``OUT`` of `rlt-prep tokenize`).
        columns: the fields to read; the others come back as None. Reading no ``tokens`` reads no
            pixels at all.
        verify: check each shard's checksum the first time this process opens it.
        preload: read a Zarr shard's per-token arrays whole when first used (see `ShardReader`).
    """

    def __init__(
        self, root: str | Path, *, columns: Sequence[str] | None = None, verify: bool = True, preload: bool = False
    ) -> None:
        self.root = Path(root)
        self.preload = preload
        self.index = read_index(self.root)
        self.columns = tuple(columns) if columns is not None else FIELDS
        unknown = [c for c in self.columns if c not in FIELDS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the fields are {', '.join(FIELDS)}")
        self.verify = verify
        self.storage = self.index["storage"]
        self.shards = [
            ShardInfo(s["name"], s["rows"], s["tokens"], s["bytes"], s["checksum"]) for s in self.index["shards"]
        ]
        self._starts = np.cumsum([0] + [s.rows for s in self.shards]).tolist()
        self._readers: dict[int, ShardReader] = {}

    @property
    def config(self) -> dict[str, Any]:
        return self.index["config"]

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> ClipRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        return self.shard(shard).read(i - self._starts[shard], self.columns)

    def __iter__(self) -> Iterator[ClipRecord]:
        for k, info in enumerate(self.shards):
            reader = self.shard(k)
            for row in range(info.rows):
                yield reader.read(row, self.columns)

    def shard(self, k: int) -> ShardReader:
        """The reader of shard ``k``, verified on first use."""
        if k not in self._readers:
            info = self.shards[k]
            folder = self.root / SHARDS / info.name
            if self.verify and (str(folder), info.checksum) not in _verified:
                verify_shard(folder, info.checksum)
                _verified.add((str(folder), info.checksum))
            try:
                reader = ShardReader(folder, self.storage, preload=self.preload)
            except Exception as e:  # pyarrow and zarr raise their own types for unreadable files
                raise CorruptShardError(folder, f"unreadable ({type(e).__name__}: {e})") from e
            if reader.rows != info.rows:
                raise CorruptShardError(folder, f"holds {reader.rows} rows, the index says {info.rows}")
            self._readers[k] = reader
        return self._readers[k]

    def release(self, k: int) -> None:
        """Drops shard ``k``'s reader and whatever it holds in memory."""
        self._readers.pop(k, None)

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.root)!r}, rows={len(self)}, shards={len(self.shards)}, storage={self.storage!r})"
        )


def open_dataset(root: str | Path, *, columns: Sequence[str] | None = None, verify: bool = True) -> TokenDataset:
    """Opens a dataset written by `rlt-prep tokenize` (Zarr or Arrow; see FORMAT.md)."""
    return TokenDataset(root, columns=columns, verify=verify)
