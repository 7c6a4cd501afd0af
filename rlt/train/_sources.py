"""Where training batches come from: a tokenized dataset, or raw videos through the online pipeline.

Both give batches as `TokenBatch`, count their epochs and batches the same way, and save where they are
with a versioned ``state_dict``, so the training loop does not care which one it runs on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlt.dataset import TokenDataset, read_index
from rlt.pipeline import Backend, ClipSampling, OnlinePipeline, RLTConfig, read_manifest
from rlt.train._loader import TokenBatch, TokenLoader, TokenStream

ONLINE_STATE_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    """What the clips are: enough to build a model for them and to cut the same clips again."""

    sampling: ClipSampling
    rlt: RLTConfig
    num_classes: int
    classes: list[str] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampling": asdict(self.sampling),
            "rlt": asdict(self.rlt),
            "num_classes": self.num_classes,
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        return cls(
            sampling=ClipSampling(**values["sampling"]),
            rlt=RLTConfig(**values["rlt"]),
            num_classes=int(values["num_classes"]),
            classes=values["classes"],
        )


def dataset_spec(root: str | Path) -> DataSpec:
    """A tokenized dataset's clips, from its index (and, for integer labels, its label column)."""
    index = read_index(root)
    config = index["config"]
    classes = index.get("classes")
    if classes:
        num_classes = len(classes)
    else:
        labels = labels_of(root)
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    return DataSpec(ClipSampling(**config["sampling"]), RLTConfig(**config["rlt"]), num_classes, classes)


def manifest_spec(manifest: str | Path, sampling: ClipSampling, rlt: RLTConfig) -> DataSpec:
    rows = read_manifest(manifest)
    classes = list(rows.classes) if rows.classes else None
    num_classes = len(classes) if classes else max((r.label for r in rows.rows), default=0) + 1
    return DataSpec(sampling, rlt, num_classes, classes)


class OfflineSource:
    """Batches of at most ``max_tokens`` tokens from a dataset written by `rlt-prep tokenize`."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_tokens: int,
        seed: int,
        num_workers: int,
        rank: int,
        world_size: int,
        shuffle: bool = True,
    ) -> None:
        self.spec = dataset_spec(root)
        stream = TokenStream(root, max_tokens=max_tokens, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        self.loader = TokenLoader(stream, num_workers=num_workers)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def batches_done(self) -> int:
        return self.loader.batches_done

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[TokenBatch]:
        return iter(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


class OnlineSource:
    """Clips decoded and tokenized as training goes, one training clip per video per epoch.

    The clip's offset in its video and the order of the videos are pure functions of (seed, epoch),
    so a resumed run sees the same clips.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        sampling: ClipSampling,
        rlt: RLTConfig,
        backend: Backend,
        device: torch.device,
        videos_per_batch: int,
        seed: int,
        rank: int,
        world_size: int,
        num_threads: int = 1,
    ) -> None:
        sampling = replace(sampling, mode="train", seed=seed)
        self.spec = manifest_spec(manifest, sampling, rlt)
        self.pipeline = OnlinePipeline(
            manifest,
            sampling=sampling,
            rlt=rlt,
            backend=backend,
            device=device,
            videos_per_batch=videos_per_batch,
            on_error="skip",
            shuffle=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_threads=num_threads,
        )

    @property
    def epoch(self) -> int:
        return self.pipeline.epoch

    @property
    def batches_done(self) -> int:
        return self.pipeline.batches_done

    def __len__(self) -> int:
        return len(self.pipeline)

    def __iter__(self) -> Iterator[TokenBatch]:
        for batch in self.pipeline:
            yield to_token_batch(batch)

    def set_epoch(self, epoch: int) -> None:
        self.pipeline.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "version": ONLINE_STATE_VERSION,
            "epoch": p.epoch,
            "batches": p.batches_done,
            "seed": p.seed,
            "rank": p.rank,
            "world_size": p.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != ONLINE_STATE_VERSION:
            raise ValueError(f"online source state version {state.get('version')!r} is not {ONLINE_STATE_VERSION}")
        p = self.pipeline
        for key, mine in (("seed", p.seed), ("rank", p.rank), ("world_size", p.world_size)):
            if state[key] != mine:
                raise ValueError(f"source state has {key}={state[key]!r}, this run {mine!r}")
        p.set_epoch(int(state["epoch"]))
        p.start_batch = int(state["batches"])
        p.batches_done = p.start_batch


def to_token_batch(batch: Any) -> TokenBatch:
    """A `ClipBatch` of the online pipeline as the loader's `TokenBatch`."""
    tokens = batch.tokens
    return TokenBatch(
        tokens=tokens.tokens,
        positions=tokens.positions,
        lengths=tokens.lengths,
        cu_seqlens=tokens.cu_seqlens,
        labels=batch.labels,
        padded=batch.padded,
        videos=batch.videos,
        clip_ids=batch.clip_ids,
    )


def dense_tokens_per_clip(spec: DataSpec) -> int:
    """Tokens of one clip with none dropped: G * (crop / p)^2."""
    side = spec.sampling.crop or 0
    return spec.sampling.num_frames // spec.rlt.tubelet_size * (side // spec.rlt.patch_size) ** 2


def labels_of(root: str | Path) -> np.ndarray:
    dataset = TokenDataset(root, columns=["label"], verify=False)
    return np.concatenate([dataset.shard(k).column("label") for k in range(len(dataset.shards))])
