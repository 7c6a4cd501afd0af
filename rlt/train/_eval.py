"""`rlt-prep eval`: top-1 / top-5 of a checkpoint, averaging each video's clips (VideoMAE's multi-view test)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from rlt._checks import check_choice
from rlt.dataset._remote import is_url
from rlt.pipeline import Backend, OnlinePipeline, PackedTokens, VideoDecodeError, run_length_tokenize
from rlt.train._augment import view_crop_tokens
from rlt.train._checkpoint import load_checkpoint
from rlt.train._loader import TokenLoader, TokenStream
from rlt.train._model import VideoViT, ViTConfig
from rlt.train._sources import DataSpec, dataset_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over videos (each video's clip probabilities averaged) and over single clips."""

    top1: float
    top5: float
    clip_top1: float
    videos: int
    clips: int
    checkpoint: str
    failed: int = 0
    tokens: int = 0  # the model's input, over every view
    model_seconds: float = 0.0  # in the model alone (decoding and loading aside)

    def to_dict(self) -> dict[str, float | int | str]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_model(checkpoint: str | Path) -> tuple[VideoViT, DataSpec, str]:
    """The model of a training checkpoint, in eval mode on the CPU, with the data it was trained on."""
    ckpt = load_checkpoint(checkpoint)
    model = VideoViT(ViTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), DataSpec.from_dict(ckpt["data"]), ckpt["path"]


@torch.no_grad()
def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    device: torch.device | str | None = None,
    max_tokens: int = 16384,
    clips_per_video: int | None = None,
    spatial_crops: int = 1,
    tokens: Literal["rlt", "dense"] = "rlt",
    backend: Backend = "auto",
) -> EvalResult:
    """Scores a checkpoint on a tokenized dataset or on a manifest's videos.

    Args:
        checkpoint: a ``step-*.pt`` file, or a run folder (its newest checkpoint).
        data: a dataset folder written by `rlt-prep tokenize` (its clips as stored) or its URL, or
            a ``path,label`` manifest (decoded and tokenized as the checkpoint's data was). A model
            trained on crops (``AugmentConfig.crop``) sees the centre crop of that size.
        device: by default CUDA when there is one.
        max_tokens: token budget of a batch of a dataset.
        clips_per_video: with a manifest, clips per video (default: as the checkpoint's data).
        spatial_crops: views of each clip, spread along its longer side (VideoMAE tests with 3):
            of a dataset tokenized on a larger grid than the model's, or of raw videos decoded with
            their short side at the model's size. Every view's probabilities are averaged into
            its video's.
        tokens: ``"dense"`` gives the model every token: raw videos are tokenized with
            ``drop_policy="none"``; a dataset's clips are laid back on the grid first, each kept
            token repeated over its run (what RLT tells the model it saw).
        backend: the decoder, with a manifest.
    """
    check_choice("tokens", tokens, ("rlt", "dense"))
    if spatial_crops < 1:
        raise ValueError(f"spatial_crops must be >= 1, got {spatial_crops}")
    model, spec, path = load_model(checkpoint)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    errors: list[VideoDecodeError] = []
    batches: Iterable[PackedTokens]
    # A dataset (a folder, or a URL but that of a .csv manifest); read_index names what is wrong with
    # an unfinished one.
    is_manifest = not ((is_url(data) and not str(data).endswith(".csv")) or Path(data).is_dir())
    token_views = 1 if is_manifest else spatial_crops  # raw videos come as their views; a dataset's are cut here
    if not is_manifest:
        _check_geometry(dataset_spec(data), spec, data)
        batches = TokenLoader(TokenStream(data, max_tokens=max_tokens, shuffle=False, rank=0, world_size=1))
    else:
        sampling = replace(spec.sampling, mode="eval", clips_per_video=clips_per_video or spec.sampling.clips_per_video)
        if spec.augment is not None:  # trained on random resized crops: the short side at their size, its centre
            sampling = replace(sampling, size=spec.augment.size, crop=spec.augment.size)
        if spatial_crops > 1:  # the whole frame, its short side at the model's size: views along the long one
            sampling = replace(sampling, size=model.config.image_size, crop=None)
        rlt = replace(spec.rlt, drop_policy="none") if tokens == "dense" else spec.rlt
        pipeline = OnlinePipeline(data, sampling=sampling, rlt=rlt, backend=backend, device=device, views=spatial_crops)
        batches = pipeline
        errors = pipeline.errors  # filled as the pipeline runs

    probs: dict[str, torch.Tensor] = {}
    labels: dict[str, int] = {}
    clips = clip_correct = num_tokens = 0
    seconds = 0.0
    for stored in batches:
        stored = stored.to(device, non_blocking=True)
        for view in range(token_views):
            # A model trained on crops of the stored frames sees their centre (one view), or views
            # spread along the longer side.
            batch = view_crop_tokens(stored, model.config.image_size, view=view, views=token_views)
            if token_views > 1 and batch is stored:
                raise ValueError(
                    f"{data}: {spatial_crops} spatial crops need clips larger than the model's "
                    f"{model.config.image_size} px on one side; these are {model.config.image_size} px square"
                )
            if tokens == "dense" and not is_manifest:
                batch = _every_token(batch)
            if not clips:  # an untimed first call: allocations and kernels are chosen once
                with autocast:
                    model(batch.tokens, batch.positions, batch.lengths, batch.cu_seqlens)
            started = _clock(device)
            with autocast:
                logits = model(batch.tokens, batch.positions, batch.lengths, batch.cu_seqlens)
            p = logits.float().softmax(1).cpu()  # waits for the device
            seconds += time.perf_counter() - started
            num_tokens += batch.num_tokens
            truth_B = batch.require_labels().cpu()
            clip_correct += int((p.argmax(1) == truth_B).sum())
            clips += batch.num_clips
            for video, label, row in zip(batch.videos or (), truth_B.tolist(), p, strict=True):
                probs[video] = probs[video] + row if video in probs else row.clone()
                labels[video] = label
    if not probs:
        raise ValueError(f"{data} gave no clips to evaluate")
    scores = torch.stack(list(probs.values()))
    truth = torch.tensor([labels[v] for v in probs])
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = top == truth[:, None]
    return EvalResult(
        top1=float(hits[:, 0].float().mean()),
        top5=float(hits.any(1).float().mean()),
        clip_top1=clip_correct / clips,
        videos=len(probs),
        clips=clips,
        checkpoint=path,
        failed=len(errors),
        tokens=num_tokens,
        model_seconds=seconds,
    )


def _every_token(batch: PackedTokens) -> PackedTokens:
    """The clips with every tubelet a token of length 1, each dropped one holding its run's pixels."""
    dense = run_length_tokenize(
        batch.unpack(), tubelet_size=batch.tubelet_size, patch_size=batch.patch_size, drop_policy="none"
    )
    return replace(
        dense,
        labels=batch.labels,
        padded=batch.padded,
        frame_indices=batch.frame_indices,
        videos=batch.videos,
        clip_ids=batch.clip_ids,
    )


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _check_geometry(data: DataSpec, trained: DataSpec, where: str | Path) -> None:
    mine = (data.sampling.num_frames, data.image_size, data.rlt.tubelet_size, data.rlt.patch_size)
    theirs = (trained.sampling.num_frames, trained.image_size, trained.rlt.tubelet_size, trained.rlt.patch_size)
    if mine != theirs:
        raise ValueError(
            f"{where} has clips of (frames, crop, tubelet, patch) = {mine}, the checkpoint was trained on {theirs}"
        )
    if data.num_classes > trained.num_classes:
        raise ValueError(f"{where} has {data.num_classes} classes, the checkpoint predicts {trained.num_classes}")
    if data.classes and trained.classes and data.classes != trained.classes:
        raise ValueError(
            f"{where} names its classes {_show(data.classes)}, the checkpoint was trained on {_show(trained.classes)}"
        )


def _show(classes: list[str], limit: int = 6) -> str:
    more = f" and {len(classes) - limit} more" if len(classes) > limit else ""
    return ", ".join(classes[:limit]) + more
