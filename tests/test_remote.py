"""Datasets at URLs: read from a real S3 API (moto's server on loopback, see tests/s3.py) through the
shard cache, exactly as from local disk."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlt import open_dataset
from rlt.cli import app
from rlt.dataset import FIELDS, META, CorruptShardError, TokenDataset, cache_root
from rlt.dataset._cache import RemoteShards, cache_limit_bytes
from rlt.dataset._remote import Store, mirror
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.stats import dataset_stats
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream
from tests.s3 import S3

SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
MAX_TOKENS = 120


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts with an empty cache of its own (the `s3` fixture gives it another)."""
    monkeypatch.setenv("RLT_PREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLT_PREP_CACHE_LIMIT", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_samples(tmp_path_factory.mktemp("remote"), num_videos=8, num_frames=24, height=64, width=96)


@pytest.fixture(scope="module", params=["arrow", "zarr"])
def local(request: pytest.FixtureRequest, videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 clips in 4 shards, written by the real job (one worker: in this process)."""
    out = tmp_path_factory.mktemp(f"local-{request.param}") / "out"
    config = TokenizeConfig(storage=request.param, shard_size=2, sampling=SAMPLING, backend="decord")
    tokenize_dataset(videos, out, config, workers=1)
    return out


def upload(s3: S3, local: Path, url: str | None = None) -> str:
    """A copy of the dataset ``local`` at ``url`` (default: in a new bucket); its URL."""
    import pyarrow.fs as pafs

    url = url or f"{s3.bucket()}/dataset"
    fs = s3.filesystem()
    pafs.copy_files(
        str(local), url.removeprefix("s3://"), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    return url


@pytest.fixture
def remote(s3: S3, local: Path) -> str:
    return upload(s3, local)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every object this process downloads into the cache."""
    seen: list[str] = []
    download = RemoteShards._download

    def counting(self: RemoteShards, relative: str, *args: object) -> None:
        seen.append(relative)
        download(self, relative, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RemoteShards, "_download", counting)
    return seen


def assert_same_rows(a: TokenDataset, b: TokenDataset) -> None:
    assert len(a) == len(b) == 16
    for ra, rb in zip(a, b, strict=True):
        for name in FIELDS:
            va, vb = getattr(ra, name), getattr(rb, name)
            if isinstance(va, np.ndarray):
                assert va.dtype == vb.dtype and np.array_equal(va, vb), name
            else:
                assert va == vb, name


def batches(root: str | Path, workers: int, **options: object) -> list[tuple[list[tuple[str, int]], list[bytes]]]:
    """Each batch of an epoch: its clips, and the bytes of every tensor."""
    stream = TokenStream(root, max_tokens=MAX_TOKENS, seed=5, **options)  # type: ignore[arg-type]
    tensors = ("tokens", "positions", "lengths", "cu_seqlens", "keep", "labels", "padded", "frame_indices")
    return [
        (list(zip(b.videos or (), b.clip_ids or (), strict=True)), [getattr(b, t).numpy().tobytes() for t in tensors])
        for b in TokenLoader(stream, num_workers=workers)
    ]


def files_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def one_storage(local: Path) -> None:
    if open_dataset(local).storage != "arrow":
        pytest.skip("what the storage does not change: tested on Arrow alone")


def cached(kind: str = "shards") -> dict[str, Path]:
    return {p.name: p for p in (cache_root() / "remote").glob(f"*/{kind}/shard-*")}


def test_rows_equal_the_local_datasets_field_by_field(local: Path, remote: str) -> None:
    dataset = open_dataset(remote)
    assert dataset.remote and dataset.root == remote
    assert dataset.index == open_dataset(local).index
    assert_same_rows(dataset, open_dataset(local))
    assert dataset[-1].video == open_dataset(local)[15].video


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_over_the_url_yields_the_local_batches(local: Path, remote: str, workers: int) -> None:
    assert batches(remote, workers) == batches(local, workers)
    assert set(cached()) == {s.name for s in open_dataset(local).shards}


def test_the_loader_reads_only_metadata_to_plan_and_each_object_once(
    local: Path, remote: str, fetches: list[str]
) -> None:
    stream = TokenStream(remote, max_tokens=MAX_TOKENS)
    assert len(stream) == len(TokenStream(local, max_tokens=MAX_TOKENS))
    assert cached() == {} and len(cached("meta")) == 4
    assert not any(p.name == "tokens.arrow" or p.name == "tokens" for p in cache_root().rglob("*"))
    assert all("/tokens" not in f for f in fetches)
    list(TokenLoader(stream))
    # The whole copies link the metadata files already fetched: every object came down once.
    stored = [f"shards/{p.parent.name}/{f['path']}" for p in (local / "shards").glob("*/meta.json")
              for f in json.loads(p.read_text())["files"]]  # fmt: skip
    assert sorted(fetches) == sorted(stored)


def test_a_small_cache_evicts_the_least_recently_used_and_stays_correct(local: Path, remote: str) -> None:
    sizes = sorted(files_size(p) for p in (local / "shards").iterdir())
    limit = sizes[-1] + sizes[0] // 2  # room for one shard, not two
    for _ in open_dataset(remote, cache_limit=limit):
        assert sum(files_size(p) for p in cached().values()) <= limit
    assert_same_rows(open_dataset(remote, cache_limit=limit), open_dataset(local))
    assert list(cached()) == ["shard-00003"]  # the last one read
    # The loader, with workers fetching at once, through a cache that holds one shard.
    assert batches(remote, 2, cache_limit=limit, shuffle_buffer=2) == batches(local, 2, shuffle_buffer=2)


def test_a_shard_held_open_is_not_evicted(local: Path, remote: str) -> None:
    dataset = open_dataset(remote, cache_limit=0)
    dataset[0]  # holds shard 0
    other = open_dataset(remote, cache_limit=0)
    for k in range(1, 4):
        other[4 * k]  # fetches shard k, evicting all it may
        if k < 3:
            other.release(k)
    assert set(cached()) == {"shard-00000", "shard-00003"}
    assert np.array_equal(dataset[1].tokens, open_dataset(local)[1].tokens)


def test_a_second_open_reuses_the_cache(local: Path, remote: str, fetches: list[str]) -> None:
    assert_same_rows(open_dataset(remote), open_dataset(local))
    first = len(fetches)
    assert first == sum(len(json.loads((p / "meta.json").read_text())["files"]) for p in cached().values())
    times = {f: f.stat().st_mtime_ns for p in cached().values() for f in p.rglob("*") if f.is_file()}
    assert_same_rows(open_dataset(remote), open_dataset(local))
    assert batches(remote, 0) == batches(local, 0)
    assert len(fetches) == first  # nothing downloaded again
    assert times == {f: f.stat().st_mtime_ns for p in cached().values() for f in p.rglob("*") if f.is_file()}


def test_zarr_shards_with_arrow_copies_in_the_cache_are_not_fetched_again(
    local: Path, remote: str, fetches: list[str]
) -> None:
    if open_dataset(local).storage != "zarr":
        pytest.skip("Arrow shards are read as fetched")
    expected = batches(local, 0)
    assert batches(remote, 0) == expected
    for copy in cached("shards").values():  # the fetched shards evicted; their Arrow copies kept
        shutil.rmtree(copy)
    fetched = len(fetches)
    assert batches(remote, 0) == expected
    assert len(fetches) == fetched


def test_a_warm_stream_fetches_nothing_ahead(local: Path, remote: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert batches(remote, 0) == batches(local, 0)
    ahead: list[str] = []
    monkeypatch.setattr(RemoteShards, "_fetch_ahead", lambda self, name, *args: ahead.append(name))
    assert batches(remote, 0) == batches(local, 0)
    assert ahead == []  # every copy known checked: no thread started to look


def test_threads_fetching_one_shard_download_it_once(remote: str, fetches: list[str]) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            dataset = open_dataset(remote)
            barrier.wait()
            dataset[0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = len(json.loads((cached()["shard-00000"] / "meta.json").read_text())["files"])
    assert len(fetches) == files


def test_a_cached_copy_altered_on_disk_is_fetched_again(local: Path, remote: str) -> None:
    open_dataset(remote)[0]
    victim = next(f for f in sorted(cached()["shard-00000"].rglob("*")) if f.is_file() and f.name != "meta.json")
    victim.write_bytes(b"\0" * victim.stat().st_size)
    assert_same_rows(open_dataset(remote), open_dataset(local))


def test_a_dataset_rewritten_at_its_url_is_read_anew(
    s3: S3, local: Path, remote: str, videos: Path, tmp_path: Path
) -> None:
    one_storage(local)
    open_dataset(remote)[0]
    other = tmp_path / "other"
    config = TokenizeConfig(storage="arrow", shard_size=3, sampling=SAMPLING, backend="decord")
    tokenize_dataset(videos, other, config, workers=1)
    s3.filesystem().delete_dir_contents(remote.removeprefix("s3://"))
    upload(s3, other, remote)
    assert_same_rows(open_dataset(remote), open_dataset(other))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("alter", "does not match its checksum (altered)"),
        ("truncate", "bytes, expected"),
        ("delete", "is missing"),
        ("uncommit", "meta.json is missing: the shard is not committed"),
    ],
)
def test_a_corrupt_object_in_the_store_is_a_corrupt_shard_naming_it(
    s3: S3, local: Path, remote: str, damage: str, message: str
) -> None:
    dataset = open_dataset(local)
    meta = json.loads((local / "shards" / "shard-00001" / "meta.json").read_text())
    victim = max(meta["files"], key=lambda f: f["bytes"])["path"]
    shard_url = f"{remote}/shards/shard-00001"
    data = (local / "shards" / "shard-00001" / victim).read_bytes()
    if damage == "alter":
        s3.put(f"{shard_url}/{victim}", data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        s3.put(f"{shard_url}/{victim}", data[: len(data) // 2])
    else:
        s3.filesystem().delete_file(f"{shard_url}/{META if damage == 'uncommit' else victim}".removeprefix("s3://"))
    begins = f"{shard_url}: {META if damage == 'uncommit' else victim} "

    rows = open_dataset(remote)
    assert rows[0].video == dataset[0].video  # the other shards read
    with pytest.raises(CorruptShardError) as raised:
        rows[4]  # shard 1 holds rows 4 to 7
    assert raised.value.shard == shard_url
    assert str(raised.value).startswith(begins) and message in str(raised.value)
    with pytest.raises(CorruptShardError) as raised:
        list(TokenLoader(TokenStream(remote, max_tokens=MAX_TOKENS, shuffle=False), num_workers=2))
    assert raised.value.shard == shard_url
    stream = TokenStream(remote, max_tokens=MAX_TOKENS, shuffle=False, on_error="skip")
    assert sum(b.num_clips for b in TokenLoader(stream)) == 12
    assert stream.skipped_shards == [shard_url]


def test_a_url_without_an_index_is_not_a_dataset(s3: S3) -> None:
    url = f"{s3.bucket()}/nothing-here"
    with pytest.raises(FileNotFoundError, match=f"{url}/index.json does not exist"):
        open_dataset(url)
    s3.put(f"{url}/index.json", b'{"format": "rlt-tokens", "version": 1}')
    with pytest.raises(ValueError, match=f"{url}/index.json: version"):
        open_dataset(url)


def test_stats_over_the_url_equal_stats_over_the_local_path(local: Path, remote: str) -> None:
    by_url, by_path = dataset_stats(remote), dataset_stats(local)
    assert by_url.pop("dataset") == remote and by_path.pop("dataset") == str(local)
    assert by_url == by_path
    assert cached() == {}  # metadata only: no pixels fetched


def test_cli_stats_of_a_url(local: Path, remote: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stats", remote, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["clips"] == 16
    missing = CliRunner().invoke(app, ["stats", f"{remote}-missing"])
    assert missing.exit_code == 2 and f"{remote}-missing/index.json does not exist" in missing.output


def test_train_and_eval_on_a_url(local: Path, remote: str, tmp_path: Path) -> None:
    one_storage(local)
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", remote, "--out", str(run), "--max-steps", "2", "--max-tokens", "512"])
    assert trained.exit_code == 0, trained.output
    scored = CliRunner().invoke(app, ["eval", str(run), remote, "--json", str(tmp_path / "e.json")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "e.json").read_text())["clips"] == 16


def test_the_cache_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_limit_bytes() == 50 * 10**9
    assert cache_limit_bytes(123) == 123
    for text, value in [("1000", 1000), ("1.5k", 1500), ("50GB", 50 * 10**9), ("2 T", 2 * 10**12)]:
        monkeypatch.setenv("RLT_PREP_CACHE_LIMIT", text)
        assert cache_limit_bytes() == value
    monkeypatch.setenv("RLT_PREP_CACHE_LIMIT", "lots")
    with pytest.raises(ValueError, match="RLT_PREP_CACHE_LIMIT='lots' is not a size"):
        cache_limit_bytes()


def test_only_a_store_whose_reader_checks_digests_skips_the_sdks_crc_check(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs as pafs

    seen = []
    real = pafs.FileSystem

    class Recording:  # what the environment held as each S3 client was made
        @staticmethod
        def from_uri(url: str) -> tuple[pafs.FileSystem, str]:
            seen.append(os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"))
            return real.from_uri(url)

    monkeypatch.setattr(pafs, "FileSystem", Recording)
    monkeypatch.delenv("AWS_RESPONSE_CHECKSUM_VALIDATION", raising=False)
    url = s3.bucket()
    Store(url, digests_checked=True)
    Store(url)
    assert seen == ["when_required", None]
    assert "AWS_RESPONSE_CHECKSUM_VALIDATION" not in os.environ  # set only while the client was made
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_supported")  # the user's setting stands
    Store(url, digests_checked=True)
    assert seen[-1] == "when_supported"


def test_a_local_dataset_touches_no_cache(local: Path, own_cache: Path) -> None:
    one_storage(local)
    assert_same_rows(open_dataset(local), open_dataset(f"file://{local}"))
    assert not (own_cache / "remote").exists()
    assert mirror("s3://a/b") != mirror("s3://a/c")
