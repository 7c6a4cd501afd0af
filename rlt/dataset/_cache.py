"""The local cache of datasets at URLs (each shard fetched whole, checked once, read as local files),
and of Zarr shards unpacked for the training loader.

What a dataset at ``URL`` has fetched or unpacked lies in its mirror folder (`rlt.dataset._remote.mirror`):

```
mirror(URL)/
  shards/NAME/           a whole shard, files and meta.json, exactly as in a local dataset
  meta/NAME/             its files but the pixels (Arrow tokens.arrow, Zarr tokens/), for readers
                         of metadata: the loader's plan, `rlt-prep stats`
  unpacked/NAME/         a Zarr shard in Arrow storage (clips.arrow, tokens.arrow), made by the
                         training loader from the checked shard (`TokenDataset(unpack=True)`); a
                         local Zarr dataset has a mirror folder for these alone (its file:// URL)
  locks/KIND-NAME        flock'ed shared while a process reads the copy, exclusively to evict it
  locks/KIND-NAME.fetch  flock'ed exclusively while a process fetches it: one download however many
                         DataLoader workers and ranks ask at once
```

Every copy is made by `cached_copy`. A fetch downloads into a temporary folder beside the copy,
checks every file's size and digest against the shard's ``meta.json`` (itself checked against the
index's checksum), then renames the folder in, and records the check the way `verify_shard` does,
so no process hashes it again. A copy whose files changed since (or that a crash cut short) has no
matching record and is made again.

The copies (fetched and unpacked) of every dataset's mirror together hold at most ``cache_limit``
bytes (the files that `fetch_file` fetched and a writer's staging folder are not counted, nor
evicted). After a copy is made the least recently used copies (a copy's folder time is set on each
use) are evicted, save those that a process holds: a reader holds its shards' locks while it has
them open. (Evicting while another process has an Arrow file memory-mapped would be safe on Linux,
the mapping keeps the file; but a Zarr reader opens its chunk files as it reads.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from rlt.dataset._files import DIGEST, META, cache_root, checksum
from rlt.dataset._format import INDEX, SHARDS, DatasetIndex, FileEntry, ShardMeta, parse_json
from rlt.dataset._reader import CorruptShardError, _file_stats, checked_before, remember_check
from rlt.dataset._remote import Store, mirror
from rlt.dataset._storage import ARROW_TOKENS_FILE

log = logging.getLogger(__name__)

DEFAULT_CACHE_LIMIT = 50 * 10**9
# Threads that fetch shards ahead of the reader, per dataset and process: while one writes a shard
# into the cache (the local disk's write-back can stall it), the others keep GETs in flight. A cold
# epoch from moto's server on 2 cores: 424 MB/s with 2, 558-580 with 4, 558 with 8
# (benchmarks/bench_remote_loader.py --fetch-threads N, 3 rounds each, one session). Metadata
# files are small, so more of them at once, to hide the store's latency.
FETCH_THREADS = 4
METADATA_THREADS = 8
# Objects of one shard fetched at once (a Zarr shard has 21, an Arrow one 3).
FILE_THREADS = 4
# A temporary folder this old was left by a process that died while fetching.
STALE_SECONDS = 3600
# Bytes a download asks the store for at once, in one buffer (see `RemoteShards._download`): the
# default shards (~76 MB) come in one GET; 64 MiB, two GETs each, made a cold epoch 2x slower. A
# download in flight holds one such buffer (`FETCH_THREADS` of them per process at most).
BLOCK = 128 << 20
Kind = Literal["shards", "meta", "unpacked"]
KINDS: tuple[Kind, ...] = ("shards", "meta")  # the copies fetched from a store
CACHED: tuple[Kind, ...] = (*KINDS, "unpacked")  # what eviction weighs
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def cache_limit_bytes(value: int | None = None) -> int:
    """The cache's size limit in bytes: ``value``, else ``$RLT_PREP_CACHE_LIMIT`` (bytes, or with a
    unit: ``500M``, ``50GB``, ``1.5T``), else 50 GB."""
    if value is not None:
        if value < 0:
            raise ValueError(f"cache_limit must be >= 0 bytes, got {value}")
        return value
    text = os.environ.get("RLT_PREP_CACHE_LIMIT", "").strip()
    if not text:
        return DEFAULT_CACHE_LIMIT
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)b?", text.lower())
    if not match:
        raise ValueError(f"RLT_PREP_CACHE_LIMIT={text!r} is not a size: give bytes, or e.g. 500M, 50GB, 1.5T")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def read_remote_index(url: str, store: Store | None = None) -> DatasetIndex:
    """Reads and validates ``url/index.json``; errors name the URL."""
    store = store or Store(url)
    where = store.where(INDEX)
    try:
        data = store.read_bytes(INDEX)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{where} does not exist: {store.url} is not a finished rlt-prep dataset (a job that did not "
            f"finish writes no index; run `rlt-prep tokenize` again to complete it)"
        ) from None
    return DatasetIndex.from_dict(parse_json(data, where), where)


class RemoteShards:
    """The shards of the dataset at ``url``, fetched into the cache as they are asked for.

    A copy handed out by `acquire` is held (never evicted) until `release`.
    """

    def __init__(self, url: str, *, cache_limit: int | None = None, index: DatasetIndex | None = None) -> None:
        # Every object it reads is checked: meta.json against the index's checksum, the files
        # against their digests in meta.json (`_download`). index.json, which has no digest, comes
        # through a client that checks the store's CRC.
        self.store = Store(url, digests_checked=True)
        self.url = self.store.url
        self.limit = cache_limit_bytes(cache_limit)
        self.index = index or read_remote_index(self.url)
        self.local = mirror(self.url)
        self._held: dict[str, IO[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._queued: set[tuple[str, bool]] = set()

    def where(self, name: str) -> str:
        """The shard's URL, for messages."""
        return self.store.where(f"{SHARDS}/{name}")

    def acquire(self, name: str, expected: str, *, pixels: bool) -> Path:
        """A checked local copy of shard ``name`` (checksum ``expected``), fetched if need be and held
        until `release`. Without ``pixels``, the metadata files may be all it has."""
        if name in self._held:
            raise RuntimeError(f"{self.where(name)} is held already; release it first")
        folder, self._held[name] = self._get(name, expected, pixels=pixels)
        return folder

    def release(self, name: str) -> None:
        """Lets the cache evict shard ``name`` again."""
        lock = self._held.pop(name, None)
        if lock is not None:
            lock.close()

    def prefetch(self, shards: list[tuple[str, str]], *, pixels: bool) -> None:
        """Fetches ``shards`` (name, checksum) into the cache in background threads, in order."""
        for name, expected in shards:
            if (name, pixels) in self._queued or name in self._held or self._ready(name, expected, pixels=pixels):
                continue
            if self._pool is None or self._pool_pid != os.getpid():  # a pool does not survive a fork
                threads = FETCH_THREADS if pixels else METADATA_THREADS
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rlt-fetch")
                self._pool_pid = os.getpid()
            self._queued.add((name, pixels))
            self._pool.submit(self._fetch_ahead, name, expected, pixels)

    def close(self) -> None:
        """Releases every copy held, drops the fetches not yet started and waits for those under way:
        no thread outlives it (a process that forks DataLoader workers next must not be mid-request)."""
        for name in list(self._held):
            self.release(name)
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._queued = None, set()

    def _fetch_ahead(self, name: str, expected: str, pixels: bool) -> None:
        try:
            _, lock = self._get(name, expected, pixels=pixels)
            lock.close()
        except (OSError, ValueError) as e:  # the reader meets the same error when it gets there, and raises it
            log.debug("fetching %s ahead failed: %s", self.where(name), e)

    def _get(self, name: str, expected: str, *, pixels: bool) -> tuple[Path, IO[bytes]]:
        """A checked copy, whole or (without ``pixels``) of the metadata files, and the shared lock
        that keeps it from eviction."""
        if not pixels:  # a whole copy serves a reader of metadata as well
            folder = self.local / "shards" / name
            lock = _lock(_lock_path(self.local, "shards", name), exclusive=False)
            if _usable(folder, "shards", expected):
                os.utime(folder)
                return folder, lock
            lock.close()
        kind: Kind = "shards" if pixels else "meta"
        fetch = lambda tmp: self._fetch(kind, name, expected, tmp)  # noqa: E731
        return cached_copy(self.local, kind, name, expected, self.limit, fetch)

    def _ready(self, name: str, expected: str, *, pixels: bool) -> bool:
        """Whether this process saw a checked copy that serves the reader, unchanged since: nothing
        to fetch ahead (a warm stream starts no threads). `_get` checks again when it comes to it."""
        kinds: tuple[Kind, ...] = ("shards",) if pixels else KINDS
        for kind in kinds:
            folder = self.local / kind / name
            seen = _seen.get((str(folder), _key(kind, expected)))
            if seen is not None and folder.is_dir() and seen == _file_stats(folder):
                return True
        return False

    def _fetch(self, kind: Kind, name: str, expected: str, tmp: Path) -> None:
        """Downloads the shard's files (only the metadata ones for ``"meta"``) into ``tmp``, checked."""
        where = self.where(name)
        # A whole copy needs the metadata files again: those of a checked metadata copy are linked.
        partial = self._metadata_copy(name, expected) if kind == "shards" else None
        meta, raw = (partial[1], partial[2]) if partial else self._meta(name, expected)
        files = [f for f in meta.files if kind == "shards" or not _is_pixels(f.path)]
        downloads: list[tuple[FileEntry, Path]] = []
        for entry in files:
            target = tmp / _safe_path(entry.path, where)
            target.parent.mkdir(parents=True, exist_ok=True)
            if partial and not _is_pixels(entry.path):
                try:
                    os.link(partial[0] / entry.path, target)
                    continue
                except OSError:  # evicted meanwhile, or a filesystem without hard links
                    pass
            downloads.append((entry, target))

        def download(job: tuple[FileEntry, Path]) -> None:
            self._download(f"{SHARDS}/{name}/{job[0].path}", job[1], job[0], where)

        # A Zarr shard is 21 objects: their requests overlap.
        with ThreadPoolExecutor(max(1, min(FILE_THREADS, len(downloads))), thread_name_prefix="rlt-file") as pool:
            list(pool.map(download, downloads))
        (tmp / META).write_bytes(raw)
        log.debug("fetched %s (%s, %d files)", where, kind, len(files))

    def _metadata_copy(self, name: str, expected: str) -> tuple[Path, ShardMeta, bytes] | None:
        """The checked metadata copy of the shard, its ``meta.json`` read, if the cache has one."""
        folder = self.local / "meta" / name
        if not _usable(folder, "meta", expected):
            return None
        try:
            raw = (folder / META).read_bytes()
            return folder, ShardMeta.from_dict(parse_json(raw, folder / META), folder / META), raw
        except (OSError, ValueError):  # evicted meanwhile
            return None

    def _meta(self, name: str, expected: str) -> tuple[ShardMeta, bytes]:
        """The shard's ``meta.json`` from the store, checked against the index's checksum."""
        where, relative = self.where(name), f"{SHARDS}/{name}/{META}"
        try:
            raw = self.store.read_bytes(relative)
        except FileNotFoundError:
            raise CorruptShardError(where, f"{META} is missing: the shard is not committed in the store") from None
        try:
            meta = ShardMeta.from_dict(parse_json(raw, self.store.where(relative)), self.store.where(relative))
        except ValueError as e:  # FormatError, JSONDecodeError, UnicodeDecodeError
            raise CorruptShardError(where, f"unreadable {META} ({e})") from e
        if meta.checksum != expected or checksum([asdict(f) for f in meta.files]) != expected:
            raise CorruptShardError(where, f"{META} does not match the checksum in the index (altered or rewritten)")
        return meta, raw

    def _download(self, relative: str, target: Path, entry: FileEntry, where: str) -> None:
        """Copies one object to ``target``, hashing it on the way; raises if it is not the one recorded.

        The object comes in requests of up to `BLOCK` bytes, each into one buffer that is hashed and
        written whole. Streaming it 8 MB at a time (pyarrow sends a ranged GET per read) took 2.5x
        as long against moto's server, where a ranged GET costs about what a whole one does; against
        S3 each request adds a round trip. Reading straight into the file's pages through a mapping
        saved the copy, but left the file in small pages that every later epoch maps 5x slower.
        """
        import xxhash

        digest = xxhash.xxh3_128()
        try:
            source = self.store.fs.open_input_file(self.store.key(relative))
        except FileNotFoundError:
            raise CorruptShardError(where, f"{entry.path} is missing") from None
        with source, open(target, "wb") as out:
            size = source.size()
            if size != entry.bytes:
                raise CorruptShardError(where, f"{entry.path} has {size} bytes, expected {entry.bytes} (truncated?)")
            for offset in range(0, size, BLOCK):
                block = source.read_at(min(BLOCK, size - offset), offset)
                if len(block) != min(BLOCK, size - offset):  # the object shrank since its size was read
                    raise CorruptShardError(where, f"{entry.path} ended after {offset + len(block)} of {size} bytes")
                digest.update(block)
                out.write(block)
        if f"{DIGEST}:{digest.hexdigest()}" != entry.digest:
            raise CorruptShardError(where, f"{entry.path} does not match its checksum (altered)")


# The copies this process found checked (or fetched), by (folder, key of the check), with their
# files' stats then: a copy whose stats still match needs no reading of its record again.
_seen: dict[tuple[str, str], list[list[Any]]] = {}

# What this process last knew the cache to hold: (bytes, when it scanned), and the fetches since.
_known: tuple[int, float] | None = None
_known_lock = threading.Lock()
# A scan finds what other processes fetched too: at least this often while fetching.
RESCAN_SECONDS = 10.0


def _forget_after_fork() -> None:
    global _known, _known_lock
    _known, _known_lock = None, threading.Lock()  # a thread of the parent may have held it


os.register_at_fork(after_in_child=_forget_after_fork)


def cached_copy(
    local: Path, kind: Kind, name: str, expected: str, limit: int, fill: Callable[[Path], None]
) -> tuple[Path, IO[bytes]]:
    """The copy ``local/kind/name`` made from the shard with checksum ``expected``, made if need be,
    and the shared lock that keeps it from eviction until closed.

    ``fill`` writes the copy's files into a new folder. One process makes a copy at a time (the
    others wait, then use it); the folder is renamed in whole and its check recorded, so no process
    makes it again while its files are unchanged. The cache then evicts down to ``limit`` bytes.
    """
    folder = local / kind / name
    lock = _lock(_lock_path(local, kind, name), exclusive=False)
    try:
        made = False
        if not _usable(folder, kind, expected):
            with _locked(_lock_path(local, kind, name, ".fetch")):
                if not _usable(folder, kind, expected):  # another process may have made it
                    _make(folder, _key(kind, expected), fill)
                    made = True
        os.utime(folder)  # its last use, for eviction
        if made:
            _make_room(limit, folder)
    except BaseException:
        lock.close()
        raise
    return folder, lock


def _make(folder: Path, key: str, fill: Callable[[Path], None]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        tmp.mkdir()
        fill(tmp)
        if folder.exists():  # a copy of another version of the shard, or one that changed since
            _discard(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stats = _file_stats(folder)
    remember_check(folder, key, stats)
    _seen[(str(folder), key)] = stats


def has_copy(local: Path, kind: Kind, name: str, expected: str) -> bool:
    """Whether the cache holds the copy ``local/kind/name`` made from the shard with checksum
    ``expected``, unchanged since."""
    return _usable(local / kind / name, kind, expected)


def _usable(folder: Path, kind: Kind, expected: str) -> bool:
    """Whether ``folder`` holds a copy made from ``expected`` whose files have not changed since:
    the record of its check is read once per process, then its file stats are compared with those
    this process saw."""
    if not folder.is_dir():
        return False
    key = (str(folder), _key(kind, expected))
    stats = _file_stats(folder)
    if _seen.get(key) == stats:
        return True
    if not checked_before(folder, key[1], stats):
        return False
    _seen[key] = stats
    return True


def _lock_path(local: Path, kind: Kind, name: str, suffix: str = "") -> Path:
    return local / "locks" / f"{kind}-{name}{suffix}"


def _make_room(limit: int, fetched: Path) -> None:
    """After a fetch: evicts what the cache holds over ``limit``, scanning the cache only when this
    process's count says it may be over, or its last scan is old (others fetch as well)."""
    global _known
    size = _size(fetched)
    with _known_lock:
        if _known is not None and _known[0] + size <= limit and time.monotonic() - _known[1] < RESCAN_SECONDS:
            _known = (_known[0] + size, _known[1])
            return
    total = evict(limit, keep=fetched)
    with _known_lock:
        _known = (total, time.monotonic())


def evict(limit: int, *, keep: Path | None = None) -> int:
    """Removes the least recently used copies of every mirror until the cache holds at most ``limit``
    bytes, save ``keep`` and the copies a process holds. Returns the bytes the cache holds after."""
    copies: list[tuple[float, int, Path, Path]] = []  # last use, bytes, folder, its lock
    total = 0
    now = time.time()
    for dataset in _scandir(cache_root() / "remote"):
        for kind in CACHED:
            kind_folder = Path(dataset.path) / kind
            for entry in _scandir(kind_folder):
                folder = Path(entry.path)
                try:
                    used = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if entry.name.startswith("."):  # a fetch under way, or left by one that died
                    if now - used > STALE_SECONDS:
                        shutil.rmtree(folder, ignore_errors=True)
                    else:
                        total += _size(folder)
                    continue
                size = _copy_size(entry)
                total += size
                copies.append((used, size, folder, _lock_path(Path(dataset.path), kind, entry.name)))
    for _, size, folder, lock_path in sorted(copies):
        if total <= limit:
            break
        if folder == keep:
            continue
        lock = _try_lock(lock_path)
        if lock is None:  # held by a reader
            continue
        try:
            _discard(folder)
        except FileNotFoundError:  # evicted by another process meanwhile
            pass
        finally:
            lock.close()
        total -= size
    if total > limit:
        log.debug("the shard cache holds %d bytes, over its limit of %d: the rest is in use", total, limit)
    return total


def _key(kind: Kind, expected: str) -> str:
    """What a check of a copy is recorded under: a whole copy's is `verify_shard`'s own record."""
    if kind == "shards":
        return expected
    return f"{expected} {'metadata' if kind == 'meta' else kind}"


def _is_pixels(path: str) -> bool:
    """Whether a data file holds pixels (what readers of metadata never fetch)."""
    return path == ARROW_TOKENS_FILE or path.startswith("tokens/")


def _safe_path(path: str, where: str) -> PurePosixPath:
    """A data file's path from ``meta.json``, refused if it would leave the shard's folder."""
    parts = PurePosixPath(path)
    if parts.is_absolute() or not parts.parts or any(p in ("", ".", "..") for p in parts.parts) or path == META:
        raise CorruptShardError(where, f"{META} lists the file {path!r}, which is not a path inside the shard")
    return parts


def _discard(folder: Path) -> None:
    """Removes a copy at once (renamed away first, so a reader sees all of it or none)."""
    trash = folder.with_name(f".{folder.name}.evicted-{uuid.uuid4().hex[:12]}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# Bytes of each copy by (folder, inode): a copy never changes once renamed in, only goes.
_sizes: dict[tuple[str, int], int] = {}


def _copy_size(entry: os.DirEntry[str]) -> int:
    key = (entry.path, entry.inode())
    if key not in _sizes:
        _sizes[key] = _size(Path(entry.path))
    return _sizes[key]


def _size(folder: Path) -> int:
    total = 0
    for base, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed as we walked
                total += os.stat(os.path.join(base, name)).st_size
    return total


def _scandir(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            yield from (e for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return


def _lock(path: Path, *, exclusive: bool) -> IO[bytes]:
    """``path`` opened and flock'ed, waiting for it. Closing the file (or the process ending)
    releases the lock; a lock taken through another open of the file, in this process or another,
    conflicts with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open(path, "a+b")  # noqa: SIM115 (the caller holds it open)
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        file.close()
        raise
    return file


def _try_lock(path: Path) -> IO[bytes] | None:
    """``path`` flock'ed exclusively, or None at once if anyone holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open(path, "a+b")  # noqa: SIM115 (the caller holds it open)
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    except BaseException:
        file.close()
        raise
    return file


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = _lock(path, exclusive=True)
    try:
        yield
    finally:
        lock.close()
