"""Datasets, manifests and videos at URLs: ``s3://bucket/prefix``, ``gs://...``, anything that
``pyarrow.fs`` opens, or failing that fsspec.

An object store has no rename and no folders, so a dataset there is committed object by object:
a shard's data objects first, its ``meta.json`` only once every data object is confirmed (present,
with its size), and ``index.json`` last. A shard is committed when its ``meta.json`` exists. Readers
and writers work on local copies in rlt-prep's cache folder (see `cache_root`): a shard is fetched
whole, checked against its checksum once, and read from local disk from then on.

S3 endpoints other than AWS's come from the environment (``AWS_ENDPOINT_URL``, read by pyarrow and
boto alike) or from the URL (``s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlt.dataset._files import cache_root


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names an object store or remote filesystem rather than a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local path, also from a ``file://`` URL."""
    if isinstance(location, str) and location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return Path(location)


# The AWS SDK under pyarrow's S3 filesystem checks a CRC of every object it GETs that has one, which
# costs a fifth of the client's CPU: from moto's server on 2 cores, 4 GETs at a time of 76 MB objects,
# 0.84 s of client CPU per 608 MB with it and 0.68 s without, 900 against 1000 MB/s (a probe, not
# committed); the store's ceiling in benchmarks/bench_remote_loader.py rose from 772 to 876 MB/s.
# A reader that checks what it fetches against the digests in the shard's meta.json, end to end,
# turns the SDK's check off for its own client (`Store(digests_checked=True)`); the client reads the
# setting when it is made, so the environment is set only meanwhile, and a user's own setting stands.
_SDK_RESPONSE_CHECK = "AWS_RESPONSE_CHECKSUM_VALIDATION"
_environment = threading.Lock()


@contextlib.contextmanager
def _without_sdk_response_checks() -> Iterator[None]:
    with _environment:
        if _SDK_RESPONSE_CHECK in os.environ:
            yield
            return
        os.environ[_SDK_RESPONSE_CHECK] = "when_required"
        try:
            yield
        finally:
            os.environ.pop(_SDK_RESPONSE_CHECK, None)


def filesystem(url: str, *, digests_checked: bool = False) -> tuple[Any, str]:
    """The ``pyarrow.fs`` filesystem and the path within it that ``url`` names. With
    ``digests_checked`` (the caller checks every object it reads against a digest of its own), an S3
    client that does not check the store's CRCs of what it reads as well."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        if digests_checked and url.startswith("s3://"):
            with _without_sdk_response_checks():
                return pafs.FileSystem.from_uri(url)
        return pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as arrow_error:
        try:
            import fsspec
        except ImportError:
            raise ValueError(f"{url}: pyarrow cannot open it ({arrow_error}), and fsspec is not installed") from None
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise ValueError(f"{url}: neither pyarrow ({arrow_error}) nor fsspec ({e}) can open it") from e
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class Store:
    """A folder at a URL, spoken to through ``pyarrow.fs``: the few operations a dataset needs.

    Paths given to the methods are relative to the folder, with ``/`` separators. ``digests_checked``:
    see `filesystem`.
    """

    def __init__(self, url: str, *, digests_checked: bool = False) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url, digests_checked=digests_checked)
        self.root = self.root.rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def where(self, relative: str) -> str:
        """The URL of ``relative``, for messages."""
        return f"{self.url}/{relative}"

    def size(self, relative: str) -> int | None:
        """The object's size, or None when there is none."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.key(relative))
        return info.size if info.type == pafs.FileType.File else None

    def exists(self, relative: str) -> bool:
        return self.size(relative) is not None

    def read_bytes(self, relative: str) -> bytes:
        """A small object, whole, in one request; FileNotFoundError naming its URL if there is none."""
        try:
            with self.fs.open_input_stream(self.key(relative), compression=None) as f:
                return bytes(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.where(relative)} does not exist") from None

    def write_bytes(self, relative: str, data: bytes) -> None:
        """One object, whole (an object store shows the new object whole or not at all)."""
        with self.fs.open_output_stream(self.key(relative), compression=None) as f:
            f.write(data)

    def upload(self, local: Path, relative: str) -> None:
        """Copies a local file to ``relative`` and confirms the object is there with its size."""
        with open(local, "rb") as src, self.fs.open_output_stream(self.key(relative), compression=None) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        expected = local.stat().st_size
        found = self.size(relative)
        if found != expected:
            raise OSError(f"{self.where(relative)}: uploaded {expected} bytes, the store holds {found}")

    def download(self, relative: str, local: Path) -> None:
        with self.fs.open_input_stream(self.key(relative), compression=None) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)

    def objects(self, relative: str) -> list[tuple[str, int]]:
        """Every object below ``relative``: its path relative to ``relative`` and its size."""
        import pyarrow.fs as pafs

        base = self.key(relative)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        return sorted(
            (info.path[len(base) + 1 :], info.size)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        )

    def children(self, relative: str) -> list[str]:
        """The names of the entries directly below ``relative``."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.key(relative), recursive=False, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def remove(self, relative: str) -> None:
        """Removes an object, or every object below a prefix."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.key(relative))
        if info.type == pafs.FileType.File:
            self.fs.delete_file(self.key(relative))
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.key(relative))


def mirror(url: str) -> Path:
    """The local folder that holds what rlt-prep has fetched of (or stages for) the folder at ``url``."""
    name = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:20]
    return cache_root() / "remote" / name


def fetch_file(url: str) -> Path:
    """A local copy of the file at ``url`` (a manifest, a video), fetched once into the cache.

    A file already fetched is used again while the object keeps its size.
    """
    parent, _, name = url.rstrip("/").rpartition("/")
    store = Store(parent)
    size = store.size(name)
    if size is None:
        raise FileNotFoundError(f"{url} does not exist")
    local = mirror(parent) / "files" / name
    if local.is_file() and local.stat().st_size == size:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{name}.{uuid.uuid4().hex[:8]}")
    try:
        store.download(name, tmp)
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return local


def publish_shard(store: Store, folder: Path, name: str, files: list[str]) -> None:
    """Uploads the committed local shard ``folder`` as shard ``name`` of the dataset at ``store``:
    every data file first, each confirmed present with its size, then ``meta.json``, which commits it.

    A job killed midway leaves data objects without a ``meta.json``: not a shard, and overwritten by
    the next attempt.
    """
    from rlt.dataset._files import META
    from rlt.dataset._format import SHARDS, check_shard_name

    base = f"{SHARDS}/{check_shard_name(name, store.url, 'shard name')}"
    for relative in files:
        store.upload(folder / relative, f"{base}/{relative}")
    store.upload(folder / META, f"{base}/{META}")
