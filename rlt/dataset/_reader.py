"""`open_dataset`: random access and iteration over a dataset written by `rlt-prep tokenize`."""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from rlt.dataset._files import META, cache_root, checksum, file_list
from rlt.dataset._format import (
    INDEX,
    SHARDS,
    DatasetIndex,
    FormatError,
    ShardEntry,
    check_shard_name,
    read_index,
    read_shard_meta,
)
from rlt.dataset._record import FIELDS, ClipRecord
from rlt.dataset._remote import is_url, local_path
from rlt.dataset._storage import ShardReader

if TYPE_CHECKING:
    from rlt.dataset._cache import RemoteShards

# Shards whose checksum this process has checked: (folder, checksum). Across processes and runs, a
# record in the cache folder (`checked_before`) spares hashing a shard whose files have not changed.
_verified: set[tuple[str, str]] = set()
log = logging.getLogger(__name__)
# What a Zarr shard's Arrow copy is made from: lends the folder of the shard's checked files (and
# whether their values were scanned before) while the copy is made.
Source = Callable[[], AbstractContextManager[tuple[Path, bool]]]


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


def verify_shard(folder: Path, expected: str, *, remember: bool = False) -> bool:
    """Checks a shard's files against the checksum ``expected``; raises `CorruptShardError` if they differ.

    A shard checked before on this machine, whose files have kept their sizes and modification times
    since (a record in the cache folder, see `cache_root`), is not hashed again.

    Args:
        remember: record a successful check, for the next process or run. A record stands for every
            check a reader makes, so `TokenDataset` writes it itself once the shard has also passed
            the structure checks; a caller that checks the checksum alone leaves this off.

    Returns:
        Whether the shard had been checked before (nothing was hashed).
    """
    hashed = _hash_check(folder, expected)
    if remember and hashed is not None:
        remember_check(folder, expected, hashed)
    return hashed is None


def _hash_check(folder: Path, expected: str) -> list[list[Any]] | None:
    """`verify_shard`'s check: None if a record spared it, else the files' stats as hashed, for the
    record to hold (files changed since then fail the next comparison and are hashed again)."""
    if not folder.is_dir():
        raise CorruptShardError(folder, "the shard folder is missing")
    stats = _file_stats(folder)
    if checked_before(folder, expected, stats):
        return None
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
    return stats


def checked_before(folder: Path, key: str, stats: list[list[Any]] | None = None) -> bool:
    """Whether this machine recorded a successful check of ``folder`` against ``key`` (a checksum)
    and its files have kept their sizes and modification times since."""
    try:
        recorded = json.loads(_record(folder, key).read_text())
        return bool(recorded == (_file_stats(folder) if stats is None else stats))
    except (OSError, ValueError):
        return False  # never checked here, or the record is unreadable


def remember_check(folder: Path, key: str, stats: list[list[Any]] | None = None) -> None:
    """Records that ``folder``'s files, as they are now (or as ``stats``), passed the check ``key``."""
    record = _record(folder, key)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place but not fsynced: a record lost in a crash only means hashing again.
        tmp.write_text(json.dumps(_file_stats(folder) if stats is None else stats))
        os.replace(tmp, record)
    except OSError as e:  # a read-only home: every process hashes again, nothing worse
        log.debug("cannot record the check of %s in %s: %s", folder, record, e)
    finally:
        tmp.unlink(missing_ok=True)


def _record(folder: Path, key: str) -> Path:
    return cache_root() / "verified" / (hashlib.sha256(f"{folder.resolve()}\t{key}".encode()).hexdigest() + ".json")


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

    A dataset at a URL (``s3://bucket/prefix``, anything `rlt.dataset._remote.filesystem` opens) is
    read through a local cache (see `rlt.dataset._cache`): each shard is fetched whole when first
    used, checked against its checksum once, and read from local disk like a local dataset. Readers
    of metadata alone (no ``tokens`` column) fetch a shard's metadata files only.

    A shard once opened stays open (from a URL: held, so the cache does not evict it) until
    `release` or `close`; iterating releases each shard of a URL when done with it.

    Args:
        root: the dataset folder (``OUT`` of `rlt-prep tokenize`), or its URL.
        columns: the fields to read; the others come back as None. Reading no ``tokens`` reads no
            pixels at all.
        verify: check each shard's checksum the first time this process opens it (a shard from a
            URL is always checked, once, when it is fetched).
        preload: read a Zarr shard's per-token arrays whole when first used (see `ShardReader`).
        unpack: read a checked Zarr shard through an Arrow copy of it, unpacked once per machine
            into the cache (`rlt.dataset._cache`) and memory-mapped by every process that reads the
            shard, instead of decompressing one or two 6 MB chunks for every clip: for reads in
            shuffled order, such as the loader's. Without ``verify``, a local shard is not unpacked.
        cache_limit: bytes the cache of shards fetched from URLs and of unpacked shards may hold (all
            datasets together); least recently used copies are evicted. Default:
            ``$RLT_PREP_CACHE_LIMIT``, else 50 GB.
        index: the dataset's index, when the caller has read it already (it is not read again).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        columns: Sequence[str] | None = None,
        verify: bool = True,
        preload: bool = False,
        unpack: bool = False,
        cache_limit: int | None = None,
        index: DatasetIndex | None = None,
    ) -> None:
        self.root: str | Path
        self._remote: RemoteShards | None = None
        if is_url(root):
            from rlt.dataset._cache import RemoteShards  # pyarrow.fs and locks: for URLs only

            self._remote = RemoteShards(str(root), cache_limit=cache_limit, index=index)
            self.root = self._remote.url
            self.index = self._remote.index
        else:
            self.root = local_path(root)
            self.index = index or read_index(self.root)
        self.preload = preload
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
        self._unpack = unpack and self.storage == "zarr" and "tokens" in self.columns and (verify or self.remote)
        self._cache_limit = cache_limit
        self._unpacked: dict[int, IO[bytes]] = {}  # the locks that keep unpacked copies in the cache
        # A local dataset's checks of the shards the reader comes to next, hashed on a thread
        # meanwhile (see `prefetch`).
        self._checks: dict[int, Future[list[list[Any]] | None]] = {}
        self._checker: ThreadPoolExecutor | None = None

    @property
    def config(self) -> dict[str, Any]:
        return self.index.config

    @property
    def remote(self) -> bool:
        """Whether the dataset is at a URL (its shards come through the local cache)."""
        return self._remote is not None

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> ClipRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        return self.read(shard, i - self._starts[shard])

    def __iter__(self) -> Iterator[ClipRecord]:
        for k, info in enumerate(self.shards):
            for row in range(info.rows):
                yield self.read(k, row)
            if self._remote is not None:
                self.release(k)  # done with it: the cache may evict it

    def shard(self, k: int) -> ShardReader:
        """The reader of shard ``k``, verified on first use."""
        if k not in self._readers:
            info = self.shards[k]
            name = check_shard_name(info.name, f"{self.root}/{INDEX}", f"shards[{k}].name")
            if self._remote is not None and self._unpack:
                # Read from its Arrow copy: the shard is fetched only to make one.
                source = functools.partial(self._fetched, k, name)
                self._readers[k] = self._unpacked_reader(k, self._remote.where(name), source)
                return self._readers[k]
            if self._remote is not None:
                folder = self._remote.acquire(name, info.checksum, pixels="tokens" in self.columns)
                # A cached copy is checked against its checksum whenever it is fetched; its values
                # are scanned once per process.
                key = (str(folder), info.checksum)
                try:
                    self._readers[k] = self._reader_of(k, folder, self._remote.where(name), checked=key in _verified)
                except BaseException:
                    self._remote.release(name)
                    raise
                _verified.add(key)
                return self._readers[k]
            folder = Path(self.root) / SHARDS / name
            checked, hashed = (str(folder), info.checksum) in _verified, None
            if self.verify and not checked:
                pending = self._checks.pop(k, None)
                hashed = pending.result() if pending is not None else _hash_check(folder, info.checksum)
                checked = hashed is None
            self._readers[k] = self._reader_of(k, folder, str(folder), checked=checked)
            if self.verify:
                if hashed is not None:
                    # The record of a check stands for the checksum and the structure both, so it
                    # is written only once the shard has passed the structure checks too.
                    remember_check(folder, info.checksum, hashed)
                _verified.add((str(folder), info.checksum))
        return self._readers[k]

    def _reader_of(self, k: int, folder: Path, where: str, *, checked: bool) -> ShardReader:
        """A reader of shard ``k``, whose files in ``folder`` passed their checksum: of those files,
        or with ``unpack`` of its Arrow copy in the cache, made from them first if need be."""
        if not self._unpack:
            return self._open(folder, self.shards[k], where, checked=checked)
        return self._unpacked_reader(k, where, lambda: contextlib.nullcontext((folder, checked)))

    def _unpacked_reader(self, k: int, where: str, source: Source) -> ShardReader:
        """A reader of Zarr shard ``k``'s Arrow copy in the cache, made if need be (see `_unpacked_copy`)."""
        copy, self._unpacked[k] = self._unpacked_copy(k, where, source)
        try:
            return self._open(copy, self.shards[k], where, checked=True, storage="arrow")
        except BaseException:
            self._unpacked.pop(k).close()
            raise

    @contextlib.contextmanager
    def _fetched(self, k: int, name: str) -> Iterator[tuple[Path, bool]]:
        """Shard ``k`` (``name``) of a dataset at a URL in the cache, checked against its checksum and
        held meanwhile, and whether this process scanned its values before."""
        assert self._remote is not None
        folder = self._remote.acquire(name, self.shards[k].checksum, pixels=True)
        key = (str(folder), self.shards[k].checksum)
        try:
            yield folder, key in _verified
            _verified.add(key)
        finally:
            self._remote.release(name)

    def _unpacked_copy(self, k: int, where: str, source: Source) -> tuple[Path, IO[bytes]]:
        """The Arrow copy of Zarr shard ``k`` in the cache, and the lock that keeps it there until
        closed. Made if need be from the shard's checked files, which ``source()`` lends (with
        whether their values were scanned before): a copy in the cache needs no others."""
        from rlt.dataset._cache import cached_copy

        info = self.shards[k]

        def unpack(tmp: Path) -> None:
            with source() as (folder, checked):
                shard = self._open(folder, info, where, checked=checked)  # its structure checked
                try:
                    shard.unpack(tmp)
                except FormatError as e:
                    raise CorruptShardError(where, str(e).removeprefix(f"{folder}/")) from e
                except OSError:
                    raise
                except Exception as e:  # zarr's codecs raise their own types
                    raise CorruptShardError(where, f"its tokens cannot be unpacked ({type(e).__name__}: {e})") from e

        local, limit = self._unpack_home
        return cached_copy(local, "unpacked", info.name, info.checksum, limit, unpack)

    def _has_unpacked_copy(self, k: int) -> bool:
        from rlt.dataset._cache import has_copy

        return has_copy(self._unpack_home[0], "unpacked", self.shards[k].name, self.shards[k].checksum)

    @functools.cached_property
    def _unpack_home(self) -> tuple[Path, int]:
        """The dataset's mirror folder in the cache, where its Arrow copies go, and the cache's limit:
        worked out once, not for every shard."""
        from rlt.dataset._cache import cache_limit_bytes
        from rlt.dataset._remote import mirror

        if self._remote is not None:
            return mirror(self._remote.url), self._remote.limit
        return mirror(Path(self.root).resolve().as_uri()), cache_limit_bytes(self._cache_limit)

    def _prepare(self, k: int, folder: Path) -> list[list[Any]] | None:
        """Local shard ``k``'s checksum check (`_hash_check`'s result), and with ``unpack`` its Arrow
        copy made: on a thread, ahead of the reader."""
        hashed = _hash_check(folder, self.shards[k].checksum)
        if self._unpack:
            self._unpacked_copy(k, str(folder), lambda: contextlib.nullcontext((folder, hashed is None)))[1].close()
        return hashed

    def read(self, k: int, row: int, columns: Sequence[str] | None = None) -> ClipRecord:
        """Row ``row`` of shard ``k`` (the dataset's columns by default).

        Raises:
            CorruptShardError: the shard fails a check, also one made only when its pixels are first
                read.
        """
        reader = self.shard(k)
        try:
            return reader.read(row, self.columns if columns is None else columns)
        except FormatError as e:
            where = self._remote.where(self.shards[k].name) if self._remote is not None else str(reader.folder)
            raise CorruptShardError(where, str(e).removeprefix(f"{reader.folder}/")) from e

    def _open(
        self, folder: Path, info: ShardEntry, where: str, *, checked: bool = False, storage: str | None = None
    ) -> ShardReader:
        """A reader of the shard in ``folder`` (in the dataset's storage, or ``storage``), checked
        against ``info``; errors name ``where``. ``checked``: its files passed every check before
        (the scans of its values are skipped)."""
        try:
            reader = ShardReader(
                folder,
                storage or self.storage,  # type: ignore[arg-type]
                self.geometry,
                preload=self.preload,
                scan=not checked,
            )
        except FormatError as e:
            raise CorruptShardError(where, str(e).removeprefix(f"{folder}/")) from e
        except Exception as e:  # pyarrow and zarr raise their own types for unreadable files
            raise CorruptShardError(where, f"unreadable ({type(e).__name__}: {e})") from e
        if (reader.rows, reader.tokens) != (info.rows, info.tokens):
            raise CorruptShardError(
                where,
                f"holds {reader.rows} rows and {reader.tokens} tokens; the index says {info.rows} and {info.tokens}",
            )
        return reader

    def prefetch(self, shards: Iterable[int]) -> None:
        """Starts getting shards ``shards`` ready in the background: fetched into the cache for a
        dataset at a URL, their checksums computed (and, with ``unpack``, their Arrow copies made) on
        a thread for a local one, so that this overlaps reading the shard before. A failure is left
        for `shard` to meet and raise."""
        if self._remote is not None:
            if self._unpack:  # a Zarr shard whose Arrow copy the cache has needs no fetching
                shards = [k for k in shards if k not in self._readers and not self._has_unpacked_copy(k)]
            self._remote.prefetch(
                [(self.shards[k].name, self.shards[k].checksum) for k in shards], pixels="tokens" in self.columns
            )
            return
        if not self.verify:
            return
        for k in shards:
            folder, expected = self._folder(k), self.shards[k].checksum
            if k in self._readers or k in self._checks or (str(folder), expected) in _verified:
                continue
            if self._checker is None:
                # Two: XXH3 lets go of the GIL, and a first batch drawn from every shard of a small
                # dataset waits on them all (a cold epoch 8% faster than with one, median of 10).
                self._checker = ThreadPoolExecutor(2, thread_name_prefix="rlt-check")
            self._checks[k] = self._checker.submit(self._prepare, k, folder)

    def _folder(self, k: int) -> Path:
        """Where shard ``k`` of a local dataset lies; its name from the index checked first."""
        name = check_shard_name(self.shards[k].name, f"{self.root}/{INDEX}", f"shards[{k}].name")
        return Path(self.root) / SHARDS / name

    def release(self, k: int) -> None:
        """Drops shard ``k``'s reader and whatever it holds in memory (and, from a URL, lets the cache
        evict it)."""
        unpacked = self._unpacked.pop(k, None)
        if unpacked is not None:
            unpacked.close()
        if self._readers.pop(k, None) is not None and self._remote is not None:
            self._remote.release(self.shards[k].name)

    def close(self) -> None:
        """Releases every shard and stops fetching ahead; the dataset can still be read after."""
        for k in list(self._readers):
            self.release(k)
        if self._remote is not None:
            self._remote.close()
        if self._checker is not None:  # no thread may hash on while a DataLoader forks its workers
            self._checker.shutdown(wait=True, cancel_futures=True)
            self._checker, self._checks = None, {}

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.root)!r}, rows={len(self)}, shards={len(self.shards)}, storage={self.storage!r})"
        )


def open_dataset(
    root: str | Path, *, columns: Sequence[str] | None = None, verify: bool = True, cache_limit: int | None = None
) -> TokenDataset:
    """Opens a dataset written by `rlt-prep tokenize` (Zarr or Arrow; see FORMAT.md), local or at a URL.

    Args:
        root: the dataset folder, or its URL (``s3://bucket/prefix``; see `TokenDataset`).
        columns: the fields to read (default: all).
        verify: check each shard's checksum when first opened.
        cache_limit: for a URL, bytes the cache of fetched shards may hold (see `TokenDataset`).
    """
    return TokenDataset(root, columns=columns, verify=verify, cache_limit=cache_limit)
