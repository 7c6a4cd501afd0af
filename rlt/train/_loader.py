"""Streaming the pre-pruned token datasets into training, packed by token budget.

Every worker plans the whole epoch from metadata alone (each clip's token count): shard order and a
shuffle buffer seeded by (seed, epoch), then the rank's share, then batches of at most ``max_tokens``
tokens. Batch ``i`` of a rank is made by DataLoader worker ``(i - first) % num_workers`` (``first``
being the batch it starts or resumes at), and the DataLoader
takes batches from its workers in turn, so the sequence of batches is the same whatever the number
of workers, and resuming is skipping the batches already consumed.

Shape legend: N tokens in a batch, D values per token, B clips in a batch, G tubelets per clip.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from rlt._checks import check_choice
from rlt.dataset import CorruptShardError, TokenDataset

log = logging.getLogger(__name__)

STATE_VERSION = 1
OnError = Literal["raise", "skip"]


@dataclass(frozen=True, repr=False)
class TokenBatch:
    """Clips packed back to back without padding.

    Attributes:
        tokens: uint8 ``[N, D]`` raw tubelet pixels (normalise on the device).
        positions: int64 ``[N, 3]`` tubelet index, patch row, patch column.
        lengths: int64 ``[N]`` run lengths in tubelets.
        cu_seqlens: int32 ``[B+1]``: clip b owns rows ``cu_seqlens[b]:cu_seqlens[b+1]``.
        labels: int64 ``[B]``.
        padded: bool ``[B, G]``: tubelets made only of padding frames.
        videos: each clip's video; clip_ids: each clip's number within its video.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    labels: torch.Tensor
    padded: torch.Tensor
    videos: list[str] = field(default_factory=list)
    clip_ids: list[int] = field(default_factory=list)

    @property
    def num_clips(self) -> int:
        return self.labels.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    def pin_memory(self) -> TokenBatch:
        """Page-locked copies, for non-blocking host-to-device copies (DataLoader calls this)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TokenBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Any) -> TokenBatch:
        return TokenBatch(
            tokens=fn(self.tokens),
            positions=fn(self.positions),
            lengths=fn(self.lengths),
            cu_seqlens=fn(self.cu_seqlens),
            labels=fn(self.labels),
            padded=fn(self.padded),
            videos=self.videos,
            clip_ids=self.clip_ids,
        )

    def __repr__(self) -> str:
        return f"TokenBatch(clips={self.num_clips}, tokens={list(self.tokens.shape)}, device={self.tokens.device})"


class TokenStream(IterableDataset):
    """An `IterableDataset` of `TokenBatch` over a dataset written by `rlt-prep tokenize`.

    Args:
        root: the dataset folder.
        max_tokens: token budget of a batch; a clip with more tokens is an error.
        shuffle: shuffle shard order and clips (through a buffer of ``shuffle_buffer`` clips).
        seed: the shuffle's seed; the order is a pure function of (seed, epoch).
        shuffle_buffer: clips in the shuffle buffer.
        rank, world_size: this process's share; by default from torch.distributed, else 0 and 1.
        on_error: what a corrupt shard does: ``"raise"``, or ``"skip"`` its clips and count it.
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
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        check_choice("on_error", on_error, ("raise", "skip"))
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.root = Path(root)
        self.max_tokens, self.shuffle, self.seed, self.shuffle_buffer = max_tokens, shuffle, seed, shuffle_buffer
        self.on_error = on_error
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (set by load_state_dict)
        # Counted in this process; DataLoader workers log theirs.
        self.skipped_shards: list[str] = []
        self.skipped_clips = 0
        # Metadata only: token counts per clip, read from the index's shards without hashing pixels.
        dataset = TokenDataset(self.root, columns=["num_tokens"], verify=False)
        self._shard_rows = [s.rows for s in dataset.shards]
        self._counts = []
        self._bad: set[int] = set()
        for k, info in enumerate(dataset.shards):
            try:
                self._counts.append(dataset.shard(k).column("num_tokens").astype(np.int64))
            except CorruptShardError as e:
                if on_error == "raise":
                    raise
                log.warning("skipping corrupt shard %s", e)
                self._bad.add(k)
                self.skipped_shards.append(e.shard)
                self.skipped_clips += info.rows
                self._counts.append(np.zeros(info.rows, dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_batch = 0

    def plan(self, epoch: int | None = None) -> list[np.ndarray]:
        """This rank's batches for ``epoch``: each an array of global clip indices."""
        epoch = self.epoch if epoch is None else epoch
        order = self._order(epoch)
        if self._bad:
            starts = np.cumsum([0, *self._shard_rows])
            shard_of = np.searchsorted(starts, order, side="right") - 1
            order = order[~np.isin(shard_of, list(self._bad))]
        order = order[self.rank :: self.world_size]
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
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
        starts = np.cumsum([0, *self._shard_rows])
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

    def __iter__(self) -> Iterator[TokenBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        dataset = TokenDataset(self.root, verify=True, preload=True)
        starts = np.cumsum([0, *self._shard_rows])
        bad = set(self._bad)
        # Shards held in memory: enough for the shuffle buffer's span, least recently used dropped.
        capacity = 2 + math.ceil(self.shuffle_buffer / max(min(self._shard_rows, default=1), 1))
        recent: OrderedDict[int, None] = OrderedDict()
        for i, clips in enumerate(self.plan()):
            # Counted from the resume point: the DataLoader asks worker 0 first, every time.
            if i < self.start_batch or (i - self.start_batch) % workers != worker:
                continue
            records = []
            for clip in clips.tolist():
                shard = int(np.searchsorted(starts, clip, side="right") - 1)
                if shard in bad:
                    self.skipped_clips += 1
                    continue
                recent[shard] = None
                recent.move_to_end(shard)
                if len(recent) > capacity:
                    dataset.release(recent.popitem(last=False)[0])
                try:
                    records.append(dataset.shard(shard).read(clip - int(starts[shard]), dataset.columns))
                except CorruptShardError as e:
                    if self.on_error == "raise":
                        raise
                    log.warning("skipping corrupt shard %s", e)
                    bad.add(shard)
                    self.skipped_shards.append(e.shard)
                    self.skipped_clips += 1
            if records:
                yield _collate(records)


def _collate(records: list[Any]) -> TokenBatch:
    counts = [r.num_tokens for r in records]
    cu_seqlens = torch.zeros(len(records) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(np.cumsum(counts), dtype=torch.int32)
    return TokenBatch(
        tokens=torch.from_numpy(np.concatenate([r.tokens for r in records])),
        positions=torch.from_numpy(np.concatenate([r.positions for r in records]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([r.lengths for r in records]).astype(np.int64)),
        cu_seqlens=cu_seqlens,
        labels=torch.tensor([r.label for r in records], dtype=torch.int64),
        padded=torch.from_numpy(np.stack([r.padded for r in records])),
        videos=[r.video for r in records],
        clip_ids=[r.clip for r in records],
    )


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

    def __iter__(self) -> Iterator[TokenBatch]:
        self._consumed = self.stream.start_batch
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            multiprocessing_context="spawn" if self.num_workers and torch.cuda.is_available() else None,
        )
        for batch in loader:
            self._consumed += 1
            yield batch
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("seed", "shuffle", "max_tokens", "rank", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]!r}, this loader {mine[key]!r}")
        self.stream.set_epoch(int(state["epoch"]))
        self.stream.start_batch = int(state["batches"])
        self._consumed = self.stream.start_batch
