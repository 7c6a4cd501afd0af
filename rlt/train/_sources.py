"""Where training batches come from: a tokenized dataset, or raw videos through the online pipeline."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlt.dataset import TokenDataset, read_index
from rlt.pipeline import (
    Backend,
    ClipSampling,
    FrameAugment,
    OnlinePipeline,
    PackedTokens,
    RLTConfig,
    read_manifest,
)
from rlt.train._loader import TokenLoader, TokenStream


@dataclass(frozen=True)
class DataSpec:
    """What the clips are: enough to build a model for them and to cut the same clips again."""

    sampling: ClipSampling
    rlt: RLTConfig
    num_classes: int
    classes: list[str] | None
    # Which dataset: a digest of its shards' checksums (None for raw videos). A resumed run must
    # train on the same one.
    identity: str | None = None
    # Raw videos: the training clips' random resized crop before RLT; the model sees its size, and
    # eval resizes the short side to it and takes the centre.
    augment: FrameAugment | None = None

    @property
    def image_size(self) -> int | None:
        """The side of the clips the model sees (before any crop of their tokens)."""
        return self.augment.size if self.augment is not None else self.sampling.crop

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampling": asdict(self.sampling),
            "rlt": asdict(self.rlt),
            "num_classes": self.num_classes,
            "classes": self.classes,
            "identity": self.identity,
            "augment": asdict(self.augment) if self.augment is not None else None,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        return cls(
            sampling=ClipSampling(**values["sampling"]),
            rlt=RLTConfig(**values["rlt"]),
            num_classes=int(values["num_classes"]),
            classes=values["classes"],
            identity=values.get("identity"),
            augment=_frame_augment(values.get("augment")),
        )

    def differences(self, other: DataSpec) -> list[str]:
        """What differs from ``other``, in words, for a message."""
        said = {
            "sampling": "the clip sampling",
            "rlt": "the RLT options",
            "num_classes": "the number of classes",
            "classes": "the class names",
            "identity": "the dataset (its shards' checksums)",
            "augment": "the frame augmentation",
        }
        mine, theirs = self.to_dict(), other.to_dict()
        if mine["identity"] is None or theirs["identity"] is None:  # raw videos, or an older checkpoint
            del said["identity"]
        return [said[key] for key in said if mine[key] != theirs[key]]


def dataset_spec(root: str | Path) -> DataSpec:
    """A tokenized dataset's clips, from its index (and, for integer labels, its label column)."""
    index = read_index(root)
    config = index.config
    classes = list(index.classes) if index.classes else None
    if classes:
        num_classes = len(classes)
    else:
        labels = labels_of(root)
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    identity = hashlib.sha256("".join(f"{s.name}\t{s.checksum}\n" for s in index.shards).encode()).hexdigest()
    return DataSpec(ClipSampling(**config["sampling"]), RLTConfig(**config["rlt"]), num_classes, classes, identity)


def manifest_spec(
    manifest: str | Path, sampling: ClipSampling, rlt: RLTConfig, augment: FrameAugment | None = None
) -> DataSpec:
    rows = read_manifest(manifest)
    classes = list(rows.classes) if rows.classes else None
    num_classes = len(classes) if classes else max((r.label for r in rows.rows), default=0) + 1
    return DataSpec(sampling, rlt, num_classes, classes, augment=augment)


def _frame_augment(values: dict[str, Any] | None) -> FrameAugment | None:
    if values is None:
        return None
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return FrameAugment(**fields)


class Source:
    """Training batches (`PackedTokens`) from a tokenized dataset (a `TokenLoader`) or from raw
    videos (an `OnlinePipeline`), with the clips' `DataSpec`.

    Both count epochs and batches the same way and resume from a versioned ``state_dict``, so the
    training loop does not care which one it runs on.
    """

    def __init__(self, spec: DataSpec, batches: TokenLoader | OnlinePipeline) -> None:
        self.spec, self.batches = spec, batches

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    @property
    def batches_done(self) -> int:
        return self.batches.batches_done

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[PackedTokens]:
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


def offline_source(
    root: str | Path,
    *,
    max_tokens: int,
    seed: int,
    num_workers: int,
    rank: int,
    world_size: int,
    one_clip_per_video: bool = False,
) -> Source:
    """Shuffled batches of at most ``max_tokens`` tokens from a dataset written by `rlt-prep tokenize`;
    with ``one_clip_per_video``, of one of each video's stored clips per epoch."""
    stream = TokenStream(
        root,
        max_tokens=max_tokens,
        shuffle=True,
        seed=seed,
        rank=rank,
        world_size=world_size,
        one_clip_per_video=one_clip_per_video,
    )
    return Source(dataset_spec(root), TokenLoader(stream, num_workers=num_workers))


def online_source(
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
    augment: FrameAugment | None = None,
) -> Source:
    """Clips decoded and tokenized as training goes, one training clip per video per epoch.

    The clip's offset in its video, the order of the videos and ``augment``'s draws are pure
    functions of (seed, epoch), so a resumed run sees the same clips.
    """
    sampling = replace(sampling, mode="train", seed=seed)
    pipeline = OnlinePipeline(
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
        augment=augment,
    )
    return Source(manifest_spec(manifest, sampling, rlt, augment), pipeline)


def labels_of(root: str | Path) -> np.ndarray:
    dataset = TokenDataset(root, columns=["label"], verify=False)
    return np.concatenate([dataset.shard(k).column("label") for k in range(len(dataset.shards))])
