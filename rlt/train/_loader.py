"""Streaming the pre-pruned token datasets into training, packed by token budget.

Every worker plans the whole epoch from metadata alone (each clip's token count): shard order and a
shuffle buffer seeded by (seed, epoch), then the rank's share, then batches of at most ``max_tokens``
tokens. Batch ``i`` of a rank is made by DataLoader worker ``(i - first) % num_workers`` (``first``
being the batch it starts or resumes at), and the DataLoader
takes batches from its workers in turn, so the sequence of batches is the same whatever the number
of workers, and resuming is skipping the batches already consumed.

Batches are `PackedTokens`, the pipeline's batch type. Inside a DataLoader worker they are built in
shared memory, so handing them to the training process copies nothing. A worker's corrupt shards and
skipped clips travel with its batches, so that the training process counts them and raises.

Shape legend: N tokens in a batch, D values per token, B clips in a batch, G tubelets per clip.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rlt._checks import check_choice
from rlt.dataset import ClipRecord, CorruptShardError, DatasetIndex, TokenDataset, read_index
from rlt.dataset._remote import is_url
from rlt.pipeline import PackedTokens
from rlt.train._augment import one_clip_per_video

log = logging.getLogger(__name__)

STATE_VERSION = 1
# Shards a stream holds open at most. It holds each from its first use in the epoch to its last, so
# that it opens each once: a clip can wait in the shuffle buffer long after its shard streamed past.
# Holding the few most recent instead, an epoch of 24 shards of 128 clips opened shards 984 times
# (3.0 s against 0.5 s, one core), and `benchmarks/bench_loader_peers.py --clips 1536` (48 shards)
# went from 0.66-1.03x the best peer to 1.22-2.26x. The shards in use at once come to about five
# shuffle buffers' worth of clips: 27 for shards of 128 clips and a buffer of 512, 68 for shards of
# 32. Past this bound the shard needed again last is dropped: with 384 shards of 8 clips, a bound of
# 64 opened shards 1027 times an epoch (1.56 s), 256 opened each once (0.89 s). An open Arrow shard
# holds two mappings and no file descriptor; one from a URL, or a Zarr shard's Arrow copy, holds
# one descriptor (its lock in the cache, which keeps the cache from evicting it).
MAX_OPEN = 256
OnError = Literal["raise", "skip"]


@dataclass
class _Item:
    """What a worker hands the training process per planned batch: the batch (None when every
    clip was skipped), and the shards it found corrupt (skipped, or the error to raise)."""

    batch: PackedTokens | None
    skipped_shards: list[str] = field(default_factory=list)
    skipped_clips: int = 0
    error: CorruptShardError | None = None

    def pin_memory(self) -> _Item:
        """The DataLoader's pinning thread calls this."""
        batch = self.batch.pin_memory() if self.batch is not None else None
        return _Item(batch, self.skipped_shards, self.skipped_clips, self.error)


class TokenStream(IterableDataset):
    """An `IterableDataset` of `PackedTokens` batches over a dataset written by `rlt-prep tokenize`.

    Args:
        root: the dataset folder, or its URL (``s3://bucket/prefix``: shards are fetched into a local
            cache as the plan reaches them, see `rlt.dataset.TokenDataset`).
        max_tokens: token budget of a batch; a clip with more tokens is an error.
        shuffle: shuffle shard order and clips (through a buffer of ``shuffle_buffer`` clips).
        seed: the shuffle's seed; the order is a pure function of (seed, epoch).
        shuffle_buffer: clips in the shuffle buffer.
        rank, world_size: this process's share; by default from torch.distributed, else 0 and 1.
        on_error: what a corrupt shard does: ``"raise"``, or ``"skip"`` its clips and count it.
        drop_last: give every rank the same number of batches, the fewest any rank has, dropping the
            rest of the epoch; loops that step all ranks together (DDP, Lightning, Accelerate) hang
            when one rank runs out first.
        prefetch: shards made ready ahead of the reader, in the order the plan reads them: fetched
            from a URL, or their checksums computed (and Zarr shards unpacked) on threads for a
            local dataset.
        cache_limit: bytes the local cache of shards may hold: shards fetched from a URL, and the
            Arrow copies of Zarr shards that the loader unpacks there once per machine, for every
            worker and epoch to share (see `rlt.dataset.TokenDataset`).
        one_clip_per_video: each epoch plans one of each video's stored clips, drawn anew every epoch
            (`rlt.train.one_clip_per_video`; a pure function of (seed, epoch), so resuming stays exact).
        follow: for a dataset that grows (`rlt-prep serve DATASET --watch SOURCE`): each epoch,
            as its iteration starts, takes in the shards of the index's latest generation; an
            epoch's shards stay fixed until it ends, and the loader's state records how many there
            were, so resuming mid-epoch is exact.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 512,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: OnError = "raise",
        drop_last: bool = False,
        prefetch: int = 2,
        cache_limit: int | None = None,
        one_clip_per_video: bool = False,
        follow: bool = False,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        check_choice("on_error", on_error, ("raise", "skip"))
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.root = root if is_url(root) else Path(root)
        self.prefetch, self.cache_limit = prefetch, cache_limit
        self.max_tokens, self.shuffle, self.seed, self.shuffle_buffer = max_tokens, shuffle, seed, shuffle_buffer
        self.on_error, self.drop_last = on_error, drop_last
        self.one_clip_per_video = one_clip_per_video
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (set by load_state_dict)
        # Counted in the process that iterates (`TokenLoader` gathers its workers' counts).
        self.skipped_shards: list[str] = []
        self.skipped_clips = 0
        self.follow = follow
        self._shard_rows: list[int] = []
        self._counts: list[np.ndarray] = []
        self._video_names: list[np.ndarray] = []
        self._bad: set[int] = set()
        self._index: DatasetIndex = read_index(self.root)
        self._take_in(self._index)
        g = self._index.geometry
        rlt = self._index.config["rlt"]
        self.grid = (g.tubelets, g.rows, g.cols)
        self.tubelet_size, self.patch_size = int(rlt["tubelet_size"]), int(rlt["patch_size"])

    @property
    def generation(self) -> int:
        """The generation of the dataset's index this stream plans from (see `follow`)."""
        return self._index.generation

    @property
    def num_shards(self) -> int:
        return len(self._shard_rows)

    def _take_in(self, index: DatasetIndex) -> None:
        """Plans from ``index`` from now on: reads the metadata of its shards beyond those already
        taken in, which must be the first shards of ``index``."""
        taken = len(self._shard_rows)
        if taken:
            old = self._index.shards[:taken]
            if len(index.shards) < taken or index.shards[:taken] != old:
                raise ValueError(
                    f"{self.root}: the dataset's shards changed since generation {self._index.generation} "
                    f"(generation {index.generation} does not start with them): it was rewritten, not grown; "
                    f"open it anew"
                )
        self._index = index  # every epoch and worker plans from this one
        # Metadata only: token counts per clip, read from the index's shards without hashing pixels
        # (from a URL, without fetching them).
        columns = ["num_tokens", "video"] if self.one_clip_per_video else ["num_tokens"]
        dataset = TokenDataset(self.root, columns=columns, verify=False, cache_limit=self.cache_limit, index=index)
        new = range(taken, len(dataset.shards))
        dataset.prefetch(new)  # from a URL: the metadata of many shards at once
        for k in new:
            info = dataset.shards[k]
            try:
                shard_counts = dataset.shard(k).column("num_tokens").astype(np.int64)
                shard_videos = dataset.shard(k).column("video").astype(str) if self.one_clip_per_video else None
            except CorruptShardError as e:
                if self.on_error == "raise":
                    raise
                log.warning("skipping corrupt shard %s", e)
                self._bad.add(k)
                self.skipped_shards.append(e.shard)
                self.skipped_clips += info.rows
                shard_counts = np.zeros(info.rows, dtype=np.int64)
                shard_videos = np.full(info.rows, "") if self.one_clip_per_video else None
            self._shard_rows.append(info.rows)
            self._counts.append(shard_counts)
            if shard_videos is not None:
                self._video_names.append(shard_videos)
            dataset.release(k)
        dataset.close()
        self._derive()

    def _derive(self) -> None:
        """The arrays the plan reads, from the shards taken in."""
        self._starts = np.cumsum([0, *self._shard_rows])  # shard k owns clips starts[k]:starts[k+1]
        self._clip_tokens = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        # With one_clip_per_video, each row's video (a corrupt shard's rows are skipped whatever they say).
        self._videos: np.ndarray | None = None
        if self.one_clip_per_video:
            self._videos = np.concatenate(self._video_names) if self._video_names else np.zeros(0, dtype=str)

    def refresh(self) -> bool:
        """Takes in the shards the dataset's latest index generation added; returns whether there were any.

        An epoch's iteration calls it first when ``follow`` is on (not a resumed epoch's, which
        reads the shards its state names). An index being replaced, or briefly missing (a
        `rlt-prep tokenize` re-run removes it until it ends), leaves the stream as it was.
        """
        try:
            index = read_index(self.root)
        except FileNotFoundError:
            return False
        if index.generation == self._index.generation and len(index.shards) == self.num_shards:
            return False
        before = self.num_shards
        self._take_in(index)
        if self.num_shards > before:
            log.info("%s: generation %d adds %d shards", self.root, index.generation, self.num_shards - before)
        return self.num_shards > before

    def _view(self, shards: int) -> None:
        """Plans from the dataset's first ``shards`` shards (a resumed epoch's, from its state)."""
        if shards == self.num_shards:
            return
        if shards > self.num_shards:
            self._take_in(read_index(self.root))
            if shards > self.num_shards:
                raise ValueError(
                    f"loader state covers {shards} shards; {self.root} has {self.num_shards} "
                    f"(another or a rewritten dataset)"
                )
        if shards < self.num_shards:
            if not self.follow:
                raise ValueError(
                    f"loader state covers {shards} shards; {self.root} has {self.num_shards} now: "
                    f"open the stream with follow=True to resume a growing dataset"
                )
            self._shard_rows, self._counts = self._shard_rows[:shards], self._counts[:shards]
            self._video_names = self._video_names[:shards]
            self._bad = {k for k in self._bad if k < shards}
            self._index = self._index.prefix(shards)
            self._derive()

    def set_epoch(self, epoch: int) -> None:
        """The next iteration plans epoch ``epoch`` from its first batch."""
        self.epoch = epoch
        self.start_batch = 0

    def plan(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches for ``epoch``: each an array of global clip indices."""
        epoch = self.epoch if epoch is None else epoch
        order = self._order(epoch)
        if self._videos is not None:
            chosen = np.zeros(len(self._videos), dtype=bool)
            chosen[one_clip_per_video(self._videos.tolist(), seed=self.seed, epoch=epoch)] = True
            order = order[chosen[order]]
        if self._bad:
            shard_of = np.searchsorted(self._starts, order, side="right") - 1
            order = order[~np.isin(shard_of, list(self._bad))]
        if not (self.drop_last and self.world_size > 1):
            return self._pack(order[self.rank :: self.world_size])
        ranks = [self._pack(order[r :: self.world_size]) for r in range(self.world_size)]
        return ranks[self.rank][: min(len(batches) for batches in ranks)]

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        counts = self._clip_tokens
        batches: list[np.ndarray] = []
        current: list[int] = []
        used = 0
        for clip in order.tolist():
            n = int(counts[clip])
            if n > self.max_tokens:
                raise ValueError(
                    f"clip {clip} of {self.root} has {n} tokens, more than max_tokens={self.max_tokens}; "
                    f"raise max_tokens to at least {n}"
                )
            if used + n > self.max_tokens and current:
                batches.append(np.array(current, dtype=np.int64))
                current, used = [], 0
            current.append(clip)
            used += n
        if current:
            batches.append(np.array(current, dtype=np.int64))
        return batches

    def __len__(self) -> int:
        """Batches of this rank in the current epoch."""
        return len(self.plan())

    def _order(self, epoch: int) -> np.ndarray:
        starts = self._starts
        shards = np.arange(len(self._shard_rows))
        if not self.shuffle:
            return np.arange(starts[-1], dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        stream = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in rng.permutation(shards)])
        # A shuffle buffer: fill it, then emit a random slot and refill it with the next clip.
        out = np.empty(len(stream), dtype=np.int64)
        buffer: list[int] = []
        emitted = 0
        for clip in stream.astype(np.int64).tolist():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(clip)
                continue
            slot = int(rng.integers(len(buffer)))
            out[emitted], buffer[slot] = buffer[slot], clip
            emitted += 1
        rng.shuffle(buffer)
        out[emitted:] = buffer
        return out

    def begin_epoch(self) -> None:
        """With ``follow``, an epoch that starts at its first batch takes the newest shards in."""
        if self.follow and self.start_batch == 0:
            self.refresh()

    def __iter__(self) -> Iterator[PackedTokens]:
        self.begin_epoch()
        for item in self._items():
            self._count(item)
            if item.error is not None:
                raise item.error
            if item.batch is not None:
                yield item.batch

    def _count(self, item: _Item) -> None:
        """Adds what a worker skipped to this stream's counts. Every worker finds a corrupt shard on
        its own: a shard is listed once, however many workers (or epochs) met it."""
        self.skipped_shards += [s for s in dict.fromkeys(item.skipped_shards) if s not in self.skipped_shards]
        self.skipped_clips += item.skipped_clips

    def _items(self) -> Iterator[_Item]:
        """One `_Item` per batch of the plan this process makes (all of them, or a worker's share)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        dataset = TokenDataset(self.root, verify=True, unpack=True, cache_limit=self.cache_limit, index=self._index)
        try:
            yield from self._read(dataset, worker, workers, shared=info is not None)
        finally:
            dataset.close()

    def _read(self, dataset: TokenDataset, worker: int, workers: int, *, shared: bool) -> Iterator[_Item]:
        starts = self._starts
        bad = set(self._bad)
        # Counted from the resume point: the DataLoader asks worker 0 first, every time.
        mine = self.plan()[self.start_batch :][worker::workers]
        ahead = _fetch_order(mine, starts, self.prefetch)
        uses = _shard_uses(mine, starts)
        held: set[int] = set()  # shards open: from their first use in `mine` to their last (see `MAX_OPEN`)
        for at, clips in enumerate(mine):
            item = _Item(None)
            records = []
            reading: set[int] = set()  # the shards this batch reads
            for clip in clips.tolist():
                shard = int(np.searchsorted(starts, clip, side="right") - 1)
                if shard in bad:
                    item.skipped_clips += 1
                    continue
                if shard not in held:
                    if uses[shard][0] == at and shard in ahead:  # met for the first time: ready the next ones
                        dataset.prefetch(ahead[shard])
                    # past the bound, drop the shard needed again last (none that this batch reads)
                    if len(held) >= MAX_OPEN and (drop := _needed_last(held - reading, uses, at)) is not None:
                        dataset.release(drop)
                        held.discard(drop)
                    held.add(shard)
                reading.add(shard)
                try:
                    records.append(dataset.read(shard, clip - int(starts[shard])))
                except CorruptShardError as e:
                    if self.on_error == "raise":
                        item.error = e
                        break
                    log.warning("skipping corrupt shard %s", e)
                    bad.add(shard)
                    item.skipped_shards.append(e.shard)
                    item.skipped_clips += 1
            if records and item.error is None:
                item.batch = self._collate(records, shared=shared)
            for shard in [k for k in held if uses[k][-1] <= at]:  # read for the last time this epoch
                dataset.release(shard)
                held.discard(shard)
            yield item
            if item.error is not None:
                return

    def _collate(self, rows: list[ClipRecord], *, shared: bool) -> PackedTokens:
        """The clips of ``rows`` packed into one batch; in shared memory for a worker to hand over.

        Every tensor of the batch is a view of one buffer: a worker allocates one shared-memory
        segment per batch, not one per tensor (each costs a file in /dev/shm and a descriptor).
        """
        records: list[Any] = rows  # read with every field
        counts = np.array([r.num_tokens for r in records], dtype=np.int64)
        n, b = int(counts.sum()), len(records)
        g, h, w = self.grid
        frames = g * self.tubelet_size
        layout = [  # name, shape, dtype: 8-byte types first, so every view is aligned
            ("positions", (n, 3), torch.int64),
            ("lengths", (n,), torch.int64),
            ("labels", (b,), torch.int64),
            ("frame_indices", (b, frames), torch.int64),
            ("cu_seqlens", (b + 1,), torch.int32),
            ("tokens", (n, records[0].tokens.shape[1]), torch.uint8),
            ("keep", (b, g, h, w), torch.bool),
            ("padded", (b, g), torch.bool),
        ]
        sizes = [math.prod(shape) * dtype.itemsize for _, shape, dtype in layout]
        total = sum(-(-size // 8) * 8 for size in sizes)
        if shared:
            # Made in shared memory, as torch's default_collate makes a worker's batches:
            # share_memory_() on an ordinary tensor would copy it there.
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
        else:
            buffer = _batch_buffer(total)
        views: dict[str, torch.Tensor] = {}
        offset = 0
        for (name, shape, dtype), size in zip(layout, sizes, strict=True):
            views[name] = buffer[offset : offset + size].view(dtype).view(shape)
            offset += -(-size // 8) * 8
        for name in ("positions", "lengths", "tokens"):
            if n:
                np.concatenate([getattr(r, name) for r in records], out=views[name].numpy())
        views["labels"].numpy()[:] = [r.label for r in records]
        np.stack([r.frame_indices for r in records], out=views["frame_indices"].numpy())
        np.stack([r.padded for r in records], out=views["padded"].numpy())
        views["cu_seqlens"].numpy()[0] = 0
        np.cumsum(counts, out=views["cu_seqlens"].numpy()[1:], dtype=np.int32)
        keep = views["keep"].numpy()
        keep[:] = False
        p = views["positions"].numpy()
        keep[np.repeat(np.arange(b), counts), p[:, 0], p[:, 1], p[:, 2]] = True
        return PackedTokens(
            tubelet_size=self.tubelet_size,
            patch_size=self.patch_size,
            videos=tuple(str(r.video) for r in records),
            clip_ids=tuple(int(r.clip or 0) for r in records),
            **views,
        )


# Buffers of batches built in this process (no worker), each with a weak reference to the view of
# it that its last batch was made from, alive while a tensor of that batch is.
_buffers: list[tuple[np.ndarray, weakref.ref[np.ndarray] | None]] = []
_buffers_lock = threading.Lock()
KEEP_BUFFERS = 3


def _forget_buffers_after_fork() -> None:
    global _buffers, _buffers_lock
    _buffers, _buffers_lock = [], threading.Lock()  # a thread of the parent may have held the lock


os.register_at_fork(after_in_child=_forget_buffers_after_fork)


def _batch_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of memory for a batch: a buffer an earlier batch of this process had, once nothing
    holds that batch any more, else a new one, kept for later (the last `KEEP_BUFFERS`).

    A new buffer costs a page fault for every 4 KiB written: glibc maps a block larger than any it
    has freed afresh, so the batches of the first epochs, growing, faulted 100 MB an epoch and made
    the second epoch of a stream 2x slower than later ones (a batch is ~25 MB at max_tokens 16384).
    """

    def free(lent: weakref.ref[np.ndarray] | None) -> bool:
        return lent is None or lent() is None

    with _buffers_lock:
        k = next((i for i, (a, lent) in enumerate(_buffers) if a.nbytes >= nbytes and free(lent)), None)
        if k is None:
            # As large as the largest so far, and the smaller free ones dropped: once a stream's
            # largest batch came, every buffer serves every batch. (NumPy maps a block this large
            # with huge pages.)
            new = np.empty(max([nbytes, *(a.nbytes for a, _ in _buffers)]), np.uint8)
            _buffers[:] = [*[b for b in _buffers if not free(b[1])][-(KEEP_BUFFERS - 1) :], (new, None)]
            k = len(_buffers) - 1
        array = _buffers[k][0]
        view = array[:nbytes]
        # The tensor's storage holds ``view`` (torch.from_numpy keeps the array it is given) until
        # no tensor of the batch is left.
        _buffers[k] = (array, weakref.ref(view))
        return torch.from_numpy(view)


def _shard_uses(batches: list[np.ndarray], starts: np.ndarray) -> dict[int, np.ndarray]:
    """For each shard that ``batches`` read, the positions of the batches that read it, ascending."""
    if not batches:
        return {}
    shard_of = np.searchsorted(starts, np.concatenate(batches), side="right") - 1
    batch_of = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    order = np.lexsort((batch_of, shard_of))
    shards, first = np.unique(shard_of[order], return_index=True)
    return {
        int(k): np.unique(positions) for k, positions in zip(shards, np.split(batch_of[order], first[1:]), strict=True)
    }


def _needed_last(shards: set[int], uses: dict[int, np.ndarray], at: int) -> int | None:
    """Of ``shards``, the one whose next use from batch ``at`` on comes last (each has one: a
    stream releases a shard after its last use)."""
    return max(shards, key=lambda k: int(uses[k][np.searchsorted(uses[k], at)]), default=None)


def _fetch_order(batches: list[np.ndarray], starts: np.ndarray, ahead: int) -> dict[int, list[int]]:
    """For each shard that ``batches`` read, the ``ahead`` shards they read next (by first use)."""
    if not batches or not ahead:
        return {}
    shard_of = np.searchsorted(starts, np.concatenate(batches), side="right") - 1
    _, first = np.unique(shard_of, return_index=True)
    order = shard_of[np.sort(first)].tolist()
    return {shard: order[k + 1 : k + 1 + ahead] for k, shard in enumerate(order)}


class _Items(IterableDataset):
    """A stream's `_Item`s, for `TokenLoader`: what a worker found travels with its batches."""

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[_Item]:
        return self.stream._items()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def _worker_context(num_workers: int, cuda: bool) -> Any:
    """Where an epoch's DataLoader workers come from.

    Without CUDA, forks of this process (DataLoader's default). With CUDA, forks of a clean server
    process that has imported torch and this module once (forkserver): forking a process that has
    used CUDA is unsafe, and a spawned worker imports torch anew every epoch (on 2 cores, 1.7 s per
    epoch for 2 workers, against 0.05 s from the server after its first start).
    """
    if not num_workers or not cuda:
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", __name__])
    return context


class TokenLoader:
    """A DataLoader over a `TokenStream` that knows how far it got, to resume mid-epoch.

    Args:
        stream: the dataset.
        num_workers: DataLoader worker processes; the batches are the same for any number.
        pin_memory: page-locked batches, where CUDA is there.
    """

    def __init__(self, stream: TokenStream, *, num_workers: int = 0, pin_memory: bool | None = None) -> None:
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._consumed = 0

    def __len__(self) -> int:
        return len(self.stream)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch handed out so far (counting those skipped by a resume)."""
        return self._consumed

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch ``epoch`` from its first batch (also ends an epoch cut short)."""
        self.stream.set_epoch(epoch)
        self._consumed = 0

    def __iter__(self) -> Iterator[PackedTokens]:
        self.stream.begin_epoch()
        self._consumed = self.stream.start_batch
        loader = DataLoader(
            _Items(self.stream),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            multiprocessing_context=_worker_context(self.num_workers, torch.cuda.is_available()),
            # Its workers' base seed would otherwise be drawn from the global generator, at a point
            # a resumed run does not reach the same way (drop path draws from it too).
            generator=torch.Generator().manual_seed(self.stream.seed),
        )
        for item in loader:
            self.stream._count(item)
            if item.error is not None:
                raise item.error
            self._consumed += 1
            if item.batch is not None:
                yield item.batch
        # The epoch is done: the next iteration starts the next epoch from its first batch.
        self.stream.set_epoch(self.stream.epoch + 1)
        self._consumed = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: small, versioned, and enough to resume exactly."""
        return {
            "version": STATE_VERSION,
            "epoch": self.stream.epoch,
            "batches": self._consumed,
            "seed": self.stream.seed,
            "shuffle": self.stream.shuffle,
            "max_tokens": self.stream.max_tokens,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
            "one_clip_per_video": self.stream.one_clip_per_video,
            # The epoch's shards: a growing dataset (follow=True) resumes over the same ones.
            "shards": self.stream.num_shards,
            "generation": self.stream.generation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        state = {"one_clip_per_video": False, **state}  # written before it existed
        for key in ("seed", "shuffle", "max_tokens", "rank", "world_size", "one_clip_per_video"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]!r}, this loader {mine[key]!r}")
        self.stream.set_epoch(int(state["epoch"]))
        if "shards" in state:  # written before it existed: the dataset did not grow then
            self.stream._view(int(state["shards"]))
        self.stream.start_batch = int(state["batches"])
        self._consumed = self.stream.start_batch
