"""The dataset format (rlt/dataset/FORMAT.md): validated metadata, structural checks of shards, shards
without rows, int16 limits, checksums paid once per machine, the loader's errors and ranks, and the
spec's tables against what the job writes."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlt import open_dataset
from rlt.dataset import (
    INDEX,
    META,
    CorruptShardError,
    DatasetIndex,
    FileEntry,
    FormatError,
    Geometry,
    ShardReader,
    ShardWriter,
    TokenDataset,
    _files,
    _reader,
    cache_root,
    checksum,
    file_list,
    read_index,
    read_shard_meta,
    write_index,
    write_json_atomic,
)
from rlt.dataset._storage import ARROW_FILE, ARROW_TOKENS_FILE, write_columns
from rlt.pipeline import ClipSampling, PackedTokens, RLTConfig, run_length_tokenize
from rlt.samples import make_samples
from rlt.stats import dataset_stats
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream
from tests.clips import batch as clip_batch

SPEC = Path(__file__).resolve().parents[1] / "rlt" / "dataset" / "FORMAT.md"
SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
# In-memory datasets: clips of 4 frames of 16x16, tubelets of 2, patches of 8: G=2 on a 2x2 grid, D=384.
TINY_SAMPLING = ClipSampling(num_frames=4, frame_interval=1, size=16, crop=16)
TINY_RLT = RLTConfig(tubelet_size=2, patch_size=8)
TOKENS_PER_RANDOM_CLIP = 8  # noise keeps every tubelet: G * 2 * 2
STORAGES = ["arrow", "zarr"]
MIXED = ("moving_square", "static", "random")


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Records of checked shards go below the test's folders, never into the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLT_PREP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder, and no shard checked yet by this process: every test hashes afresh."""
    monkeypatch.setenv("RLT_PREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_reader, "_verified", set())
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the job writes, in both storages: three videos and a broken file, one per shard, so that
    shard-00002 (every video of it failed) has no rows."""
    folder = tmp_path_factory.mktemp("written")
    make_samples(folder, num_videos=3, num_frames=24, height=64, width=96)
    (folder / "broken.mp4").write_bytes(b"not a video")
    rows = ["sample_000_right.mp4,right", "sample_001_left.mp4,left", "broken.mp4,left", "sample_002_right.mp4,right"]
    (folder / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    roots = {}
    for storage in STORAGES:
        config = TokenizeConfig(storage=storage, shard_size=1, sampling=SAMPLING, backend="decord")  # type: ignore[arg-type]
        tokenize_dataset(folder / "manifest.csv", folder / storage, config, workers=1)  # in this process, no Ray
        roots[storage] = folder / storage
    return roots


def tiny_config(storage: str) -> TokenizeConfig:
    return TokenizeConfig(storage=storage, shard_size=1, sampling=TINY_SAMPLING, rlt=TINY_RLT, backend="decord")  # type: ignore[arg-type]


def tokenize(
    kinds: list[str], *, frames: int = 4, side: int = 16, tubelet_size: int = 2, patch_size: int = 8, seed: int = 0
) -> PackedTokens:
    """Synthetic clips (tests/clips.py) tokenized; by default of the tiny geometry."""
    clips = torch.from_numpy(clip_batch(kinds, seed, frames, side, side))
    return run_length_tokenize(clips, tubelet_size=tubelet_size, patch_size=patch_size)


def one_clip(p: PackedTokens) -> PackedTokens:
    """``p``, a batch of one clip, said to be clip 0 of video ``v``."""
    g = p.keep.shape[1]
    return p.with_clips(
        labels=[0],
        videos=["v"],
        clip_ids=[0],
        frame_indices=torch.zeros(1, g * p.tubelet_size),
        padded=torch.zeros(1, g),
    )


def packed(n: int, seed: int, kinds: tuple[str, ...] = MIXED) -> PackedTokens:
    """``n`` tokenized clips of the tiny geometry, with what each clip is."""
    return tokenize([kinds[i % len(kinds)] for i in range(n)], seed=seed).with_clips(
        labels=[i % 3 for i in range(n)],
        videos=[f"video-{seed}-{i}.mp4" for i in range(n)],
        clip_ids=list(range(n)),
        frame_indices=torch.arange(4).repeat(n, 1),
        padded=torch.zeros(n, 2, dtype=torch.bool),
    )


def build(root: Path, storage: str, clips: list[int], kinds: tuple[str, ...] = MIXED) -> Path:
    """A dataset written with `ShardWriter` from in-memory clips: ``clips[k]`` rows in shard k (0: a
    shard whose one video failed)."""
    config = tiny_config(storage)
    metas = []
    for k, n in enumerate(clips):
        writer = ShardWriter(root, f"shard-{k:05d}", storage=config.storage, geometry=config.geometry)
        if n:
            writer.add(packed(n, seed=k, kinds=kinds))
        else:
            writer.fail(f"broken-{k}.mp4", "not a readable video")
        metas.append(writer.commit(videos=max(n, 1), decoder="decord")[0])
    index = DatasetIndex.of(metas, storage=storage, config=config.to_dict(), classes=None, versions={"rlt-prep": "t"})
    write_index(root, index)
    return root


def reindex(root: Path) -> None:
    """Writes ``root``'s index again from its shards' meta.json files."""
    index = read_index(root)
    metas = [read_shard_meta(root / "shards" / s.name) for s in index.shards]
    write_index(
        root,
        DatasetIndex.of(
            metas, storage=index.storage, config=index.config, classes=index.classes, versions=index.versions
        ),
    )


def resign(root: Path, name: str, **changes: int) -> None:
    """Records shard ``name``'s files as they are now (sizes, digests, checksum) in its meta.json and the
    index, so that the checksum passes and only the structure checks can find what is wrong."""
    folder = root / "shards" / name
    files = file_list(folder)
    meta = replace(
        read_shard_meta(folder),
        files=tuple(FileEntry(**f) for f in files),
        bytes=sum(f["bytes"] for f in files),
        checksum=checksum(files),
        **changes,
    )
    write_json_atomic(folder / META, meta.to_dict())
    reindex(root)


def shard_columns(root: Path, name: str) -> dict[str, np.ndarray]:
    """A shard's columns, as `write_columns` takes them."""
    index = read_index(root)
    reader = ShardReader(root / "shards" / name, index.storage, index.geometry)  # type: ignore[arg-type]
    fields = ("video", "label", "clip", "frame_indices", "padded", "positions", "lengths", "tokens")
    columns = {field: np.array(reader.column(field)) for field in fields}
    columns["video"] = columns["video"].astype(object)
    columns["token_offsets"] = np.concatenate([[0], np.cumsum(reader.column("num_tokens"))]).astype(np.int64)
    return columns


def rewrite(root: Path, name: str, change: Callable[[dict[str, np.ndarray]], None]) -> Path:
    """Writes shard ``name`` again from its columns as ``change`` leaves them."""
    storage, geometry = read_index(root).storage, read_index(root).geometry
    folder = root / "shards" / name
    columns = shard_columns(root, name)
    change(columns)
    meta = (folder / META).read_bytes()
    shutil.rmtree(folder)
    folder.mkdir()
    write_columns(folder, columns, storage=storage, geometry=geometry)  # type: ignore[arg-type]
    (folder / META).write_bytes(meta)
    return folder


def read_arrow(path: Path) -> pa.Table:
    """An Arrow file read into memory (not mapped: the tests write over it)."""
    return pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()


def edit_arrow(folder: Path, name: str, column: str, values: pa.Array) -> None:
    """Replaces one column of an Arrow file, whatever its type."""
    table = read_arrow(folder / name)
    table = table.set_column(table.schema.get_field_index(column), column, values)
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_all(root: Path) -> None:
    dataset = TokenDataset(root)
    for k in range(len(dataset.shards)):
        dataset.shard(k)


# index.json, meta.json, plan.json: errors name the file and the field -------------------------------------


def set_path(values: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        values = values[int(key)] if isinstance(values, list) else values[key]
    if value is KeyError:
        del values[last]
    else:
        values[int(last) if isinstance(values, list) else last] = value


INDEX_EDITS = {
    "missing field": ("storage", KeyError, "storage", "missing"),
    "wrong type": ("shards.0.rows", "2", "shards[0].rows", "an integer >= 0"),
    "negative count": ("totals.bytes", -1, "totals.bytes", "an integer >= 0"),
    "path up": ("shards.0.name", "../../etc", "shards[0].name", "not a shard name"),
    "path inside": ("shards.0.name", "shard-1/../x", "shards[0].name", "not a shard name"),
    "unknown storage": ("storage", "parquet", "storage", "not one of zarr, arrow"),
    "old version": ("version", 1, "version", "format version 1 is not supported"),
    "decoders": ("decoders", "decord", "decoders", "a list"),
    "config type": ("config.sampling.crop", "16", "config.sampling.crop", "an integer >= 0"),
    "grid": ("config.sampling.crop", 20, "config", "crop=20 must be positive multiples of"),
    "checksum": ("shards.1.checksum", "sha256:00", "shards[1].checksum", "not an xxh3_128 digest"),
}


@pytest.mark.parametrize("edit", [*INDEX_EDITS, "duplicate shard", "totals clips", "totals videos"])
def test_an_edited_index_is_refused_naming_the_file_and_field(tmp_path: Path, edit: str) -> None:
    root = build(tmp_path / "d", "arrow", [2, 3])
    index = json.loads((root / INDEX).read_text())
    if edit in INDEX_EDITS:
        path, value, field, reason = INDEX_EDITS[edit]
        set_path(index, path, value)
    elif edit == "duplicate shard":
        index["shards"][1] = copy.deepcopy(index["shards"][0])
        index["totals"]["clips"], index["totals"]["tokens"] = 4, 2 * index["shards"][0]["tokens"]
        field, reason = "shards", "listed twice"
    else:
        index["totals"][edit.split()[1]] += 1
        field, reason = f"totals.{edit.split()[1]}", "disagrees with the shards"
    (root / INDEX).write_text(json.dumps(index))
    with pytest.raises(FormatError) as raised:
        open_dataset(root)
    assert raised.value.path == str(root / INDEX) and raised.value.field == field
    assert f"index.json: {field}: " in str(raised.value) and reason in str(raised.value)


META_EDITS = {
    "missing field": ("decoder", KeyError, "decoder", "missing"),
    "wrong type": ("rows", "2", "rows", "an integer >= 0"),
    "bad name": ("name", "../shard-00000", "name", "not a shard name"),
    "failed count": ("failed", 1, "failed", "1 failed videos, 0 errors"),
    "bytes": ("bytes", 1, "bytes", "not the sum of the files' sizes"),
    "file outside": ("files.0.path", "../../etc/passwd", "files[0].path", "not a relative path inside the shard"),
    "file absolute": ("files.0.path", "/etc/passwd", "files[0].path", "not a relative path inside the shard"),
    "digest": ("files.0.digest", "sha256:00", "files[0].digest", "not an xxh3_128 digest"),
    "checksum": ("checksum", "xxh3_128:xyz", "checksum", "not an xxh3_128 digest"),
}


@pytest.mark.parametrize("edit", META_EDITS)
def test_an_edited_shard_meta_is_refused_naming_the_file_and_field(tmp_path: Path, edit: str) -> None:
    root = build(tmp_path / "d", "zarr", [2, 3])
    folder = root / "shards" / "shard-00001"
    meta = json.loads((folder / META).read_text())
    path, value, field, reason = META_EDITS[edit]
    set_path(meta, path, value)
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(FormatError) as raised:
        read_shard_meta(folder)
    assert raised.value.path == str(folder / META) and raised.value.field == field
    assert f"meta.json: {field}: " in str(raised.value) and reason in str(raised.value)
    with pytest.raises(CorruptShardError, match=rf"shard-00001: unreadable meta.json .*{re.escape(field)}"):
        read_all(root)


@pytest.mark.parametrize("name", ["../../escape", "shard-1/../x", "shard-00000/../../../escape"])
def test_a_plan_with_a_bad_shard_name_is_refused_and_nothing_is_written_outside_out(tmp_path: Path, name: str) -> None:
    videos = tmp_path / "videos"
    manifest = make_samples(videos, num_videos=1, num_frames=8, height=32, width=32)
    out = tmp_path / "nest" / "out"
    out.mkdir(parents=True)
    config = TokenizeConfig(shard_size=1, sampling=ClipSampling(num_frames=4, size=32, crop=32), backend="decord")
    video = manifest.read_text().splitlines()[1].split(",")[0]
    plan = {"config": config.to_dict(), "classes": None, "shards": [{"name": name, "videos": [[video, "x", 0]]}]}
    (out / "plan.json").write_text(json.dumps(plan))
    before = sorted(p for p in tmp_path.rglob("*") if out not in p.parents)
    with pytest.raises(FormatError, match=r"plan\.json: shards\[0\]\.name: .* is not a shard name"):
        tokenize_dataset(manifest, out, config, workers=1)
    assert sorted(p for p in tmp_path.rglob("*") if out not in p.parents) == before
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


# Structure checks: a shard whose checksum passes but whose contents break the format -------------------


def arrow_num_tokens(folder: Path) -> None:
    table = read_arrow(folder / ARROW_FILE)
    counts = table.column("num_tokens").to_numpy().copy()
    counts[0] += 1
    edit_arrow(folder, ARROW_FILE, "num_tokens", pa.array(counts))


def arrow_lengths_int32(folder: Path) -> None:
    table = read_arrow(folder / ARROW_FILE)
    edit_arrow(folder, ARROW_FILE, "lengths", table.column("lengths").cast(pa.list_(pa.int32())))


def arrow_offsets_past_the_end(folder: Path) -> None:
    """The last token offset of clips.arrow's lists made to point past the values: bytes edited in
    place (pyarrow refuses to write such a file)."""
    table = read_arrow(folder / ARROW_FILE)
    offsets = table.column("lengths").chunk(0).offsets.to_numpy()
    wrong = offsets.copy()
    wrong[-1] += 1000
    data = (folder / ARROW_FILE).read_bytes()
    assert data.count(offsets.tobytes()) == 2  # lengths and positions
    (folder / ARROW_FILE).write_bytes(data.replace(offsets.tobytes(), wrong.tobytes()))


def arrow_tokens_moved(folder: Path) -> None:
    """tokens.arrow's rows shifted by one token against clips.arrow's."""
    table = read_arrow(folder / ARROW_TOKENS_FILE)
    tokens = table.column("tokens").chunk(0)
    offsets = tokens.offsets.to_numpy().copy()
    offsets[1] += 1
    edit_arrow(folder, ARROW_TOKENS_FILE, "tokens", pa.ListArray.from_arrays(pa.array(offsets), tokens.values))


def offsets_past_the_end(columns: dict[str, np.ndarray]) -> None:
    columns["token_offsets"][-1] += 1


def offsets_decreasing(columns: dict[str, np.ndarray]) -> None:
    columns["token_offsets"][1] = columns["token_offsets"][-1] + 5


def tokens_int16(columns: dict[str, np.ndarray]) -> None:
    columns["tokens"] = columns["tokens"].astype(np.int16)


def lengths_int32(columns: dict[str, np.ndarray]) -> None:
    columns["lengths"] = columns["lengths"].astype(np.int32)


def position_off_the_grid(columns: dict[str, np.ndarray]) -> None:
    columns["positions"][0, 1] = 2  # rows 0 and 1 only


def tubelet_off_the_grid(columns: dict[str, np.ndarray]) -> None:
    columns["positions"][0, 0] = -1


def run_past_the_clip(columns: dict[str, np.ndarray]) -> None:
    columns["lengths"][0] = 3  # G is 2


def negative_label(columns: dict[str, np.ndarray]) -> None:
    columns["label"][1] = -1


# (storage, columns changed before writing, files changed after, what the error says)
DAMAGE: dict[str, tuple[str, Callable[[dict[str, np.ndarray]], None] | None, Callable[[Path], None] | None, str]] = {
    "arrow num_tokens": ("arrow", None, arrow_num_tokens, "clips.arrow: num_tokens: disagrees"),
    "arrow lengths int32": ("arrow", None, arrow_lengths_int32, "clips.arrow: lengths: is list<item: int32>"),
    "arrow offsets past the end": ("arrow", None, arrow_offsets_past_the_end, "lengths: its offsets end at token"),
    "zarr offsets past the end": ("zarr", offsets_past_the_end, None, r"positions: is int16 \[\d+, 3\]"),
    "zarr offsets decreasing": ("zarr", offsets_decreasing, None, "token_offsets: values: .* never decrease"),
    "zarr lengths int32": ("zarr", lengths_int32, None, "lengths: is int32"),
    **{
        f"{storage} {change.__name__.replace('_', ' ')}": (storage, change, None, what)
        for storage in STORAGES
        for change, what in (
            (position_off_the_grid, "positions: a position lies outside the 2x2x2 grid"),
            (tubelet_off_the_grid, "positions: a position lies outside"),
            (run_past_the_clip, "lengths: a run length is below 1 or runs past tubelet 2"),
            (negative_label, "label: a label is negative"),
        )
    },
}


# The pixels are opened (and checked) on the first read of tokens, not when the shard is opened.
LAZY_DAMAGE = {
    "arrow tokens moved": ("arrow", None, arrow_tokens_moved, "tokens.arrow: tokens: its rows do not hold"),
    "zarr tokens int16": ("zarr", tokens_int16, None, "tokens: is int16"),
}


@pytest.mark.parametrize("damage", [*DAMAGE, *LAZY_DAMAGE])
def test_a_shard_that_breaks_the_format_is_corrupt_and_named(tmp_path: Path, cache: Path, damage: str) -> None:
    storage, change, after, says = {**DAMAGE, **LAZY_DAMAGE}[damage]
    root = build(tmp_path / "d", storage, [2, 3])
    folder = rewrite(root, "shard-00001", change or (lambda columns: None))
    if after:
        after(folder)
    resign(root, "shard-00001")
    _reader.verify_shard(folder, read_index(root).shards[1].checksum)  # the checksum passes
    dataset = open_dataset(root)
    assert dataset[0].tokens is not None  # shard-00000 is fine
    with pytest.raises(CorruptShardError, match="shard-00001") as raised:
        dataset[2]
    assert raised.value.shard == str(folder) and re.search(says, raised.value.reason), raised.value.reason
    # The training loader's reader, which unpacks a Zarr shard into the cache: no copy of it made.
    unpacking = TokenDataset(root, unpack=True)
    assert unpacking[0].tokens is not None
    with pytest.raises(CorruptShardError, match="shard-00001") as raised:
        unpacking[2]
    assert raised.value.shard == str(folder) and re.search(says, raised.value.reason), raised.value.reason
    made = [p.name for p in cache.glob("remote/*/unpacked/*")]
    assert made == (["shard-00000"] if storage == "zarr" else [])


@pytest.mark.parametrize("storage", STORAGES)
def test_a_shard_holding_other_counts_than_its_index_says_is_corrupt(tmp_path: Path, storage: str) -> None:
    root = build(tmp_path / "d", storage, [2, 3])
    meta = read_shard_meta(root / "shards" / "shard-00001")
    resign(root, "shard-00001", tokens=meta.tokens + 1)
    with pytest.raises(CorruptShardError, match=rf"shard-00001: holds 3 rows and {meta.tokens} tokens; the index says"):
        read_all(root)


# Shards without rows --------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", STORAGES)
def test_shards_without_rows_read_count_and_load(tmp_path: Path, written: dict[str, Path], storage: str) -> None:
    for root, rows in ((written[storage], [2, 2, 0, 2]), (build(tmp_path / "d", storage, [0, 3, 0]), [0, 3, 0])):
        dataset = open_dataset(root)
        assert [s.rows for s in dataset.shards] == rows and len(dataset) == sum(rows)
        assert len(list(dataset)) == sum(rows) and dataset[-1].tokens is not None
        empty = dataset.shard(rows.index(0))
        assert (empty.rows, empty.tokens) == (0, 0)
        assert empty.column("tokens").shape == (0, dataset.geometry.token_dim)
        assert empty.column("positions").shape == (0, 3) and len(empty.column("video")) == 0
        assert dataset_stats(root)["clips"] == sum(rows)
        for workers in (0, 2):
            stream = TokenStream(root, max_tokens=1000, seed=1)
            batches = list(TokenLoader(stream, num_workers=workers))
            assert sum(b.num_clips for b in batches) == sum(rows) and stream.skipped_shards == []


# int16 limits -----------------------------------------------------------------------------------------------


def test_a_grid_past_int16_is_refused() -> None:
    with pytest.raises(ValueError, match="int16"):
        TokenizeConfig(sampling=ClipSampling(num_frames=2 * 40000, size=16, crop=16), rlt=TINY_RLT)
    with pytest.raises(ValueError, match="int16"):
        Geometry.of(num_frames=4, crop=8 * 40000, tubelet_size=2, patch_size=8)
    assert Geometry.of(num_frames=2 * 32767, crop=16, tubelet_size=2, patch_size=8).tubelets == 32767


def test_an_index_whose_grid_is_past_int16_is_refused(tmp_path: Path) -> None:
    root = build(tmp_path / "d", "arrow", [1])
    index = json.loads((root / INDEX).read_text())
    index["config"]["sampling"]["num_frames"] = 2 * 40000
    (root / INDEX).write_text(json.dumps(index))
    with pytest.raises(FormatError, match=r"index\.json: config: .*int16"):
        open_dataset(root)


# The loader: corrupt shards, skips counted in the training process, equal batches per rank --------------


def truncate_largest_file(folder: Path) -> None:
    victim = max((p for p in folder.rglob("*") if p.is_file() and p.name != META), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-10])


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_names_a_corrupt_shard_or_skips_and_counts_it(tmp_path: Path, workers: int) -> None:
    # One clip a batch: shard-00001's four clips go to both workers, which both find it corrupt.
    root = build(tmp_path / "d", "arrow", [2, 4, 2], kinds=("random",))
    truncate_largest_file(root / "shards" / "shard-00001")
    loader = TokenLoader(TokenStream(root, max_tokens=TOKENS_PER_RANDOM_CLIP, shuffle=False), num_workers=workers)
    with pytest.raises(CorruptShardError, match=r"shard-00001: tokens\.arrow has \d+ bytes, expected \d+ \(truncated"):
        list(loader)
    stream = TokenStream(root, max_tokens=TOKENS_PER_RANDOM_CLIP, shuffle=False, on_error="skip")
    batches = list(TokenLoader(stream, num_workers=workers))
    assert [v for b in batches for v in b.videos] == [f"video-{k}-{i}.mp4" for k in (0, 2) for i in range(2)]
    assert stream.skipped_shards == [str(root / "shards" / "shard-00001")] and stream.skipped_clips == 4


def test_drop_last_gives_every_rank_the_same_number_of_batches(tmp_path: Path) -> None:
    root = build(tmp_path / "d", "arrow", [3, 2], kinds=("random",))  # 5 clips, one a batch

    def batches(rank: int, **options: Any) -> int:
        stream = TokenStream(root, max_tokens=TOKENS_PER_RANDOM_CLIP, rank=rank, world_size=2, **options)
        loader = TokenLoader(stream, num_workers=0)
        assert len(loader) == len(list(loader))
        return len(stream.plan())

    assert [batches(rank, shuffle=False) for rank in (0, 1)] == [3, 2]
    assert [batches(rank, shuffle=False, drop_last=True) for rank in (0, 1)] == [2, 2]
    for seed in range(3):
        assert [batches(rank, seed=seed, drop_last=True) for rank in (0, 1)] == [2, 2]


# Checksums: paid once per machine --------------------------------------------------------------------------


def count_digests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = _files._digest

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(_files, "_digest", counting)
    return calls


def test_checksums_are_paid_once_per_machine_and_changes_are_found_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = build(tmp_path / "d", "arrow", [2, 3])
    calls = count_digests(monkeypatch)
    assert cache_root() == cache
    assert len(list(open_dataset(root))) == 5
    assert len(calls) == 4  # clips.arrow and tokens.arrow of two shards
    assert len(list((cache / "verified").glob("*.json"))) == 2

    _reader._verified.clear()  # as a new process: only the records remain
    calls.clear()
    assert len(list(open_dataset(root))) == 5 and calls == []
    code = (
        "import sys\nfrom rlt.dataset import _files, open_dataset\ncalls = []\nreal = _files._digest\n"
        "_files._digest = lambda path: calls.append(path) or real(path)\n"
        "print(len(list(open_dataset(sys.argv[1]))), len(calls))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["5", "0"]

    tokens = root / "shards" / "shard-00001" / ARROW_TOKENS_FILE
    data = tokens.read_bytes()
    tokens.write_bytes(data[:-8])  # other bytes, another size
    _reader._verified.clear()
    dataset = open_dataset(root)
    dataset[0]
    with pytest.raises(CorruptShardError, match=r"shard-00001: tokens\.arrow has .* \(truncated\?\)"):
        dataset[2]

    stat = tokens.stat()
    tokens.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # other bytes, the same size, a later time
    os.utime(tokens, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _reader._verified.clear()
    with pytest.raises(CorruptShardError, match=r"shard-00001: tokens\.arrow does not match its checksum"):
        open_dataset(root)[2]
    tokens.write_bytes(data)  # repaired: checked again, and fine
    _reader._verified.clear()
    calls.clear()
    assert open_dataset(root)[2].tokens is not None and len(calls) == 2


# PackedTokens and ShardWriter -------------------------------------------------------------------------------


def assert_same(a: PackedTokens, b: PackedTokens) -> None:
    for name in ("tokens", "positions", "lengths", "cu_seqlens", "keep", "labels", "padded", "frame_indices"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert (a.videos, a.clip_ids, a.tubelet_size, a.patch_size) == (b.videos, b.clip_ids, b.tubelet_size, b.patch_size)


def test_packed_tokens_split_and_concat_round_trip() -> None:
    whole = packed(5, seed=3)
    clips = [whole.clip(i) for i in range(5)]
    assert [c.num_clips for c in clips] == [1] * 5 and whole.clip(-1).videos == ("video-3-4.mp4",)
    assert_same(PackedTokens.concat(clips), whole)
    assert_same(PackedTokens.concat([PackedTokens.concat(clips[:2]), PackedTokens.concat(clips[2:])]), whole)
    for i, clip in enumerate(clips):
        assert torch.equal(clip.unpack(), whole.unpack()[i : i + 1])
    bare = tokenize(["static"])
    assert bare.labels is None and bare.videos is None
    with pytest.raises(ValueError, match="no labels"):
        bare.require_labels()
    mixed = PackedTokens.concat([bare, whole.clip(0)])  # one part without clips: the batch has none
    assert mixed.labels is None and mixed.videos is None and mixed.num_clips == 2
    named = one_clip(bare)
    assert named.labels.tolist() == [0] and named.videos == ("v",) and named.clip_ids == (0,)
    assert named.padded.dtype == torch.bool and named.frame_indices.dtype == torch.int64
    with pytest.raises(ValueError, match="concat needs at least one batch"):
        PackedTokens.concat([])
    with pytest.raises(IndexError, match="clip 5 out of range for 5 clips"):
        whole.clip(5)


def wrong(p: PackedTokens) -> dict[str, tuple[dict[str, Any], str]]:
    n, b = p.num_tokens, p.num_clips
    return {
        "tokens dtype": ({"tokens": p.tokens.float()}, "tokens must be uint8"),
        "positions": ({"positions": p.positions[:, :2]}, rf"positions must be \[{n}, 3\]"),
        "lengths": ({"lengths": p.lengths[:-1]}, rf"lengths must be \[{n}\]"),
        "cu_seqlens dtype": ({"cu_seqlens": p.cu_seqlens.long()}, "cu_seqlens must be int32"),
        "keep": ({"keep": p.keep[0]}, r"keep must be bool \[B, G, h, w\]"),
        "labels": ({"labels": p.labels[:-1]}, "labels must be torch.int64"),
        "padded": ({"padded": p.padded[:, :1]}, "padded must be torch.bool"),
        "frame_indices": ({"frame_indices": p.frame_indices[:, :3]}, "frame_indices must be torch.int64"),
        "videos": ({"videos": p.videos[:-1]}, rf"videos must have one entry per clip \({b}\)"),
        "clip_ids": ({"clip_ids": ()}, "clip_ids must have one entry per clip"),
        "token width": ({"patch_size": 3}, "not a multiple of tubelet_size"),
    }


@pytest.mark.parametrize("case", list(wrong(packed(2, 0))))
def test_packed_tokens_refuse_wrong_shapes(case: str) -> None:
    p = packed(3, seed=1)
    changes, says = wrong(p)[case]
    with pytest.raises(ValueError, match=says):
        replace(p, **changes)


def test_concat_refuses_batches_of_other_shapes() -> None:
    a = packed(2, seed=0)
    for other in (tokenize(["random"], side=32), tokenize(["random"], patch_size=4)):
        with pytest.raises(ValueError, match="concat takes batches of one tubelet_size, patch_size, grid"):
            PackedTokens.concat([a, one_clip(other)])


def test_the_writer_refuses_batches_it_cannot_store(tmp_path: Path) -> None:
    geometry = tiny_config("arrow").geometry
    writer = ShardWriter(tmp_path, "shard-00000", storage="arrow", geometry=geometry)
    bare = tokenize(["static"])
    with pytest.raises(ValueError, match="give the batch its clips with `with_clips`"):
        writer.add(bare)
    with pytest.raises(ValueError, match=r"this dataset's are \[2, 2, 2\] with 384"):
        writer.add(one_clip(tokenize(["random"], side=32)))
    # 16 frames of 8x8 in tubelets of 8 and patches of 4: the same G, grid and D, but 16 frames, not 4.
    with pytest.raises(ValueError, match="the batch's clips have 16 frames; this dataset's have 4"):
        writer.add(one_clip(tokenize(["random"], frames=16, side=8, tubelet_size=8, patch_size=4)))
    with pytest.raises(ValueError, match="label"):
        writer.add(replace(packed(2, seed=0), labels=torch.tensor([0, -1])))
    with pytest.raises(FormatError, match=r"'\.\./x' is not a shard name"):
        ShardWriter(tmp_path, "../x", storage="arrow", geometry=geometry)
    with pytest.raises(ValueError, match="videos"):
        writer.fail("v", "broken")
        writer.commit(videos=0, decoder="decord")
    assert not (tmp_path / "shards" / "shard-00000").exists()


@pytest.mark.parametrize("storage", STORAGES)
def test_committing_a_shard_that_exists_keeps_the_first(tmp_path: Path, storage: str) -> None:
    geometry = tiny_config(storage).geometry
    first = ShardWriter(tmp_path, "shard-00000", storage=storage, geometry=geometry)  # type: ignore[arg-type]
    first.add(packed(2, seed=0))
    meta, committed = first.commit(videos=2, decoder="decord")
    assert committed and meta == read_shard_meta(tmp_path / "shards" / "shard-00000")
    before = file_list(tmp_path / "shards" / "shard-00000")
    second = ShardWriter(tmp_path, "shard-00000", storage=storage, geometry=geometry)  # type: ignore[arg-type]
    second.add(packed(3, seed=1))
    again, committed = second.commit(videos=3, decoder="decord")
    assert not committed and again == meta
    assert file_list(tmp_path / "shards" / "shard-00000") == before
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000"]  # no temporary left


# FORMAT.md against what the job writes ------------------------------------------------------------------------


def section(title: str) -> str:
    return SPEC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table(title: str) -> list[list[str]]:
    """The rows of the first markdown table of a section of FORMAT.md, cells stripped of backticks."""
    text = section(title)
    first = text[text.index("\n|") + 1 :].split("\n\n", 1)[0]  # the lines of its first table alone
    lines = [line for line in first.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[2:]]


def parse_type(text: str) -> tuple[str, str | None]:
    """``"int16 `[N, 3]`"`` → ("int16", "[N, 3]"); a scalar has no shape."""
    dtype, _, shape = text.partition(" ")
    return dtype, shape.strip("`") or None


def arrow_leaf(field_type: pa.DataType) -> tuple[str, int]:
    """The value type under an Arrow type's lists, and how many lists deep it is."""
    depth = 0
    while pa.types.is_list(field_type) or pa.types.is_fixed_size_list(field_type):
        field_type, depth = field_type.value_type, depth + 1
    return str(field_type), depth


@pytest.mark.filterwarnings("ignore:Object at meta.json is not recognized")  # zarr, listing the group
@pytest.mark.parametrize("storage", STORAGES)
def test_format_md_row_fields_are_what_is_written(written: dict[str, Path], storage: str) -> None:
    rows = {name: parse_type(kind) for name, kind, _ in table("Rows")}
    dataset = open_dataset(written[storage])
    g = dataset.geometry
    assert tuple(rows) == tuple(dataset.columns)
    for record in dataset:
        sizes = {"T": g.frames, "G": g.tubelets, "N": record.num_tokens, "D": g.token_dim}
        for name, (dtype, shape) in rows.items():
            value = getattr(record, name)
            if shape is None:
                assert isinstance(value, str if dtype == "string" else int), name
            else:
                assert value.dtype == np.dtype(dtype) and list(value.shape) == eval(shape, {}, sizes), name
    if storage == "arrow":
        schemas = {}
        for name in (ARROW_FILE, ARROW_TOKENS_FILE):
            schemas.update(
                {f.name: f.type for f in pa.ipc.open_file(written[storage] / "shards" / "shard-00000" / name).schema}
            )
        assert list(schemas) == list(rows)
        for name, (dtype, shape) in rows.items():
            leaf, depth = arrow_leaf(schemas[name])
            assert (leaf, depth) == (dtype, 0 if shape is None else shape.count(",") + 1), name
    else:
        import zarr

        arrays = table('Zarr storage (`"storage": "zarr"`)')
        for k, shard in enumerate(dataset.shards):
            group = zarr.open_group(str(written[storage] / "shards" / shard.name), mode="r")
            assert sorted(group.array_keys()) == sorted(name for name, *_ in arrays)
            sizes = {"R": shard.rows, "T": g.frames, "G": g.tubelets, "N_shard": shard.tokens, "D": g.token_dim}
            for name, shape, dtype, *_ in arrays:
                array = group[name]
                kind = "string" if array.dtype.kind in "TUO" else array.dtype.name
                assert (kind, list(array.shape)) == (dtype, eval(shape, {}, sizes)), (k, name)


def json_block(title: str) -> Any:
    (block,) = re.findall(r"```json\n(.*?)```", section(title), re.S)
    return json.loads(block)


def assert_same_keys(example: Any, real: Any, where: str = "") -> None:
    """The same keys, recursively (a list's first items compared); values are not compared."""
    if isinstance(real, dict):
        assert isinstance(example, dict) and sorted(example) == sorted(real), where
        for key in real:
            if where == "" and key == "versions":  # the packages present where the job ran
                continue
            assert_same_keys(example[key], real[key], f"{where}.{key}")
    elif isinstance(real, list) and real and example:
        assert_same_keys(example[0], real[0], f"{where}[0]")


@pytest.mark.parametrize("storage", STORAGES)
def test_format_md_examples_have_the_keys_of_what_is_written(written: dict[str, Path], storage: str) -> None:
    index = json.loads((written[storage] / INDEX).read_text())
    assert_same_keys(json_block("index.json"), index)
    example = json_block("meta.json")
    for shard in index["shards"]:
        meta = json.loads((written[storage] / "shards" / shard["name"] / META).read_text())
        assert_same_keys(example, meta)
    failed = json.loads((written[storage] / "shards" / "shard-00002" / META).read_text())
    assert failed["rows"] == 0 and failed["errors"]  # so the example's errors were compared too
    assert json_block("index.json")["version"] == index["version"] == 2
