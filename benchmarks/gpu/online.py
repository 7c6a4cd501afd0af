"""Section online: training on raw videos (OnlinePipeline, DALI) against training on them tokenized beforehand."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu._context import DENSE_PER_CLIP, Context, Recorder, log, ratio
from benchmarks.gpu._videos import video_manifest
from benchmarks.gpu.tokenize_job import job_batch


def steady_rate(run: Path, called_at: float, warm: int) -> tuple[dict[str, Any], tuple[float, float]]:
    """Clips/s over the steps after ``warm`` (from the run's metrics.jsonl) and that window in unix time."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    if len(steps) <= warm:
        raise RuntimeError(f"{run}: {len(steps)} steps, not more than the {warm} warm-up steps")
    timed = steps[warm:]
    seconds = timed[-1]["seconds"] - steps[warm - 1]["seconds"] if warm else timed[-1]["seconds"]
    clips, tokens = sum(s["clips"] for s in timed), sum(s["tokens"] for s in timed)
    start = called_at + (steps[warm - 1]["seconds"] if warm else 0.0)
    figures = {
        "steps_timed": len(timed),
        "clips": clips,
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "kept_ratio": round(statistics.fmean(s["kept_ratio"] for s in timed), 4),
    }
    return figures, (start, called_at + timed[-1]["seconds"])


def section_online(rec: Recorder, ctx: Context) -> None:
    from rlt.pipeline import ClipSampling
    from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
    from rlt.train import TrainConfig, train

    manifest, paths = video_manifest(ctx, "720p")
    vpb, warm = ctx.sizes.online_videos_per_batch, ctx.sizes.warm_steps
    cores = os.cpu_count() or 1
    config = TrainConfig(
        preset=ctx.preset,
        epochs=None,
        max_steps=ctx.sizes.online_steps + warm,
        lr=1e-4,
        videos_per_batch=vpb,
        backend=ctx.dali,
        checkpoint_every=10**9,  # only the final save, after the timed steps
        keep_checkpoints=1,
        num_workers=min(4, cores) if ctx.cuda else 0,
        max_tokens=DENSE_PER_CLIP * vpb,  # set below for the offline run, once tokens per clip are known
    )
    rec.figures.update(
        model=ctx.preset, videos=len(paths), videos_per_batch=vpb, steps=config.max_steps, warm_steps=warm
    )
    with ctx.scratch("online") as work:
        log(f"online: train {config.max_steps} steps from raw 720p videos, {ctx.dali}, {vpb} videos per batch")
        called_at = time.time()
        train(manifest, work / "run_online", config, online=True, device=ctx.device)
        online, window = steady_rate(work / "run_online", called_at, warm)
        online["utilisation"] = ctx.sampler.window(*window)
        rec.figures["online"] = online
        busy = online["utilisation"]["gpu_mean_pct"]
        rec.goal("online: GPU busy while training online (mean)", busy, ">=", 80, "%")
        if rec.over_budget():
            rec.skip("the offline run")
            return

        log("offline: tokenize the same videos (4 clips each), then train from the dataset")
        sampling = ClipSampling(clips_per_video=4)
        tokenize_config = TokenizeConfig(shard_size=max(1, len(paths) // cores), sampling=sampling, backend=ctx.dali)
        summary = tokenize_dataset(manifest, work / "dataset", tokenize_config, workers=cores, **job_batch())
        # The same clips per micro-batch on average as online, so batch size does not decide the race.
        per_clip = summary.tokens / max(summary.clips, 1)
        config = dataclasses.replace(config, max_tokens=max(DENSE_PER_CLIP, math.ceil(vpb * per_clip)))
        rec.figures["offline_dataset"] = {
            "clips": summary.clips,
            "tokenize_seconds": round(summary.seconds, 1),
            "max_tokens": config.max_tokens,
        }
        called_at = time.time()
        train(work / "dataset", work / "run_offline", config, device=ctx.device)
        offline, window = steady_rate(work / "run_offline", called_at, warm)
        offline["utilisation"] = ctx.sampler.window(*window)
        rec.figures["offline"] = offline
        rec.figures["online_over_offline_clips_per_s"] = ratio(online["clips_per_s"], offline["clips_per_s"])
        rec.save()
