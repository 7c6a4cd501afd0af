"""`open_dataset`: random access and iteration over a dataset written by `rlt-prep tokenize`."""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlt.dataset._files import META, cache_root, checksum, file_list, write_json_atomic
from rlt.dataset._format import (
    INDEX,
    SHARDS,
    FormatError,
    ShardEntry,
    check_shard_name,
    read_index,
    read_shard_meta,
)
from rlt.dataset._record import FIELDS, ClipRecord
from rlt.dataset._storage import ShardReader

# Shards whose checksum this process has checked: (folder, checksum). Across processes and runs, a
# record in the cache folder (`verified_before`) spares hashing a shard whose files have not changed.
_verified: set[tuple[str, str]] = set()
log = logging.getLogger(__name__)


class CorruptShardError(OSError):
    """A shard's files do not match the checksum its index records, or not the format.

    Attributes:
        shard: the shard's folder.
        reason: what does not match.
    """

    def __init__(self, shard: str | Path, reason: str = "") -> None:
        # One argument is a whole message: how torch's DataLoader re-raises a worker's exception.
        self.shard, self.reason = str(shard), reason
        super().__init__(f"{self.shard}: {reason}" if reason else self.shard)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.shard, self.reason))


def verify_shard(folder: Path, expected: str, *, remember: bool = True) -> None:
    """Checks a shard's files against the checksum ``expected``; raises `CorruptShardError` if they differ.

    A shard checked before on this machine, whose files have kept their sizes and modification times
    since (a record in the cache folder, see `cache_root`), is not hashed again.

    Args:
        remember: record a successful check, for the next process or run.
    """
    if not folder.is_dir():
        raise CorruptShardError(folder, "the shard folder is missing")
    record = (
        cache_root() / "verified" / (hashlib.sha256(f"{folder.resolve()}\t{expected}".encode()).hexdigest() + ".json")
    )
    stats = _file_stats(folder)
    try:
        if json.loads(record.read_text()) == stats:
            return
    except (OSError, ValueError):
        pass  # never checked here, or the record is unreadable: hash the files
    try:
        recorded = read_shard_meta(folder).files
    except (OSError, FormatError) as e:
        raise CorruptShardError(folder, f"unreadable {META} ({e})") from e
    actual = file_list(folder)
    if checksum(actual) != expected:
        by_path = {e["path"]: e for e in actual}
        for entry in recorded:
            found = by_path.get(entry.path)
            if found is None:
                raise CorruptShardError(folder, f"{entry.path} is missing")
            if found["bytes"] != entry.bytes:
                raise CorruptShardError(
                    folder, f"{entry.path} has {found['bytes']} bytes, expected {entry.bytes} (truncated?)"
                )
            if found["digest"] != entry.digest:
                raise CorruptShardError(folder, f"{entry.path} does not match its checksum (altered)")
        raise CorruptShardError(folder, "the shard's files do not match the checksum in the index")
    if remember and _file_stats(folder) == stats:  # unchanged while we hashed
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record, stats)
        except OSError as e:  # a read-only home: every process hashes again, nothing worse
            log.debug("cannot record the check of %s in %s: %s", folder, record, e)


def _file_stats(folder: Path) -> list[list[Any]]:
    """Each file below ``folder``: [relative path, size, mtime_ns]."""
    stats = []
    for base, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(base, name)
            st = os.stat(full)
            stats.append([os.path.relpath(full, folder), st.st_size, st.st_mtime_ns])
    return sorted(stats)


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
        self.storage = self.index.storage
        self.geometry = self.index.geometry
        self.shards: list[ShardEntry] = list(self.index.shards)
        self._starts = np.cumsum([0] + [s.rows for s in self.shards]).tolist()
        self._readers: dict[int, ShardReader] = {}

    @property
    def config(self) -> dict[str, Any]:
        return self.index.config

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
            folder = self.root / SHARDS / check_shard_name(info.name, self.root / INDEX, f"shards[{k}].name")
            if self.verify and (str(folder), info.checksum) not in _verified:
                verify_shard(folder, info.checksum)
                _verified.add((str(folder), info.checksum))
            try:
                reader = ShardReader(folder, self.storage, self.geometry, preload=self.preload)  # type: ignore[arg-type]
            except FormatError as e:
                raise CorruptShardError(folder, str(e).removeprefix(f"{folder}/")) from e
            except Exception as e:  # pyarrow and zarr raise their own types for unreadable files
                raise CorruptShardError(folder, f"unreadable ({type(e).__name__}: {e})") from e
            if (reader.rows, reader.tokens) != (info.rows, info.tokens):
                raise CorruptShardError(
                    folder,
                    f"holds {reader.rows} rows and {reader.tokens} tokens; "
                    f"the index says {info.rows} and {info.tokens}",
                )
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
