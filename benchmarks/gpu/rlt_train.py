"""Sections rlt and train: RLT against a copy and a ViT forward; training on RLT tokens against every token."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.gpu._context import CROP, Context, Recorder, log, ratio
from benchmarks.gpu._videos import video_manifest
from benchmarks.gpu.decode import decode_224, videomae_clip

if TYPE_CHECKING:
    from rlt.train import VideoViT

# ---------------------------------------------------------------------------------------------
# rlt


def median_ms(ctx: Context, fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn``: CUDA events on the GPU (the stream's time), perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    ctx.sync()
    if ctx.cuda:
        events = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def profile_ops(ctx: Context, fn: Callable[[], object], path: Path, calls: int = 20) -> None:
    """torch.profiler's table of ``fn``'s ops over ``calls`` calls (host and device time), to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        ctx.sync()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    path.write_text(f"{calls} calls\n{table}\n")


def _kernels_in_use(ctx: Context) -> Any:
    """rlt's Triton kernels module where this rlt has one and uses it on this device, else None."""
    try:
        from rlt.pipeline import _rlt_triton
    except ImportError:
        return None
    return _rlt_triton if ctx.cuda and _rlt_triton.ENABLED else None


def vit(ctx: Context) -> VideoViT:
    """The --preset model for 400 classes (Kinetics-400), on the section's device."""
    from rlt.train import PRESETS, VideoViT

    return VideoViT(PRESETS[ctx.preset](400)).to(ctx.device)


def section_rlt(rec: Recorder, ctx: Context) -> None:
    from rlt.pipeline import run_length_tokenize

    b = ctx.sizes.rlt_batch
    generator = torch.Generator().manual_seed(0)
    clips_BTHWC = torch.randint(0, 256, (b, 16, CROP, CROP, 3), dtype=torch.uint8, generator=generator)
    clips_BTHWC[:, :, : CROP // 2] = clips_BTHWC[:, :1, : CROP // 2]  # the top half of each clip is static
    clips_BTHWC = clips_BTHWC.to(ctx.device)
    repeats = ctx.sizes.repeats
    log(f"RLT against a copy, {b} clips, median of {repeats}")
    rlt_ms = median_ms(ctx, lambda: run_length_tokenize(clips_BTHWC), repeats)
    copy_ms = median_ms(ctx, lambda: clips_BTHWC.clone(), repeats)
    packed = run_length_tokenize(clips_BTHWC)
    kernels = _kernels_in_use(ctx)
    rec.figures["rlt_kernels"] = "triton" if kernels is not None else "eager torch ops"
    if kernels is not None:  # the same stage in eager torch ops, for comparison
        kernels.ENABLED = False
        try:
            rec.figures["rlt_eager_ms"] = round(median_ms(ctx, lambda: run_length_tokenize(clips_BTHWC), repeats), 4)
        finally:
            kernels.ENABLED = True
    if ctx.cuda:  # where the stage's time goes, op by op, for whoever makes it faster next
        profile_ops(ctx, lambda: run_length_tokenize(clips_BTHWC), ctx.out / "rlt_profile.txt")
    rec.figures.update(
        batch=list(clips_BTHWC.shape),
        kept_ratio=round(packed.num_tokens / packed.dense_tokens, 4),
        rlt_ms=round(rlt_ms, 4),
        copy_ms=round(copy_ms, 4),
        copy_gb_per_s=round(2 * clips_BTHWC.numel() / copy_ms / 1e6, 1),  # read + write
        rlt_clips_per_s=round(b / rlt_ms * 1e3, 1),
    )
    rec.goal("rlt: RLT / one device copy of the batch", ratio(rlt_ms, copy_ms), "<=", 5)

    log(f"{ctx.preset} forward on the batch's {packed.num_tokens} tokens")
    model = vit(ctx).eval()
    on = packed.to(ctx.device)
    autocast = ctx.autocast()

    @torch.no_grad()
    def forward() -> None:
        with autocast:
            model(on.tokens, on.positions, on.lengths, on.cu_seqlens)

    vit_ms = median_ms(ctx, forward, max(3, repeats // 5))
    rec.figures.update(model=ctx.preset, vit_forward_ms=round(vit_ms, 3))
    share = rlt_ms / vit_ms
    rec.figures["rlt_share_of_forward"] = round(share, 5)
    rec.goal(f"rlt: RLT as a share of a {ctx.preset} bf16 forward on its tokens", round(100 * share, 3), "<", 1, "%")


# ---------------------------------------------------------------------------------------------
# train


def decoded_batch(ctx: Context, paths: list[str]) -> tuple[torch.Tensor, str]:
    """uint8 [B, 16, 224, 224, 3] on the device: each video's centre clip, decoded by DALI (decord if DALI fails)."""
    from rlt.pipeline import probe

    indices = [videomae_clip(probe(p)) for p in paths]
    try:
        clips = decode_224(paths, indices, ctx.dali)
        backend = ctx.dali
    except Exception as e:  # the train figures do not depend on who decoded
        log(f"  {ctx.dali} failed ({type(e).__name__}: {e}); decoding with decord")
        clips, backend = decode_224(paths, indices, "decord"), "decord"
    return torch.stack([c.to(ctx.device) for c in clips]), backend


def section_train(rec: Recorder, ctx: Context) -> None:
    from benchmarks.bench_train import step_functions
    from rlt.pipeline import RLTConfig

    _, paths = video_manifest(ctx, "720p")
    paths = (paths * math.ceil(ctx.sizes.train_clips / len(paths)))[: ctx.sizes.train_clips]
    log(f"decoding {len(paths)} clips from 720p videos")
    frames_BTHWC, backend = decoded_batch(ctx, paths)
    rlt = RLTConfig()
    packs = {
        "rlt": rlt.tokenize(frames_BTHWC),
        "dense": dataclasses.replace(rlt, drop_policy="none").tokenize(frames_BTHWC),
    }
    kept, dense = packs["rlt"].num_tokens, packs["dense"].num_tokens
    labels = (torch.arange(len(paths)) % 2).to(ctx.device)
    rec.figures.update(model=ctx.preset, clips=len(paths), decoder=backend, tokens_rlt=kept, tokens_dense=dense)
    rec.figures["token_ratio"] = round(dense / kept, 3)
    rec.save()

    torch.manual_seed(0)
    train_step, infer_step = step_functions(vit(ctx), {name: (p, labels) for name, p in packs.items()}, ctx.device)

    for mode, step in (("train", train_step), ("infer", infer_step)):
        if rec.over_budget():
            rec.skip(mode)
            continue
        log(f"{mode}: {ctx.sizes.train_steps} steps each on RLT and dense tokens, alternating")
        for name in packs:  # warm-up
            for _ in range(2):
                step(name)
        times: dict[str, list[float]] = {name: [] for name in packs}
        for _ in range(ctx.sizes.train_steps):
            for name in packs:  # alternating, so drift in the machine's speed hits both alike
                ctx.sync()
                started = time.perf_counter()
                step(name)
                ctx.sync()
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(t) for name, t in times.items()}
        speedup = median["dense"] / median["rlt"]
        rec.figures[mode] = {
            **{f"{name}_ms": round(1e3 * s, 2) for name, s in median.items()},
            **{f"{name}_clips_per_s": round(len(paths) / s, 1) for name, s in median.items()},
            "rlt_tokens_per_s": round(kept / median["rlt"]),
            "dense_tokens_per_s": round(dense / median["dense"]),
            "speedup": round(speedup, 3),
        }
        rec.goal(f"train: {mode} speed-up / token ratio ({ctx.preset})", round(speedup / (dense / kept), 3), ">=", 0.9)
