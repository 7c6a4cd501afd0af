"""Online mode: video files in, batches of run-length tokens out, on the device the frames are on.

Shape legend: K clips of a video, T frames, S crop side, G tubelets per clip, B clips in a batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlt._checks import check_choice
from rlt.pipeline._clips import DecodedVideo, decode_ahead, decode_clips, usable_cores
from rlt.pipeline._decode import Backend, output_device, resolve_backend
from rlt.pipeline._device import concrete_device, to_device
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._manifest import ManifestRow, read_manifest
from rlt.pipeline._packed import PackedTokens
from rlt.pipeline._rlt import _COMPARE, _DROP_POLICY, _UNITS, Compare, DropPolicy, ThresholdUnits, run_length_tokenize
from rlt.pipeline._sampling import ClipSampling
from rlt.pipeline._transforms import FrameAugment, augment_frames, spatial_views

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
STATE_VERSION = 1


@dataclass(frozen=True)
class RLTConfig:
    """Options of `run_length_tokenize`, kept together so they travel to workers and into indexes."""

    tubelet_size: int = 2
    patch_size: int = 16
    threshold: float = 0.1
    threshold_units: ThresholdUnits = "normalized"
    compare: Compare = "previous"
    drop_policy: DropPolicy = "rlt"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.tubelet_size, int) and self.tubelet_size >= 1):
            raise ValueError(f"tubelet_size must be an int >= 1, got {self.tubelet_size!r}")
        if not (isinstance(self.patch_size, int) and self.patch_size >= 1):
            raise ValueError(f"patch_size must be an int >= 1, got {self.patch_size!r}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold!r}")
        check_choice("threshold_units", self.threshold_units, _UNITS)
        check_choice("compare", self.compare, _COMPARE)
        check_choice("drop_policy", self.drop_policy, _DROP_POLICY)

    def tokenize(self, frames_BTHWC: torch.Tensor) -> PackedTokens:
        return run_length_tokenize(
            frames_BTHWC,
            tubelet_size=self.tubelet_size,
            patch_size=self.patch_size,
            threshold=self.threshold,
            threshold_units=self.threshold_units,
            compare=self.compare,
            drop_policy=self.drop_policy,
            seed=self.seed,
        )


# Frozen, so one shared default instance is safe.
_DEFAULT_SAMPLING = ClipSampling()
_DEFAULT_RLT = RLTConfig()


def tokenize_video(
    path: str | Path,
    *,
    sampling: ClipSampling = _DEFAULT_SAMPLING,
    rlt: RLTConfig = _DEFAULT_RLT,
    backend: Backend = "auto",
    device: torch.device | str | None = None,
    epoch: int = 0,
    num_threads: int = 1,
) -> PackedTokens:
    """Decodes one video's clips and tokenizes them where the frames are: one batch of its clips,
    with their ``frame_indices`` and ``padded`` tubelets (``labels`` 0, ``videos`` the path).

    Args:
        path: the video file.
        sampling: which clips to cut and how to size them.
        rlt: the RLT stage's options.
        backend: the decoder, or a chain of them (see `decode_batch`).
        device: where to tokenize; by default where the backend's first decoder puts frames.
        epoch: the epoch, for training-mode clip offsets.
        num_threads: decoding threads of the CPU decoders.

    Raises:
        VideoDecodeError: the video cannot be decoded.
    """
    (result,) = decode_clips(
        [(str(path), path)], sampling=sampling, backend=backend, device=device, epoch=epoch, num_threads=num_threads
    )
    if isinstance(result, VideoDecodeError):
        raise result
    return tokenize_clips([result], rlt)


def tokenize_clips(
    decoded: Sequence[DecodedVideo],
    rlt: RLTConfig,
    *,
    augment: FrameAugment | None = None,
    rng: int | Sequence[int] | np.random.Generator = 0,
    views: int = 1,
) -> PackedTokens:
    """One batch of every clip of ``decoded``, tokenized on the device the clips are on, with what
    each clip is (label, video, number, source frames, padding).

    Args:
        decoded: the videos' clips.
        rlt: the RLT stage's options.
        augment: training augmentation of the pixels before RLT (see `augment_frames`); each
            video's clips are augmented at their own frame size, so videos may differ in it.
        rng: the augmentation's numpy Generator, or its seed.
        views: with more than 1, each clip becomes that many square views of its short side (see
            `spatial_views`), one after another, each with the clip's label and metadata.
    """
    if views > 1 and augment is not None:
        raise ValueError("spatial views are a test protocol; they do not combine with training augmentation")
    clips = [c for item in decoded for c in item.clips for _ in range(views)]
    if views > 1:
        frames_BTHWC = torch.cat([spatial_views(item.frames(), views) for item in decoded])
    elif augment is None:
        frames_BTHWC = torch.cat([item.frames() for item in decoded])
    else:
        rng = np.random.default_rng(rng)
        frames_BTHWC = torch.cat([augment_frames(item.frames(), augment, rng=rng) for item in decoded])
    if frames_BTHWC.shape[1] % rlt.tubelet_size:
        raise ValueError(f"num_frames={frames_BTHWC.shape[1]} is not a multiple of tubelet_size={rlt.tubelet_size}")
    device = frames_BTHWC.device
    return rlt.tokenize(frames_BTHWC).with_clips(
        labels=to_device(
            torch.tensor([item.label for item in decoded for _ in range(len(item.clips) * views)], dtype=torch.int64),
            device,
        ),
        videos=[item.video for item in decoded for _ in range(len(item.clips) * views)],
        clip_ids=[c.clip for c in clips],
        frame_indices=to_device(torch.from_numpy(np.stack([c.frame_indices for c in clips])), device),
        padded=to_device(torch.from_numpy(np.stack([c.padded_tubelets(rlt.tubelet_size) for c in clips])), device),
    )


class OnlinePipeline:
    """Iterates over a manifest's videos and yields batches of tokenized clips.

    A pool of ``workers`` threads decodes groups of ``videos_per_batch`` videos ahead (one DALI
    batch per group), while the consumer tokenizes and trains on the groups before them; batches
    come out in manifest order whatever the number of workers, so runs and resumes are exact.

    Args:
        manifest: CSV of ``path,label``.
        sampling: which clips to cut and how to size them.
        rlt: the RLT stage's options.
        backend: the decoder, or a chain of them (see `decode_batch`); ``"auto"`` picks per video.
        device: where to tokenize; by default where the backend's first decoder puts frames.
        videos_per_batch: videos decoded together; a batch holds all their clips.
        prefetch: groups of videos decoded ahead of the consumer (at least ``workers``).
        on_error: ``"skip"`` records a video that fails in `errors` and goes on; ``"raise"`` stops.
        epoch: the epoch, for training-mode clip offsets and the shuffle (see `set_epoch`).
        num_threads: decoding threads of each CPU decoder.
        workers: decoding threads; default: the cores this process may use.
        shuffle: visit the videos in an order that is a pure function of (seed, epoch).
        seed: the shuffle's seed.
        views: spatial views of each clip, for testing (see `spatial_views`); decode with
            ``crop=None`` so that they spread along the long side.
        rank, world_size: this process takes every ``world_size``-th video from ``rank`` on, after
            the shuffle, so the ranks of a distributed run share the videos out.
        augment: training augmentation of the pixels before RLT, drawn from (seed, epoch, group):
            anew every epoch, and the same on a resumed pass.

    Attributes:
        start_batch: groups of ``videos_per_batch`` videos to skip at the start of the next pass
            (set it to `batches_done` of a stopped pass to resume without decoding them again).
        batches_done: groups of videos consumed in the current pass, failed ones included.
    """

    def __init__(
        self,
        manifest: str | Path,
        *,
        sampling: ClipSampling = _DEFAULT_SAMPLING,
        rlt: RLTConfig = _DEFAULT_RLT,
        backend: Backend = "auto",
        device: torch.device | str | None = None,
        videos_per_batch: int = 4,
        prefetch: int = 2,
        on_error: OnError = "skip",
        epoch: int = 0,
        num_threads: int = 1,
        workers: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: FrameAugment | None = None,
        views: int = 1,
    ) -> None:
        check_choice("on_error", on_error, ("raise", "skip"))
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if videos_per_batch < 1 or prefetch < 1:
            raise ValueError(f"videos_per_batch and prefetch must be >= 1, got {videos_per_batch}, {prefetch}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.manifest = read_manifest(manifest)
        self.sampling, self.rlt = sampling, rlt
        resolve_backend(backend)  # fails here, not in a worker, on a bad name
        self.backend = backend
        self.device = torch.device(device) if device is not None else output_device(backend)
        self.videos_per_batch, self.prefetch = videos_per_batch, prefetch
        self.workers = workers or usable_cores()
        self.on_error, self.epoch, self.num_threads = on_error, epoch, num_threads
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.augment, self.views = augment, views
        self.errors: list[VideoDecodeError] = []
        self.start_batch = 0
        self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch``, from its first batch."""
        self.epoch, self.start_batch, self.batches_done = epoch, 0, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the pipeline is: small, versioned, and enough to resume the pass exactly."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches": self.batches_done,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"online pipeline state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("shuffle", "seed", "rank", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(f"online pipeline state has {key}={state[key]!r}, this pipeline {mine[key]!r}")
        self.set_epoch(int(state["epoch"]))
        self.start_batch = self.batches_done = int(state["batches"])

    def __len__(self) -> int:
        """Batches (groups of videos) per pass of this rank."""
        return math.ceil(len(self._rows()) / self.videos_per_batch)

    def _rows(self) -> list[ManifestRow]:
        rows = list(self.manifest.rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(rows))
            rows = [rows[i] for i in order]
        return rows[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[PackedTokens]:
        rows = self._rows()
        groups = [rows[i : i + self.videos_per_batch] for i in range(0, len(rows), self.videos_per_batch)]
        # A resumed pass skips its done groups once; the next pass starts from its first group.
        start, self.start_batch = self.start_batch, 0
        self.batches_done = start
        # The workers' GPU is the consumer's: a new thread's current GPU would be GPU 0.
        self._device = concrete_device(self.device)
        ahead = max(self.prefetch, self.workers)
        for decoded in decode_ahead(groups[start:], self._decode, workers=self.workers, ahead=ahead):
            # Counted before the batch is handed out: a consumer that stops after it has done this group.
            self.batches_done += 1
            yield from self._tokenize(decoded)

    def _decode(self, group: list[ManifestRow]) -> list[DecodedVideo | VideoDecodeError]:
        return decode_clips(
            [(row.video, row.path) for row in group],
            sampling=self.sampling,
            backend=self.backend,
            device=self._device,
            epoch=self.epoch,
            num_threads=self.num_threads,
            labels=[row.label for row in group],
        )

    def _tokenize(self, decoded: list[DecodedVideo | VideoDecodeError]) -> Iterator[PackedTokens]:
        good = []
        for item in decoded:
            if isinstance(item, VideoDecodeError):
                if self.on_error == "raise":
                    raise item
                log.warning("skipping %s", item)
                self.errors.append(item)
            else:
                good.append(item)
        if good:
            # batches_done counts this group already: it numbers the groups from 1.
            rng = (self.seed, self.epoch, self.rank, self.batches_done)
            yield tokenize_clips(good, self.rlt, augment=self.augment, rng=rng, views=self.views)
