"""Section tokenize: the offline job (tokenize_dataset on embedded Ray) with DALI against decord on all cores."""

from __future__ import annotations

import inspect
import os
from typing import Any

from benchmarks.gpu._context import FULL, Context, Recorder, log, ratio
from benchmarks.gpu._videos import video_manifest


def job_batch() -> dict[str, Any]:
    """Videos decoded together inside a shard (one DALI batch), where this rlt's tokenize job takes it."""
    from rlt.tokenize_offline import tokenize_dataset

    return {"videos_per_batch": 8} if "videos_per_batch" in inspect.signature(tokenize_dataset).parameters else {}


def section_tokenize(rec: Recorder, ctx: Context) -> None:
    import logging

    import ray

    from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset

    manifest, paths = video_manifest(ctx, "720p")
    cores = os.cpu_count() or 1
    shard_size = max(1, len(paths) // cores)  # at least as many shards as workers
    batch = job_batch()
    rec.figures.update(videos=len(paths), workers=cores, shard_size=shard_size, **batch)
    warm = ctx.sizes is FULL
    with ctx.scratch("tokenize") as work:
        # Ray started here, once: its start-up is not the tokenizer's speed.
        ray.init(
            num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, object_store_memory=200 * 2**20
        )
        try:
            rec.figures["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            # DALI tasks ask for the job's default GPU share, then for 1/cores of it (a task on every
            # core, all on the one GPU); decord tasks for none, so every core runs one.
            runs = [(ctx.dali, ctx.dali, None), ("decord", "decord", 0.0)]
            if ctx.cuda:  # a GPU share needs a GPU
                runs.append((f"{ctx.dali}_all_cores", ctx.dali, 1 / cores))
            for key, backend, gpus_per_task in runs:
                if rec.over_budget():
                    rec.skip(f"tokenize with {key}")
                    continue
                config = TokenizeConfig(shard_size=shard_size, backend=backend)
                options: dict[str, Any] = {"workers": cores, "gpus_per_task": gpus_per_task, **batch}
                if warm:  # Ray's workers, their imports and CUDA contexts, on one video per worker first
                    (work / "warm.csv").write_text("path,label\n" + "".join(f"{p},0\n" for p in paths[:cores]))
                    tokenize_dataset(work / "warm.csv", work / f"warm_{key}", config, **options)
                share = "the job's default" if gpus_per_task is None else gpus_per_task
                log(f"tokenize {len(paths)} videos with {backend}, {cores} workers, GPU share per task: {share}")
                summary = tokenize_dataset(manifest, work / key, config, **options)
                rec.figures[key] = {
                    "seconds": round(summary.seconds, 2),
                    "videos_per_s": round(summary.videos / summary.seconds, 2),
                    "clips": summary.clips,
                    "failed": summary.failed,
                    "kept_ratio": round(summary.kept_ratio, 4),
                    "gpus_per_task": share,
                    "ray_workers_warm": warm,
                }
                rec.save()
            for key, what in ((ctx.dali, ""), (f"{ctx.dali}_all_cores", " with a task on every core")):
                if key in rec.figures and "decord" in rec.figures:
                    value = ratio(rec.figures[key]["videos_per_s"], rec.figures["decord"]["videos_per_s"])
                    rec.figures[f"{key.replace(ctx.dali, 'dali')}_over_decord_videos_per_s"] = value
                    log(f"  tokenize: {ctx.dali}{what} / decord on all cores = {value}x (no goal set)")
        finally:
            ray.shutdown()
