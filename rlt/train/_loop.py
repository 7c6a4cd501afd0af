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

Files in ``out``: ``metrics.jsonl`` (one line per step), ``ckpt/step-*.pt`` (see `_checkpoint`),
``config.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
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
from rlt.pipeline import Backend, ClipSampling, RLTConfig
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
        resume: continue from the newest checkpoint in ``out/ckpt``. ``epochs``, ``max_steps``,
            ``num_workers`` and the checkpoint options may change; the rest must be the same.
        init: a VideoMAE-style state dict to start from (``head`` is skipped where its shape differs).
        device: by default CUDA (this rank's GPU) when there is one, else the CPU.
        show_progress: draw a progress bar on rank 0.
    """
    out = Path(out)
    # One run per run folder, for the whole run: rank 0 holds the folder's lock.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    with lock_output(out) if rank0 else nullcontext():
        return _train(data, out, config, online, sampling, rlt, resume, init, device, show_progress)


def _train(
    data: str | Path,
    out: Path,
    config: TrainConfig,
    online: bool,
    sampling: ClipSampling,
    rlt: RLTConfig,
    resume: bool,
    init: str | Path | None,
    device: torch.device | str | None,
    show_progress: bool,
) -> TrainSummary:
    started = time.perf_counter()

    # 1. Processes and device. torchrun sets WORLD_SIZE, RANK and LOCAL_RANK.
    rank, world, local_rank = _init_distributed()
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
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
        )
    else:
        source = offline_source(
            data,
            max_tokens=config.max_tokens,
            seed=config.seed,
            num_workers=config.num_workers,
            rank=rank,
            world_size=world,
        )
    spec = source.spec

    # 3. Model, the same on every rank (DDP also broadcasts rank 0's weights).
    torch.manual_seed(config.seed)
    model_config = PRESETS[config.preset](
        spec.num_classes,
        num_frames=spec.sampling.num_frames,
        image_size=spec.sampling.crop,
        tubelet_size=spec.rlt.tubelet_size,
        patch_size=spec.rlt.patch_size,
        run_length_embedding=config.run_length_embedding,
    )
    model = VideoViT(model_config)
    dense_per_clip = math.prod(model_config.grid)  # tokens of a clip with none dropped
    if init is not None:
        model = _load_init(model, Path(init), config.preset)
        model_config = model.config
    model.to(device)
    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward = ddp or model

    # 4. Optimiser and schedule.
    optimizer = torch.optim.AdamW(
        param_groups(model, weight_decay=config.weight_decay, layer_decay=config.layer_decay),
        lr=config.lr,
        betas=(0.9, 0.999),
    )
    schedule = WarmupCosine(lr=config.lr, min_lr=config.min_lr, warmup_steps=config.warmup_steps)

    # 5. Resume: model, optimiser, schedule, this rank's loader and generators, and the step.
    step = 0
    checkpoint: Path | None = None  # rank 0's newest
    metrics_path = out / METRICS
    if rank == 0:  # a run killed while saving left them; this one holds the folder's lock
        remove_temporary_files(out)
        if (out / CHECKPOINTS).is_dir():
            remove_temporary_files(out / CHECKPOINTS)
    if resume and not list_checkpoints(out / CHECKPOINTS):
        # It died before its first checkpoint: there is nothing to resume, so it starts again.
        log.info("%s holds no checkpoint yet: the run starts at step 0", out)
        resume = False
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINTS)
        if len(ckpt["loaders"]) != world:
            raise ValueError(f"{ckpt['path']} was written by {len(ckpt['loaders'])} ranks, this run has {world}")
        changed = sorted(k for k, v in asdict(config).items() if ckpt["train_config"].get(k) != v)
        changed += spec.differences(DataSpec.from_dict(ckpt["data"]))
        if set(changed) - _MAY_CHANGE_ON_RESUME:
            raise ValueError(
                f"{ckpt['path']} was written with other options or data ({', '.join(changed)}); "
                "resume with the same ones, or start a new run folder"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        source.load_state_dict(ckpt["loaders"][rank])
        set_rng_state(ckpt["rng"][rank])
        step, checkpoint = int(ckpt["step"]), Path(ckpt["path"])
        if rank == 0:
            _truncate_metrics(metrics_path, step)
        log.info("resumed from %s at step %d", ckpt["path"], step)
    else:
        # Metrics without a checkpoint are those of a run that died before its first checkpoint
        # (it held the folder's lock, so it is not running): it starts again here.
        if list_checkpoints(out / CHECKPOINTS):
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or use a new folder")
        if rank == 0:
            metrics_path.unlink(missing_ok=True)
            with open_atomic(out / "config.json") as f:
                json.dump({"train": asdict(config), "data": spec.to_dict(), "model": asdict(model_config)}, f, indent=1)

    def finished() -> bool:
        return (config.max_steps is not None and step >= config.max_steps) or (
            config.epochs is not None and source.epoch >= config.epochs
        )

    def save() -> Path | None:
        # Every rank's loader position and generators, gathered to rank 0, which writes.
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
                "model_config": asdict(model_config),
                "train_config": asdict(config),
                "data": spec.to_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "loaders": [s for s, _ in states],
                "rng": [r for _, r in states],
            },
            keep=config.keep_checkpoints,
        )

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
        while not finished():
            epoch, batches_in_epoch = source.epoch, max(len(source), 1)
            batches = iter(source)
            while not finished():
                batch = next(batches, None)
                # Agreed by all ranks before any of them runs the micro-batch.
                epoch_progress = (epoch + source.batches_done / batches_in_epoch) / (config.epochs or math.inf)
                tokens, clips, have, progress = _sum_over_ranks(
                    [batch.num_tokens, batch.num_clips, 1, epoch_progress] if batch else [0, 0, 0, epoch_progress],
                    world,
                    device,
                )
                if batch is None or have < world:
                    break  # some rank's share of the epoch is done
                step_tokens, step_clips, micro = step_tokens + int(tokens), step_clips + int(clips), micro + 1
                ends_step = config.tokens_per_step is None or step_tokens >= config.tokens_per_step
                batch = batch.to(device, non_blocking=True)
                # Gradients of the step's earlier micro-batches stay local; the last one all-reduces them.
                with ddp.no_sync() if ddp is not None and not ends_step else nullcontext():
                    with autocast:
                        logits = forward(batch.tokens, batch.positions, batch.lengths, batch.cu_seqlens)
                    loss = F.cross_entropy(logits.float(), batch.require_labels(), reduction="sum")
                    loss.backward()
                loss_sum += loss.detach()
                correct += (logits.argmax(1) == batch.require_labels()).sum()
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
                lr = schedule.apply(optimizer, step, max(step_progress, progress / world))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                total_loss, total_correct = _sum_over_ranks([loss_sum, correct], world, device)
                now = time.perf_counter()
                last = {
                    "step": step,
                    "epoch": epoch,
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
                    bar.update(step, epoch * batches_in_epoch + source.batches_done, last)
                step_tokens = step_clips = micro = 0
                loss_sum.zero_()
                correct.zero_()
                if step % config.checkpoint_every == 0:
                    checkpoint, saved_step = save() or checkpoint, step
            else:
                break  # finished mid-epoch
            # The epoch is over (for all ranks at once); a partly gathered step carries over.
            source.set_epoch(epoch + 1)
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


def _init_distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


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
