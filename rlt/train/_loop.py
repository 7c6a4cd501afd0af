"""`rlt-prep train`: the training loop, top to bottom.

Batches come packed (no padding) from a tokenized dataset or, with ``online=True``, from raw videos
through the online pipeline. An optimiser step gathers micro-batches until the step holds
``tokens_per_step`` tokens over all ranks; the loss is the mean over the step's clips, on every rank
the same, so a run on W processes follows the run on one process that sees the same clips.

Run with ``torchrun --nproc-per-node W -m rlt train ...`` for DDP: each rank reads its own share
of the clips (the loader partitions by rank), and every rank decides together, before each
micro-batch, whether it ends the step and whether the epoch is over (when one rank's share runs
out, every rank ends the epoch there, and the others drop the rest of their share of that epoch).
A step still being gathered when an epoch ends carries over into the next; one still being
gathered when training ends is dropped.

With ``TrainConfig.augment``, each micro-batch's tokens are augmented on the device (`augment`), from
draws that are a pure function of (seed, epoch, batch of the epoch, rank), so a resumed run draws
what the uninterrupted one drew. `_micro_batches` yields the micro-batches, `_resume` and `_save`
read and write checkpoints; the loop in `_train` is what is left.

Files in ``out``: ``metrics.jsonl`` (one line per step), ``ckpt/step-*.pt`` (see `_checkpoint`),
``config.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlt._checks import check_choice
from rlt._lock import lock_output
from rlt.dataset import open_atomic, remove_temporary_files
from rlt.dataset._files import writing
from rlt.pipeline import Backend, ClipSampling, FrameAugment, PackedTokens, RLTConfig, concrete_device
from rlt.train._augment import AugmentConfig, augment, crop_side
from rlt.train._checkpoint import (
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlt.train._model import PRESETS, VideoViT, ViTConfig
from rlt.train._optim import WarmupCosine, param_groups
from rlt.train._sources import DataSpec, Source, offline_source, online_source
from rlt.train._weights import PretrainedWeights, read_pretrained

log = logging.getLogger(__name__)

Precision = Literal["auto", "bf16", "fp32"]
METRICS = "metrics.jsonl"
CHECKPOINTS = "ckpt"
# Options that do not change the losses of the steps already taken.
_MAY_CHANGE_ON_RESUME = {"epochs", "max_steps", "num_workers", "checkpoint_every", "keep_checkpoints"}
_TRAIN_SAMPLING = ClipSampling(mode="train")
_DEFAULT_RLT = RLTConfig()


@dataclass(frozen=True)
class TrainConfig:
    """A training run's options. Training stops after ``epochs`` or ``max_steps``, whichever comes first.

    Attributes:
        preset: model size, one of `PRESETS` (``tiny`` for CPU tests and the demo).
        epochs: passes over the data; None for no limit (then ``max_steps`` must be set).
        max_steps: optimiser steps; None for no limit.
        lr, min_lr: peak and final learning rate of the head (lower layers get ``layer_decay`` powers).
        warmup_steps: optimiser steps of linear warmup.
        weight_decay: AdamW decay of weight matrices (biases and norms get none).
        layer_decay: lr ratio of each layer to the one above it (VideoMAE fine-tunes with 0.75).
        grad_clip: max global gradient norm; None to not clip.
        max_tokens: token budget of one micro-batch of a dataset (per rank).
        tokens_per_step: tokens (over all ranks) to gather before an optimiser step; None steps on
            every micro-batch.
        precision: ``"auto"`` is bf16 autocast on CUDA and fp32 on the CPU.
        run_length_embedding: add an embedding of each token's run length.
        seed: model init, data order and clip offsets.
        num_workers: loader processes for a dataset.
        videos_per_batch: videos per micro-batch with ``online``.
        backend: decoder with ``online``.
        checkpoint_every: optimiser steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many checkpoints to keep.
        drop_path: stochastic depth of the model (`ViTConfig.drop_path`; VideoMAE fine-tunes ViT-B at
            0.1).
        augment: augmentation of each micro-batch's tokens, on the device (`AugmentConfig`; with a
            ``crop``, the model is built at the crop's size); None trains on the clips as they come.
            CutMix and label smoothing make the loss one over soft targets; the train accuracy stays
            that of each clip's own label.
    """

    preset: str = "tiny"
    epochs: int | None = 1
    max_steps: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    grad_clip: float | None = 1.0
    max_tokens: int = 16384
    tokens_per_step: int | None = None
    precision: Precision = "auto"
    run_length_embedding: bool = False
    seed: int = 0
    num_workers: int = 0
    videos_per_batch: int = 4
    backend: Backend = "auto"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    drop_path: float = 0.0
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("precision", self.precision, ("auto", "bf16", "fp32"))
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps (or both): training needs an end")
        for name in ("epochs", "max_steps", "tokens_per_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        for name in ("max_tokens", "checkpoint_every", "keep_checkpoints", "videos_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")


@dataclass
class TrainSummary:
    """What a run did: steps, where it stopped, and its last metrics."""

    out: Path
    steps: int
    epoch: int
    seconds: float
    checkpoint: Path | None
    last: dict[str, Any] = field(default_factory=dict)


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    online: bool = False,
    sampling: ClipSampling = _TRAIN_SAMPLING,
    rlt: RLTConfig = _DEFAULT_RLT,
    frame_augment: FrameAugment | None = None,
    resume: bool = False,
    init: str | Path | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> TrainSummary:
    """Trains a `VideoViT` on a tokenized dataset, or on a manifest's videos with ``online``.

    Args:
        data: a dataset folder written by `rlt-prep tokenize`, or a ``path,label`` manifest.
        out: the run folder (metrics, checkpoints).
        config: the run's options.
        online: ``data`` is a manifest: decode and tokenize its videos as training goes.
        sampling, rlt: with ``online``, how clips are cut (one per video per epoch, at an offset set
            by (seed, epoch)) and tokenized; a dataset brings its own.
        frame_augment: with ``online``, a random resized crop (and flip) of the training clips'
            pixels before RLT (decode with ``sampling.crop=None`` and a short side a little larger
            than its size); the model is built at its size, and eval resizes to it.
        resume: continue from the newest checkpoint in ``out/ckpt``. ``epochs``, ``max_steps``,
            ``num_workers`` and the checkpoint options may change; the rest must be the same.
        init: a VideoMAE-style state dict to start from (``head`` is skipped where its shape differs).
        device: by default CUDA (this rank's GPU) when there is one, else the CPU (``rlt-prep train``
            trains on the CPU on a GPU machine with ``CUDA_VISIBLE_DEVICES=``). Under torchrun, one GPU a
            process: more processes on a machine than its GPUs is a ValueError.
        show_progress: draw a progress bar on rank 0.
    """
    out = Path(out)
    # One run per run folder, for the whole run: rank 0 holds the folder's lock.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    joined = dist.is_available() and dist.is_initialized()  # a caller's process group stays the caller's
    try:
        with lock_output(out) if rank0 else nullcontext():
            return _train(data, out, config, online, sampling, rlt, frame_augment, resume, init, device, show_progress)
    finally:
        # The group this run started is ended before the interpreter exits: left to the exit, gloo's
        # threads were sometimes destroyed while joinable, and a rank aborted ("terminate called
        # without an active exception", SIGABRT) after a run that had finished.
        if not joined and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    data: str | Path,
    out: Path,
    config: TrainConfig,
    online: bool,
    sampling: ClipSampling,
    rlt: RLTConfig,
    frame_augment: FrameAugment | None,
    resume: bool,
    init: str | Path | None,
    device: torch.device | str | None,
    show_progress: bool,
) -> TrainSummary:
    started = time.perf_counter()
    if frame_augment is not None and not online:
        raise ValueError(
            "frame_augment (--frame-crop) crops raw videos' pixels, with online=True (--online); "
            "a dataset's tokens are cropped with augment.crop (--crop)"
        )

    # 1. Processes and device. torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE. The device
    # is checked before the process group starts, so that every rank of a torchrun with more processes
    # than GPUs says so instead of waiting for the others, or failing on an invalid device ordinal.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    requested, device = device, _run_device(device, local_rank, world)
    _check_device(device, requested, int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)) if world > 1 else 1)
    rank, world = _init_distributed(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    # 2. Data: every rank its share, in an order that is a pure function of (seed, epoch).
    source: Source
    if online:
        source = online_source(
            data,
            sampling=sampling,
            rlt=rlt,
            backend=config.backend,
            device=device,
            videos_per_batch=config.videos_per_batch,
            seed=config.seed,
            rank=rank,
            world_size=world,
            augment=frame_augment,
        )
    else:
        source = offline_source(
            data,
            max_tokens=config.max_tokens,
            seed=config.seed,
            num_workers=config.num_workers,
            rank=rank,
            world_size=world,
            one_clip_per_video=config.augment is not None and config.augment.one_clip_per_video,
        )
    spec = source.spec

    # 3. The checkpoint to go on from, if any, checked against this run's options and data.
    ckpt = _resume(out, resume, config, spec, rank, world)

    # 4. Model, the same on every rank (DDP also broadcasts rank 0's weights): a resumed run's is the
    # checkpoint's (it may have come from --init weights, with their norms, pooling and embeddings).
    torch.manual_seed(config.seed)
    if ckpt is not None:
        model = VideoViT(ViTConfig(**ckpt["model_config"]))
    else:
        model = VideoViT(_model_config(config, spec))
        if init is not None:
            model = _load_init(model, Path(init), config.preset)
    model_config = model.config
    dense_per_clip = math.prod(model_config.grid)  # tokens of a clip with none dropped
    model.to(device)
    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward = ddp or model

    # 5. Optimiser and schedule; a resumed run's state.
    optimizer = torch.optim.AdamW(
        param_groups(model, weight_decay=config.weight_decay, layer_decay=config.layer_decay),
        lr=config.lr,
        betas=(0.9, 0.999),
    )
    schedule = WarmupCosine(lr=config.lr, min_lr=config.min_lr, warmup_steps=config.warmup_steps)
    step = 0
    checkpoint: Path | None = None  # rank 0's newest
    metrics_path = out / METRICS
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        source.load_state_dict(ckpt["loaders"][rank])
        set_rng_state(ckpt["rng"][rank])
        step, checkpoint = int(ckpt["step"]), Path(ckpt["path"])
        log.info("resumed from %s at step %d", ckpt["path"], step)
    elif rank == 0:
        with open_atomic(out / "config.json") as f:
            json.dump({"train": asdict(config), "data": spec.to_dict(), "model": asdict(model_config)}, f, indent=1)

    def finished() -> bool:
        return (config.max_steps is not None and step >= config.max_steps) or (
            config.epochs is not None and source.epoch >= config.epochs
        )

    def save() -> Path | None:
        return _save(out, step, config, spec, model, optimizer, schedule, source, rank=rank, world=world)

    # 6. The loop. Accumulators of the step being gathered:
    step_tokens = step_clips = micro = 0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    last_time = time.perf_counter()
    last: dict[str, Any] = {}
    saved_step = step  # the same on every rank: saving is collective
    bar = _Bar(config, len(source)) if show_progress and rank == 0 else None
    metrics = open(metrics_path, "a") if rank == 0 else None  # noqa: SIM115 (closed in finally)
    model.train()
    try:
        for mb in _micro_batches(source, config, finished=finished, rank=rank, world=world, device=device):
            step_tokens, step_clips, micro = step_tokens + mb.tokens, step_clips + mb.clips, micro + 1
            ends_step = config.tokens_per_step is None or step_tokens >= config.tokens_per_step
            batch, labels = mb.batch, mb.batch.require_labels()
            # Gradients of the step's earlier micro-batches stay local; the last one all-reduces them.
            with ddp.no_sync() if ddp is not None and not ends_step else nullcontext():
                with autocast:
                    logits = forward(batch.tokens, batch.positions, batch.lengths, batch.cu_seqlens)
                loss = F.cross_entropy(logits.float(), mb.targets, reduction="sum")
                loss.backward()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == labels).sum()  # of each clip's own label, CutMix or not
            if not ends_step:
                continue

            # The optimiser step. The loss was summed; DDP averaged over ranks: make it the mean
            # over the step's clips.
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.mul_(world / step_clips)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if config.grad_clip is not None
                else None
            )
            step_progress = (step + 1) / config.max_steps if config.max_steps else 0.0
            lr = schedule.apply(optimizer, step, max(step_progress, mb.progress))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            total_loss, total_correct = _sum_over_ranks([loss_sum, correct], world, device)
            now = time.perf_counter()
            last = {
                "step": step,
                "epoch": mb.epoch,
                "loss": float(total_loss) / step_clips,
                "accuracy": float(total_correct) / step_clips,
                "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens": step_tokens,
                "clips": step_clips,
                "micro_batches": micro,
                "kept_ratio": step_tokens / (step_clips * dense_per_clip),
                "tokens_per_s": step_tokens / (now - last_time),
                "clips_per_s": step_clips / (now - last_time),
                "seconds": now - started,
            }
            last_time = now
            if metrics is not None:
                with writing(metrics_path):
                    metrics.write(json.dumps(last) + "\n")
                    metrics.flush()
            if bar is not None:
                bar.update(step, mb.epoch * mb.batches_in_epoch + source.batches_done, last)
            step_tokens = step_clips = micro = 0
            loss_sum.zero_()
            correct.zero_()
            if step % config.checkpoint_every == 0:
                checkpoint, saved_step = save() or checkpoint, step
        if saved_step != step:
            checkpoint = save() or checkpoint
    finally:
        if metrics is not None:
            with writing(metrics_path):
                metrics.close()
        if bar is not None:
            bar.close()
    return TrainSummary(
        out=out, steps=step, epoch=source.epoch, seconds=time.perf_counter() - started, checkpoint=checkpoint, last=last
    )


def _model_config(config: TrainConfig, spec: DataSpec) -> ViTConfig:
    """The preset for the data's clips; trained on crops of the stored frames, at the crop's size."""
    image_size = spec.image_size
    crop = config.augment.crop if config.augment is not None else None
    if crop is not None and image_size is not None:
        stored = image_size // spec.rlt.patch_size
        crop_side(crop, grid=(stored, stored), patch_size=spec.rlt.patch_size)  # it fits, or says why not
        image_size = crop
    return PRESETS[config.preset](
        spec.num_classes,
        num_frames=spec.sampling.num_frames,
        image_size=image_size,
        tubelet_size=spec.rlt.tubelet_size,
        patch_size=spec.rlt.patch_size,
        run_length_embedding=config.run_length_embedding,
        drop_path=config.drop_path,
    )


def _resume(
    out: Path, resume: bool, config: TrainConfig, spec: DataSpec, rank: int, world: int
) -> dict[str, Any] | None:
    """The newest checkpoint of ``out``, checked to be this run's, when resuming; else None, after
    making sure ``out`` holds no other run.

    A run killed while saving left temporary files, and one killed before its first checkpoint left
    metrics: this run holds the folder's lock, so they are no one's, and go.
    """
    metrics_path = out / METRICS
    if rank == 0:
        remove_temporary_files(out)
        if (out / CHECKPOINTS).is_dir():
            remove_temporary_files(out / CHECKPOINTS)
    if resume and not list_checkpoints(out / CHECKPOINTS):
        # It died before its first checkpoint: there is nothing to resume, so it starts again.
        log.info("%s holds no checkpoint yet: the run starts at step 0", out)
        resume = False
    if not resume:
        if list_checkpoints(out / CHECKPOINTS):
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or use a new folder")
        if rank == 0:
            metrics_path.unlink(missing_ok=True)
        return None
    ckpt = load_checkpoint(out / CHECKPOINTS)
    if len(ckpt["loaders"]) != world:
        raise ValueError(f"{ckpt['path']} was written by {len(ckpt['loaders'])} ranks, this run has {world}")
    # Options a checkpoint does not list are older than it: it was written with their defaults.
    saved = {**asdict(TrainConfig()), **ckpt["train_config"]}
    changed = sorted(k for k, v in asdict(config).items() if saved[k] != v)
    changed += spec.differences(DataSpec.from_dict(ckpt["data"]))
    if set(changed) - _MAY_CHANGE_ON_RESUME:
        raise ValueError(
            f"{ckpt['path']} was written with other options or data ({', '.join(changed)}); "
            "resume with the same ones, or start a new run folder"
        )
    if rank == 0:
        _truncate_metrics(metrics_path, int(ckpt["step"]))
    return ckpt


def _save(
    out: Path,
    step: int,
    config: TrainConfig,
    spec: DataSpec,
    model: VideoViT,
    optimizer: torch.optim.Optimizer,
    schedule: WarmupCosine,
    source: Source,
    *,
    rank: int,
    world: int,
) -> Path | None:
    """A checkpoint of the run at ``step``: every rank's loader position and generators, gathered to
    rank 0, which writes (collective: every rank calls it). Rank 0 gets its path, the others None."""
    states = [(source.state_dict(), rng_state())]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, states[0])
        states = gathered
    if rank != 0:
        return None
    return save_checkpoint(
        out / CHECKPOINTS,
        step,
        {
            "model": model.state_dict(),
            "model_config": asdict(model.config),
            "train_config": asdict(config),
            "data": spec.to_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "loaders": [s for s, _ in states],
            "rng": [r for _, r in states],
        },
        keep=config.keep_checkpoints,
    )


@dataclass
class _MicroBatch:
    """One micro-batch of this rank, on the device and augmented, with what all ranks hold together.

    Attributes:
        targets: int64 ``[B]`` labels, or float32 ``[B, K]`` targets where augmentation mixes or
            smooths them.
        tokens, clips: of this micro-batch over all ranks.
        progress: the share of the run's epochs done, averaged over ranks (for the schedule).
    """

    batch: PackedTokens
    targets: torch.Tensor
    tokens: int
    clips: int
    epoch: int
    batches_in_epoch: int
    progress: float


def _micro_batches(
    source: Source,
    config: TrainConfig,
    *,
    finished: Callable[[], bool],
    rank: int,
    world: int,
    device: torch.device,
) -> Iterator[_MicroBatch]:
    """This rank's micro-batches, epoch after epoch, until ``finished()`` (asked before each one).

    The ranks agree before every micro-batch that each of them has one: when one rank's share of an
    epoch runs out, every rank ends the epoch there. A batch's augmentation is drawn from (seed,
    epoch, batch of the epoch, rank), so a resumed run draws the same.
    """
    while not finished():
        epoch, batches_in_epoch = source.epoch, max(len(source), 1)
        batches = iter(source)
        while not finished():
            batch = next(batches, None)
            targets = None
            if batch is not None:
                batch = batch.to(device, non_blocking=True)
                if config.augment is None:
                    targets = batch.require_labels()
                else:
                    draw = (config.seed, epoch, source.batches_done, rank)
                    batch, targets = augment(batch, config.augment, num_classes=source.spec.num_classes, rng=draw)
            epoch_progress = (epoch + source.batches_done / batches_in_epoch) / (config.epochs or math.inf)
            tokens, clips, have, progress = _sum_over_ranks(
                [batch.num_tokens, batch.num_clips, 1, epoch_progress] if batch else [0, 0, 0, epoch_progress],
                world,
                device,
            )
            if batch is None or targets is None or have < world:
                break  # some rank's share of the epoch is done
            yield _MicroBatch(batch, targets, int(tokens), int(clips), epoch, batches_in_epoch, progress / world)
        else:
            return  # finished mid-epoch
        # The epoch is over (for all ranks at once); a partly gathered step carries over.
        source.set_epoch(epoch + 1)


def _init_distributed(device: torch.device, world: int) -> tuple[int, int]:
    """This process's rank and the world size (torchrun's WORLD_SIZE, ``world``); under torchrun, the
    process group, with NCCL for GPUs and gloo for the CPU (NCCL cannot reduce CPU tensors:
    ``device="cpu"`` on a GPU machine)."""
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _run_device(device: torch.device | str | None, local_rank: int, world: int) -> torch.device:
    """The device this rank trains on, with its index (``torch.cuda.set_device`` needs one).

    None is this rank's GPU, or the CPU without CUDA; a plain "cuda" is this rank's GPU under torchrun,
    else the current one.
    """
    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank) if world > 1 else concrete_device(device)
    return device


def _check_device(device: torch.device, requested: torch.device | str | None, local_world: int) -> None:
    """Raises ValueError, saying what to do, where ``device`` is a GPU this machine does not have.

    ``requested`` is the caller's choice (None, or a plain "cuda": each rank its own GPU), ``local_world``
    the number of processes torchrun started on this machine (1 without torchrun).
    """
    if device.type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise ValueError(f"training on {device} needs a CUDA GPU, and torch sees none; train on the CPU instead")
    if (requested is None or torch.device(requested).index is None) and local_world > gpus:
        raise ValueError(
            f"torchrun started {local_world} processes on this machine, which has {gpus} GPU(s): one GPU a "
            f"process, so use --nproc-per-node {gpus}, or hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on the CPU"
        )
    if device.index is not None and device.index >= gpus:
        raise ValueError(f"there is no {device} on this machine, which has {gpus} GPU(s)")


def _sum_over_ranks(values: list[Any], world: int, device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (one small all-reduce), as Python floats."""
    if world == 1:
        return [float(v) for v in values]
    flat = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    dist.all_reduce(flat)
    return flat.tolist()


def _load_init(model: VideoViT, path: Path, preset: str) -> VideoViT:
    """The model to train, started from the weights at ``path`` (any layout `read_pretrained` reads).

    They must be of the preset's architecture; they set its layer-norm epsilons, pooling, layer scale
    and learned length embedding. A head for another number of classes, or none, stays ours.
    """
    weights = read_pretrained(path)
    try:
        config = weights.config_for(model.config, what=f"--preset {preset}")
    except ValueError as e:
        fitting = [name for name, make in PRESETS.items() if _fits(weights, model.config, make(1))]
        raise ValueError(f"{e}: pass --preset {' or '.join(fitting)}" if fitting else str(e)) from e
    if config != model.config:
        model = VideoViT(config)
    kept = weights.load_into(model)
    if kept:
        log.info("initialised from %s, but for %s (theirs are for another task, or absent)", path, ", ".join(kept))
    return model


def _fits(weights: PretrainedWeights, config: ViTConfig, preset: ViTConfig) -> bool:
    """Whether ``weights`` are of ``preset``'s architecture."""
    try:
        weights.config_for(replace(config, width=preset.width, depth=preset.depth, heads=preset.heads))
    except ValueError:
        return False
    return True


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops the lines of steps after ``step``: a resumed run writes them again."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
    with open_atomic(path) as f:
        f.write("".join(line + "\n" for line in lines))


def _step_of(line: str) -> float:
    """The step a metrics line records; a line cut short by a crash counts as after every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class _Bar:
    """A rich progress bar over steps (with max_steps) or batches (with epochs)."""

    def __init__(self, config: TrainConfig, batches_per_epoch: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.by_steps = config.max_steps is not None
        total = config.max_steps if self.by_steps else (config.epochs or 1) * batches_per_epoch
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]} | loss {task.fields[loss]} | {task.fields[rate]} tokens/s"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task(
            "train", total=total, unit="steps" if self.by_steps else "batches", loss="-", rate="-"
        )
        self.progress.start()

    def update(self, step: int, batches: int, metrics: dict[str, Any]) -> None:
        self.progress.update(
            self.task,
            completed=step if self.by_steps else batches,
            loss=f"{metrics['loss']:.4f}",
            rate=f"{metrics['tokens_per_s']:.0f}",
        )

    def close(self) -> None:
        self.progress.stop()
