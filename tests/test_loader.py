"""The streaming loader: token budgets, exactly-once partitions, determinism, exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlt import open_dataset
from rlt.dataset import CorruptShardError, TokenDataset
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream
from rlt.train import _loader as loader_module

MAX_TOKENS = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 clips in 4 shards of 2 videos, built once by the real job (one worker: in this process)."""
    folder = tmp_path_factory.mktemp("loader")
    manifest = make_samples(folder / "videos", num_videos=8, num_frames=24, height=64, width=96)
    sampling = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
    config = TokenizeConfig(shard_size=2, sampling=sampling, backend="decord")
    tokenize_dataset(manifest, folder / "out", config, workers=1)
    return folder / "out"


@pytest.fixture(scope="module")
def zarr_dataset(dataset: Path) -> Path:
    """The clips of `dataset`, from the same video files, stored as Zarr."""
    manifest = dataset.parent / "videos" / "manifest.csv"
    sampling = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
    config = TokenizeConfig(storage="zarr", shard_size=2, sampling=sampling, backend="decord")
    tokenize_dataset(manifest, dataset.parent / "zarr", config, workers=1)
    return dataset.parent / "zarr"


@pytest.fixture(scope="module")
def small_shards(dataset: Path) -> Path:
    """The clips of `dataset`, from the same video files, in 8 shards of one video (2 clips) each."""
    manifest = dataset.parent / "videos" / "manifest.csv"
    sampling = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
    tokenize_dataset(manifest, dataset.parent / "small", TokenizeConfig(shard_size=1, sampling=sampling), workers=1)
    return dataset.parent / "small"


def contents(batches: list) -> list[tuple]:
    """Every batch's clips and values, to compare two loaders' epochs."""
    fields = ("tokens", "positions", "lengths", "labels", "cu_seqlens")
    return [(b.videos, b.clip_ids, *(getattr(b, f).numpy().tobytes() for f in fields)) for b in batches]


def keys(batches: list) -> list[list[tuple[str, int]]]:
    return [list(zip(b.videos, b.clip_ids, strict=True)) for b in batches]


def test_batches_respect_the_token_budget_and_match_the_dataset(dataset: Path) -> None:
    rows = {(r.video, r.clip): r for r in open_dataset(dataset)}
    batches = list(TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=1)))
    assert sum(b.num_clips for b in batches) == len(rows) == 16
    for batch in batches:
        assert batch.num_tokens <= MAX_TOKENS
        assert batch.cu_seqlens[-1] == batch.num_tokens and batch.cu_seqlens.dtype == torch.int32
        assert batch.tokens.dtype == torch.uint8 and batch.positions.shape == (batch.num_tokens, 3)
        for k, key in enumerate(zip(batch.videos, batch.clip_ids, strict=True)):
            a, b = int(batch.cu_seqlens[k]), int(batch.cu_seqlens[k + 1])
            assert np.array_equal(batch.tokens[a:b].numpy(), rows[key].tokens)
            assert np.array_equal(batch.lengths[a:b].numpy(), rows[key].lengths)
            assert batch.labels[k] == rows[key].label


def test_a_clip_over_the_budget_is_an_error(dataset: Path) -> None:
    with pytest.raises(ValueError, match="more than max_tokens=5; raise max_tokens"):
        TokenStream(dataset, max_tokens=5).plan()


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_clip_once_across_two_ranks_and_two_workers(dataset: Path, shuffle: bool) -> None:
    seen = []
    for rank in range(2):
        stream = TokenStream(dataset, max_tokens=MAX_TOKENS, shuffle=shuffle, rank=rank, world_size=2)
        for batch in TokenLoader(stream, num_workers=2):
            seen += list(zip(batch.videos, batch.clip_ids, strict=True))
    assert len(seen) == len(set(seen)) == 16


def test_same_batches_whatever_the_number_of_workers(dataset: Path) -> None:
    runs = [
        keys(list(TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=3), num_workers=w))) for w in (0, 1, 2)
    ]
    assert runs[0] == runs[1] == runs[2]


def test_workers_from_the_forkserver_give_the_same_batches(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where CUDA is there, an epoch's workers are forks of a clean server (forkserver), not spawned
    anew: the batches are the same, epoch after epoch."""
    from rlt.train import _loader

    assert _loader._worker_context(2, cuda=False) is None and _loader._worker_context(0, cuda=True) is None
    assert _loader._worker_context(2, cuda=True).get_start_method() == "forkserver"
    in_process = TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=3))
    epochs = [keys(list(in_process)), keys(list(in_process))]
    real = _loader._worker_context
    monkeypatch.setattr(_loader, "_worker_context", lambda workers, cuda: real(workers, True))
    loader = TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=3), num_workers=2)
    assert [keys(list(loader)), keys(list(loader))] == epochs and epochs[0] != epochs[1]


def test_order_is_a_pure_function_of_seed_and_epoch(dataset: Path) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        stream = TokenStream(dataset, max_tokens=MAX_TOKENS, seed=seed, shuffle_buffer=4)
        return np.concatenate(stream.plan(epoch)).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 0)) == list(range(16))
    unshuffled = TokenStream(dataset, max_tokens=MAX_TOKENS, shuffle=False)
    assert np.concatenate(unshuffled.plan(0)).tolist() == list(range(16))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("stop", [0, 1, 3, 7])
def test_resume_gives_exactly_the_remaining_batches(dataset: Path, shuffle: bool, stop: int) -> None:
    def loader() -> TokenLoader:
        return TokenLoader(TokenStream(dataset, max_tokens=60, shuffle=shuffle, seed=5), num_workers=2)

    full = loader()
    epoch0, epoch1 = list(full), list(full)  # two epochs, uninterrupted
    reference = epoch0 + epoch1
    assert keys(epoch0) != keys(epoch1) or not shuffle

    first = loader()
    batches = iter(first)
    taken = [next(batches) for _ in range(stop)]  # a killed run had trained on these
    state = first.state_dict()
    del batches
    assert state == {**state, "version": 1, "epoch": 0, "batches": stop}

    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)  # the rest of epoch 0, then epoch 1
    assert keys(taken + rest) == keys(reference)
    for a, b in zip(taken + rest, reference, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)


def test_state_from_another_configuration_is_refused(dataset: Path) -> None:
    state = TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=1)).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS)).load_state_dict({**state, "version": 99})


def test_corrupt_shard_raises_with_its_name_or_is_skipped_and_counted(tmp_path: Path, dataset: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    shard = copy / "shards" / "shard-00002"
    victim = max((p for p in shard.rglob("*") if p.is_file() and p.name != "meta.json"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(CorruptShardError, match="shard-00002"):
        list(TokenLoader(TokenStream(copy, max_tokens=MAX_TOKENS, shuffle=False)))
    stream = TokenStream(copy, max_tokens=MAX_TOKENS, shuffle=False, on_error="skip")
    batches = list(TokenLoader(stream))
    assert sum(b.num_clips for b in batches) == 12
    assert stream.skipped_shards == [str(copy / "shards" / "shard-00002")] and stream.skipped_clips == 4
    assert all(not v.startswith(("sample_004", "sample_005")) for b in batches for v in b.videos)
    # With one clip per video: one of each of the 6 videos of the other shards.
    stream = TokenStream(copy, max_tokens=MAX_TOKENS, on_error="skip", one_clip_per_video=True)
    videos = [v for b in TokenLoader(stream) for v in b.videos]
    assert len(videos) == len(set(videos)) == 6


@pytest.mark.needs_cuda
def test_batches_come_pinned_for_non_blocking_copies(dataset: Path) -> None:
    batch = next(iter(TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS), num_workers=1)))
    assert batch.tokens.is_pinned() and batch.cu_seqlens.is_pinned()
    assert batch.to("cuda", non_blocking=True).tokens.device.type == "cuda"


def test_a_small_shuffle_buffer_still_yields_every_clip(dataset: Path) -> None:
    stream = TokenStream(dataset, max_tokens=MAX_TOKENS, shuffle_buffer=2, seed=9)
    seen = [key for batch in TokenLoader(stream) for key in zip(batch.videos, batch.clip_ids, strict=True)]
    assert len(seen) == len(set(seen)) == 16


def watch_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every shard a `TokenDataset` opens from now on, with how many it held open then."""
    opened: list[tuple[str, int]] = []
    real = TokenDataset._open

    def watching(self: TokenDataset, folder: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append((folder.name, len(self._readers)))
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(TokenDataset, "_open", watching)
    return opened


def test_an_epoch_opens_each_shard_once_however_long_a_clip_waits_in_the_buffer(
    small_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A buffer of 4 clips spans 2 shards, but a clip can wait in it for many more: holding only the
    # 4 most recent shards, this epoch opened shards 14 times.
    stream = TokenStream(small_shards, max_tokens=MAX_TOKENS, shuffle_buffer=4, seed=1)
    opened = watch_opens(monkeypatch)
    seen = [key for batch in TokenLoader(stream) for key in zip(batch.videos, batch.clip_ids, strict=True)]
    assert len(seen) == len(set(seen)) == 16
    assert sorted(name for name, _ in opened) == [f"shard-{k:05d}" for k in range(8)]


def test_past_max_open_the_shard_needed_again_last_is_dropped(
    small_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def epoch() -> list:
        return list(TokenLoader(TokenStream(small_shards, max_tokens=MAX_TOKENS, shuffle_buffer=4, seed=1)))

    everything = epoch()
    widest = max(len(set(batch.videos)) for batch in everything)  # a shard holds one video
    monkeypatch.setattr(loader_module, "MAX_OPEN", 2)
    opened = watch_opens(monkeypatch)
    assert contents(epoch()) == contents(everything)
    assert len(opened) > 8  # some shard was dropped and opened again
    assert max(held for _, held in opened) < max(2, widest)  # beyond 2 only for the shards of one batch


def test_one_clip_per_video_takes_each_video_once_per_epoch_and_resumes(dataset: Path) -> None:
    def stream(**kw: int) -> TokenStream:
        return TokenStream(dataset, max_tokens=MAX_TOKENS, seed=3, one_clip_per_video=True, shuffle_buffer=4, **kw)

    epochs = []
    for epoch in range(4):
        loader = TokenLoader(stream())
        loader.set_epoch(epoch)
        clips = [key for batch in keys(list(loader)) for key in batch]
        assert sorted(v for v, _ in clips) == sorted({r.video for r in open_dataset(dataset, columns=["video"])})
        epochs.append(sorted(clips))
    assert len({tuple(e) for e in epochs}) > 1  # another clip of some video in another epoch
    # Two ranks share the chosen clips out; a resumed loader gives the rest of the epoch.
    ranks = [keys(list(TokenLoader(stream(rank=r, world_size=2)))) for r in (0, 1)]
    assert sorted(k for r in ranks for b in r for k in b) == epochs[0]
    whole = TokenLoader(stream())
    batches = iter(whole)
    first = keys([next(batches)])
    state = whole.state_dict()
    resumed = TokenLoader(stream())
    resumed.load_state_dict(state)
    assert first + keys(list(resumed)) == keys(list(TokenLoader(stream())))
    with pytest.raises(ValueError, match="one_clip_per_video"):
        TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=3, shuffle_buffer=4)).load_state_dict(state)


def unpacked(cache: Path) -> list[Path]:
    return sorted(cache.glob("remote/*/unpacked/shard-*/tokens.arrow"))


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "through-a-raw-file"])
def test_zarr_tokens_are_unpacked_once_per_machine_and_read_like_arrow(
    dataset: Path, zarr_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    monkeypatch.setenv("RLT_PREP_CACHE", str(tmp_path / "cache"))
    if not in_memory:  # the way of shards too large to unpack in memory
        monkeypatch.setattr("rlt.dataset._storage.UNPACK_IN_MEMORY", 0)
    expected = contents(list(TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=5))))
    assert unpacked(tmp_path / "cache") == []  # Arrow needs no unpacking
    assert contents(list(TokenLoader(TokenStream(zarr_dataset, max_tokens=MAX_TOKENS, seed=5)))) == expected
    copies = unpacked(tmp_path / "cache")
    assert [p.parent.name for p in copies] == [f"shard-{k:05d}" for k in range(4)]
    made = {p: p.stat().st_ino for p in copies}
    # Two workers, then a second epoch: the copies are shared, none made again.
    loader = TokenLoader(TokenStream(zarr_dataset, max_tokens=MAX_TOKENS, seed=5), num_workers=2)
    assert contents(list(loader)) == expected
    assert {p: p.stat().st_ino for p in unpacked(tmp_path / "cache")} == made
    # A copy that changed since it was made is made again.
    size = copies[1].stat().st_size
    copies[1].write_bytes(copies[1].read_bytes()[: size // 2])
    assert contents(list(TokenLoader(TokenStream(zarr_dataset, max_tokens=MAX_TOKENS, seed=5)))) == expected
    assert copies[1].stat().st_size == size


def test_unpacked_zarr_tokens_are_evicted_past_the_cache_limit(
    dataset: Path, zarr_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLT_PREP_CACHE", str(tmp_path / "cache"))
    # In order, a shard is released after its last clip; with no room, its copy is evicted as the
    # next one is made, and only the last remains.
    stream = TokenStream(zarr_dataset, max_tokens=MAX_TOKENS, shuffle=False, shuffle_buffer=1, cache_limit=0)
    expected = TokenStream(dataset, max_tokens=MAX_TOKENS, shuffle=False, shuffle_buffer=1)
    assert contents(list(TokenLoader(stream))) == contents(list(TokenLoader(expected)))
    assert [p.parent.name for p in unpacked(tmp_path / "cache")] == ["shard-00003"]


def test_a_batch_no_longer_held_lends_its_memory_to_a_later_one(dataset: Path) -> None:
    loader = TokenLoader(TokenStream(dataset, max_tokens=MAX_TOKENS, seed=2))
    for _ in loader:  # the first epoch meets the largest batch
        pass
    storages, batches = set(), 0
    for _ in range(2):
        for batch in loader:  # each batch dropped once the next one is made
            storages.add(batch.tokens.untyped_storage().data_ptr())
            batches += 1
    assert batches > 6 and len(storages) <= 3
    # Batches held stay intact (the other tests compare held batches with the dataset), and so do
    # tensors taken out of a batch.
    held = list(loader)
    assert len({b.tokens.untyped_storage().data_ptr() for b in held}) == len(held)
    part = next(iter(loader)).tokens[:5]
    expected = part.clone()
    for _ in range(2):
        for _batch in loader:
            pass
    assert torch.equal(part, expected)
