"""`rlt-prep` commands. Each parses options, calls a stage, and prints what happened."""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlt._checks import check_choice
from rlt.dataset import open_dataset
from rlt.pipeline import BACKENDS, ClipSampling, FrameAugment, OnlinePipeline, RLTConfig
from rlt.samples import make_samples
from rlt.tokenize_offline import RAY_AFTER, JobSummary, TokenizeConfig, tokenize_dataset
from rlt.tokenize_offline import Progress as JobProgress
from rlt.train import NO_AUGMENT, AugmentConfig, TrainConfig, TrainSummary, evaluate, train

app = typer.Typer(
    name="rlt-prep",
    help="GPU video data pipeline for training video transformers with Run-Length Tokenization.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

Backend = Annotated[
    str,
    typer.Option(
        help=f"decoder: {' | '.join(BACKENDS)}, or a chain such as dali,decord (each video goes to the first "
        "that takes its codec; auto: NVDEC where there is a GPU, then the fastest CPU decoder installed)"
    ),
]

# The options that decide a dataset's bytes, shared by `tokenize` and `serve --watch` (built by
# `tokenize_config`), and those of where the job runs.
DatasetFormat = Annotated[str, typer.Option("--format", help="arrow (fastest to write and read) | zarr (2x smaller)")]
ShardSize = Annotated[int, typer.Option(help="videos per shard")]
ClipsPerVideo = Annotated[int, typer.Option(help="clips per video (K)")]
Threshold = Annotated[float, typer.Option(help="RLT threshold (ImageNet-normalised units)")]
Compare = Annotated[str, typer.Option(help="previous | run_start")]
NumFrames = Annotated[int, typer.Option(help="frames per clip")]
FrameInterval = Annotated[int, typer.Option(help="frames between a clip's frames")]
Size = Annotated[int, typer.Option(help="short side and centre crop, in pixels")]
RayAddress = Annotated[
    str | None, typer.Option(help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
]
Workers = Annotated[int | None, typer.Option(help="shards at once (default: the usable cores)")]
GpusPerTask = Annotated[
    float | None, typer.Option(help="GPU fraction per task (default: 0.25 where the cluster has GPUs)")
]
VideosPerBatch = Annotated[int, typer.Option(help="videos decoded together in a task (one DALI batch)")]


def tokenize_config(
    format: str,
    shard_size: int,
    clips_per_video: int,
    threshold: float,
    compare: str,
    num_frames: int,
    frame_interval: int,
    size: int,
    backend: str,
) -> TokenizeConfig:
    """The offline job's configuration from the command line's options."""
    return TokenizeConfig(
        storage=format,  # type: ignore[arg-type]
        shard_size=shard_size,
        sampling=ClipSampling(
            num_frames=num_frames, frame_interval=frame_interval, clips_per_video=clips_per_video, size=size, crop=size
        ),
        rlt=RLTConfig(threshold=threshold, compare=compare),  # type: ignore[arg-type]
        backend=backend,
    )


@app.callback()
def _main() -> None:
    """Keeps `rlt-prep COMMAND` a group even while it has one command."""


@app.command()
def samples(
    out: Annotated[Path, typer.Argument(help="folder for the videos and manifest.csv")],
    videos: Annotated[int, typer.Option(help="how many videos")] = 8,
    frames: Annotated[int, typer.Option(help="frames per video")] = 96,
    codec: Annotated[str, typer.Option(help="h264 | vp9 | mjpeg")] = "h264",
    seed: int = 0,
) -> None:
    """Writes sample videos with known content and their manifest."""
    manifest = make_samples(out, num_videos=videos, num_frames=frames, codec=codec, seed=seed)  # type: ignore[arg-type]
    console.print(f"wrote {videos} videos and {manifest}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="working folder: sample videos and outputs")] = Path("rlt-demo"),
    videos: Annotated[int, typer.Option(help="sample videos to generate")] = 8,
    backend: Backend = "auto",
    threshold: Annotated[float, typer.Option(help="RLT threshold (ImageNet-normalised units)")] = 0.1,
    train_epochs: Annotated[int, typer.Option(help="epochs of the tiny training run at the end")] = 10,
) -> None:
    """Runs the whole product end to end on sample videos it generates, with embedded defaults."""
    started = time.perf_counter()
    console.rule("[bold]1. sample videos")
    manifest = make_samples(out / "videos", num_videos=videos)
    console.print(f"{videos} H.264 videos (static background, moving squares) and {manifest}")

    console.rule("[bold]2. online pipeline: decode, 16x4 clips at 224, RLT")
    pipeline = OnlinePipeline(
        manifest,
        sampling=ClipSampling(clips_per_video=2),
        rlt=RLTConfig(threshold=threshold),
        backend=backend,
        on_error="skip",
    )
    table = Table("video", "clip", "tokens kept", "of dense", "kept %", "mean run (tubelets)")
    kept = dense = 0
    for batch in pipeline:
        for b in range(batch.num_clips):
            clip = batch.clip(b)
            n, d = clip.num_tokens, clip.dense_tokens
            kept, dense = kept + n, dense + d
            table.add_row(
                clip.videos[0] if clip.videos else "",
                str(clip.clip_ids[0] if clip.clip_ids else b),
                str(n),
                str(d),
                f"{100 * n / d:.1f}",
                f"{clip.lengths.double().mean():.2f}",
            )
    console.print(table)
    console.print(
        f"backend {pipeline.backend}: {kept} of {dense} tokens kept ({100 * kept / max(dense, 1):.1f}%), "
        f"{len(pipeline.errors)} videos failed"
    )

    console.rule("[bold]3. offline job: rlt-prep tokenize on an embedded local Ray")
    dataset = out / "dataset"
    config = TokenizeConfig(
        shard_size=max(videos // 4, 1),
        sampling=ClipSampling(clips_per_video=2),
        rlt=RLTConfig(threshold=threshold),
        backend=backend,
    )
    summary = _run_tokenize(manifest, dataset, config, None, None, overwrite=True)
    _print_summary(summary)
    reread = open_dataset(dataset, columns=["num_tokens"])
    console.print(f"read back with rlt.open_dataset: {len(reread)} clips, checksums verified")

    console.rule("[bold]4. rlt-prep stats")
    from rlt.stats import dataset_stats, print_report, write_html

    report = dataset_stats(dataset)
    print_report(report, console)
    console.print(f"HTML report: {write_html(report, out / 'stats.html')}")

    console.rule("[bold]5. rlt-prep train: the tiny ViT on the kept tokens, then rlt-prep eval")
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    result = train(dataset, run, TrainConfig(preset="tiny", epochs=train_epochs, max_tokens=2048), show_progress=True)
    _print_train(result)
    scores = evaluate(run, dataset)
    console.print(
        f"eval on the training clips (a demo, not a held-out score): "
        f"top-1 {scores.top1:.2f} over {scores.videos} videos"
    )
    console.rule(f"done in {time.perf_counter() - started:.1f}s")
    if pipeline.errors or summary.failed:
        raise typer.Exit(code=1)


@contextmanager
def _bad_input_exits() -> Iterator[None]:
    """Bad options or inputs print the error, naming the file and the reason, and exit 2."""
    try:
        yield
    # ConfigMismatchError is a ValueError; OutputLockedError, CorruptShardError and a full or
    # read-only disk are OSErrors, whose messages name the file.
    except (ValueError, OSError) as e:
        # One line, however long the paths in it, and never read as rich markup.
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(code=2) from e


# Exit status of `tokenize` when the dataset is complete but some videos could not be decoded.
EXIT_SOME_FAILED = 3


@app.command()
def tokenize(
    manifest: Annotated[
        str, typer.Argument(help="CSV of path,label (paths relative to its folder); a path or a URL (s3://...)")
    ],
    out: Annotated[
        str, typer.Argument(help="dataset folder or URL (s3://bucket/prefix); nothing is written outside it")
    ],
    format: DatasetFormat = "arrow",
    shard_size: ShardSize = 64,
    clips_per_video: ClipsPerVideo = 1,
    threshold: Threshold = 0.1,
    compare: Compare = "previous",
    num_frames: NumFrames = 16,
    frame_interval: FrameInterval = 4,
    size: Size = 224,
    backend: Backend = "auto",
    ray_address: RayAddress = None,
    workers: Workers = None,
    gpus_per_task: GpusPerTask = None,
    videos_per_batch: VideosPerBatch = 8,
    ray_after: Annotated[
        float,
        typer.Option(
            help="without --ray-address: seconds of work on this process's threads before an embedded Ray "
            "takes the shards left (0: Ray starts at once, the threads fill its start-up; a short job "
            "ends sooner with a few seconds here; one worker never starts Ray)"
        ),
    ] = RAY_AFTER,
    overwrite: Annotated[bool, typer.Option(help="replace a dataset made with other options")] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="decode again the videos in OUT/errors.jsonl (their shards are rewritten)")
    ] = False,
) -> None:
    """Decodes and tokenizes every video once, into a sharded Zarr or Arrow dataset, on Ray.

    Safe to kill and re-run: finished shards are kept, unfinished ones redone. Exits 3 when the
    dataset is complete but some videos failed (listed in OUT/errors.jsonl).
    """
    with _bad_input_exits():
        config = tokenize_config(
            format, shard_size, clips_per_video, threshold, compare, num_frames, frame_interval, size, backend
        )
        summary = _run_tokenize(
            manifest, out, config, ray_address, workers, overwrite, gpus_per_task, videos_per_batch, ray_after,
            retry_failed,
        )  # fmt: skip
    _print_summary(summary)
    if summary.failed:
        raise typer.Exit(code=EXIT_SOME_FAILED)


def _run_tokenize(
    manifest: str | Path,
    out: str | Path,
    config: TokenizeConfig,
    ray_address: str | None,
    workers: int | None,
    overwrite: bool,
    gpus_per_task: float | None = None,
    videos_per_batch: int = 8,
    ray_after: float = RAY_AFTER,
    retry_failed: bool = False,
) -> JobSummary:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("tokenize"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos {task.fields[rate]} | {task.fields[clips]} clips | kept {task.fields[kept]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("tokenize", total=None, rate="-", clips=0, kept="-")
        started = time.perf_counter()
        first: list[int] = []

        def update(p: JobProgress) -> None:
            if not first:
                first.append(p.videos_done)  # videos finished by an earlier run do not count towards the rate
            rate = (p.videos_done - first[0]) / max(time.perf_counter() - started, 1e-9)
            kept = f"{100 * p.tokens / p.dense_tokens:.1f}%" if p.dense_tokens else "-"
            bar.update(
                task, total=p.videos_total, completed=p.videos_done, rate=f"{rate:.1f}/s", clips=p.clips, kept=kept
            )

        return tokenize_dataset(
            manifest,
            out,
            config,
            ray_address=ray_address,
            workers=workers,
            overwrite=overwrite,
            gpus_per_task=gpus_per_task,
            videos_per_batch=videos_per_batch,
            ray_after=ray_after,
            retry_failed=retry_failed,
            on_progress=update,
        )


def _print_summary(s: JobSummary) -> None:
    table = Table("dataset", str(s.out))
    table.add_row("videos", f"{s.videos} ({s.failed} failed)")
    table.add_row("clips", str(s.clips))
    table.add_row("tokens kept", f"{s.tokens} of {s.dense_tokens} ({100 * s.kept_ratio:.1f}%)")
    table.add_row("on disk", f"{s.bytes / 1e6:.1f} MB in {s.shards} shards ({s.shards_written} written by this run)")
    table.add_row("time", f"{s.seconds:.1f}s")
    console.print(table)
    if s.failed:
        console.print(f"[yellow]{s.failed} videos failed[/yellow]: see {s.out}/errors.jsonl")


@app.command()
def stats(
    dataset: Annotated[
        str | None, typer.Argument(help="a dataset written by `rlt-prep tokenize`: its folder or URL (s3://...)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON here")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write a self-contained HTML report here")] = None,
    by: Annotated[str | None, typer.Option(help="group the kept tokens by: label")] = "label",
    videos: Annotated[Path | None, typer.Option(help="calibrate on raw videos of this manifest instead")] = None,
    sample: Annotated[int, typer.Option(help="videos sampled with --videos")] = 32,
    thresholds: Annotated[str, typer.Option(help="comma-separated thresholds for --videos")] = "0.05,0.1,0.2",
    target_reduction: Annotated[
        float | None, typer.Option(help="with --videos: find the threshold that removes this share of tokens")
    ] = None,
    compare: Annotated[str, typer.Option(help="previous | run_start (with --videos)")] = "previous",
    backend: Backend = "auto",
) -> None:
    """Reports token reduction, run lengths and predicted speed-up of a dataset, or calibrates the
    threshold on raw videos (--videos)."""
    from rlt.stats import dataset_stats, print_report, print_sweep, threshold_sweep, write_html

    if (dataset is None) == (videos is None):
        console.print("[red]error:[/red] give either DATASET or --videos MANIFEST")
        raise typer.Exit(code=2)
    with _bad_input_exits():
        if videos is not None:
            report = threshold_sweep(
                videos,
                thresholds=tuple(float(t) for t in thresholds.split(",") if t.strip()),
                sample=sample,
                target_reduction=target_reduction,
                rlt=RLTConfig(compare=compare),  # type: ignore[arg-type]
                backend=backend,
            )
            print_sweep(report, console)
        elif dataset is not None:
            if by not in (None, "label"):
                raise ValueError(f"--by must be 'label', got {by!r}")
            report = dataset_stats(dataset, by=by)
            print_report(report, console)
            if html_out:
                console.print(f"HTML report: {write_html(report, html_out)}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        console.print(f"JSON report: {json_out}")


@app.command("train")
def train_command(
    dataset: Annotated[
        str | None, typer.Argument(help="a dataset written by `rlt-prep tokenize`: its folder or URL (s3://...)")
    ] = None,
    out: Annotated[Path, typer.Option(help="run folder: metrics.jsonl, ckpt/, config.json")] = Path("run"),
    online: Annotated[
        Path | None, typer.Option(help="train from raw videos of this manifest instead (decoded and tokenized online)")
    ] = None,
    preset: Annotated[str, typer.Option(help="tiny | vit_s | vit_b | vit_l | vit_h")] = "tiny",
    epochs: Annotated[int | None, typer.Option(help="passes over the data (default: 1 unless --max-steps)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate (of the head)")] = 1e-3,
    min_lr: Annotated[float, typer.Option(help="learning rate at the end of the cosine")] = 1e-6,
    warmup_steps: Annotated[int, typer.Option(help="optimiser steps of linear warmup")] = 0,
    weight_decay: float = 0.05,
    layer_decay: Annotated[float, typer.Option(help="lr ratio of each layer to the one above")] = 0.75,
    grad_clip: Annotated[float | None, typer.Option(help="max gradient norm")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="token budget of a micro-batch (per rank)")] = 16384,
    tokens_per_step: Annotated[
        int | None, typer.Option(help="gather micro-batches until a step has this many tokens (over all ranks)")
    ] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA) | bf16 | fp32")] = "auto",
    run_length_embedding: Annotated[bool, typer.Option(help="embed each token's run length")] = False,
    seed: int = 0,
    workers: Annotated[int, typer.Option(help="loader processes")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 100,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its newest checkpoint")] = False,
    init: Annotated[
        Path | None,
        typer.Option(
            help="start from these weights: a Hugging Face VideoMAE folder (config.json, model.safetensors) or "
            "its .safetensors file; a VideoMAE / VideoMAE-v2 .pth as their scripts save it; the RLT authors' "
            "checkpoints; a run folder or step-*.pt of rlt-prep train. They must be of --preset's width, depth "
            "and heads; they set the layer-norm epsilons, pooling, layer scale and learned length embedding. A "
            "head for another number of classes, or none, is started afresh"
        ),
    ] = None,
    num_frames: Annotated[int, typer.Option(help="--online: frames per clip")] = 16,
    frame_interval: Annotated[int, typer.Option(help="--online: frames between a clip's frames")] = 4,
    size: Annotated[int, typer.Option(help="--online: short side and centre crop")] = 224,
    threshold: Annotated[float, typer.Option(help="--online: RLT threshold")] = 0.1,
    drop_policy: Annotated[str, typer.Option(help="--online: rlt | none | random")] = "rlt",
    videos_per_batch: Annotated[int, typer.Option(help="--online: videos per micro-batch")] = 4,
    backend: Backend = "auto",
    recipe: Annotated[
        str,
        typer.Option(
            help="none: the clips as they come; videomae: VideoMAE's fine-tuning augmentation (flip, CutMix 1.0, "
            "label smoothing 0.1, erasing 0.25, drop path 0.1); the options below change single parts of it"
        ),
    ] = "none",
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="flip half the clips (exact on tokens)")] = None,
    crop: Annotated[
        int | None,
        typer.Option(
            help="train on random crops of this side in pixels, on the patch grid, of clips stored larger (e.g. 224 "
            "of 256); the model is built at this size and eval takes the centre crop"
        ),
    ] = None,
    cutmix: Annotated[float | None, typer.Option(help="CutMix alpha on the patch grid; 0 is off")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="label smoothing of the targets")] = None,
    erase_prob: Annotated[float | None, typer.Option(help="random erasing of tokens, per clip")] = None,
    drop_path: Annotated[float | None, typer.Option(help="stochastic depth rate")] = None,
    frame_crop: Annotated[
        int | None,
        typer.Option(
            help="--online: a random resized crop of this side from the frames decoded at --size (their short "
            "side, uncropped), in pixels before RLT (VideoMAE: 224 from 256); eval resizes to it"
        ),
    ] = None,
    one_clip_per_video: Annotated[
        bool | None,
        typer.Option(
            "--one-clip-per-video/--all-clips",
            help="a dataset: train on one of each video's stored clips per epoch, drawn anew every epoch "
            "(--online always does)",
        ),
    ] = None,
) -> None:
    """Trains a ViT on run-length tokens (AdamW, layer decay, warmup + cosine, bf16 on CUDA).

    Runs on all ranks under `torchrun --nproc-per-node N -m rlt train ...`.
    """
    data: str | Path
    if online is not None and dataset is None:
        data = online
    elif dataset is not None and online is None:
        data = dataset
    else:
        console.print("[red]error:[/red] give either DATASET or --online MANIFEST")
        raise typer.Exit(code=2)
    with _bad_input_exits():
        check_choice("recipe", recipe, ("none", "videomae"))
        given: dict[str, Any] = {
            "flip": flip,
            "crop": crop,
            "cutmix": cutmix,
            "label_smoothing": label_smoothing,
            "erase_prob": erase_prob,
            "one_clip_per_video": one_clip_per_video,
        }
        augment = replace(
            AugmentConfig() if recipe == "videomae" else NO_AUGMENT, **{k: v for k, v in given.items() if v is not None}
        )
        if drop_path is None:
            drop_path = 0.1 if recipe == "videomae" else 0.0
        config = TrainConfig(
            preset=preset,
            epochs=epochs if epochs is not None or max_steps is not None else 1,
            max_steps=max_steps,
            lr=lr,
            min_lr=min_lr,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            layer_decay=layer_decay,
            grad_clip=grad_clip,
            max_tokens=max_tokens,
            tokens_per_step=tokens_per_step,
            precision=precision,  # type: ignore[arg-type]
            run_length_embedding=run_length_embedding,
            seed=seed,
            num_workers=workers,
            videos_per_batch=videos_per_batch,
            backend=backend,
            checkpoint_every=checkpoint_every,
            drop_path=drop_path,
            augment=None if augment == NO_AUGMENT else augment,
        )
        # With --frame-crop the frames are decoded whole, and cropped before RLT; --flip flips tokens.
        crop_at = None if frame_crop is not None else size
        sampling = ClipSampling(num_frames=num_frames, frame_interval=frame_interval, size=size, crop=crop_at)
        rlt = RLTConfig(threshold=threshold, drop_policy=drop_policy)  # type: ignore[arg-type]
        result = train(
            data,
            out,
            config,
            online=online is not None,
            sampling=sampling,
            rlt=rlt,
            frame_augment=FrameAugment(size=frame_crop, flip=False) if frame_crop is not None else None,
            resume=resume,
            init=init,
            show_progress=True,
        )
    _print_train(result)


def _print_train(result: TrainSummary) -> None:
    metrics_path = result.out / "metrics.jsonl"
    if not metrics_path.exists():  # another rank of a distributed run: rank 0 reports
        return
    steps = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    table = Table("run", str(result.out))
    table.add_row("steps", f"{result.steps} ({result.epoch} epochs done)")
    if steps:
        # Means over up to 10 steps, since one step's loss is noisy.
        first, last = steps[:10], steps[-10:]
        table.add_row(
            "loss",
            f"{_mean(first, 'loss'):.4f} over the first {len(first)} steps, {_mean(last, 'loss'):.4f} over the "
            f"last {len(last)} (train accuracy {_mean(last, 'accuracy'):.2f})",
        )
        seconds = sum(m["tokens"] / m["tokens_per_s"] for m in last)
        table.add_row(
            "throughput",
            f"{sum(m['tokens'] for m in last) / seconds:.0f} tokens/s, "
            f"{sum(m['clips'] for m in last) / seconds:.1f} clips/s (last {len(last)} steps)",
        )
        table.add_row("kept tokens", f"{100 * _mean(steps, 'kept_ratio'):.1f}%")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("time", f"{result.seconds:.1f}s")
    console.print(table)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@app.command("eval")
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="a run folder (its newest checkpoint) or a step-*.pt file")],
    data: Annotated[
        str, typer.Argument(help="a dataset written by `rlt-prep tokenize` (its folder or URL), or a manifest CSV")
    ],
    clips_per_video: Annotated[int | None, typer.Option(help="manifest: clips per video (temporal views)")] = None,
    spatial_crops: Annotated[
        int, typer.Option(help="views of each clip along its longer side (VideoMAE tests with 3)")
    ] = 1,
    compare_dense: Annotated[
        bool, typer.Option(help="also run every token of the same clips: accuracy of both and the speed-up of RLT")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="token budget of a batch")] = 16384,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the scores as JSON here")] = None,
    backend: Backend = "auto",
) -> None:
    """Top-1 / top-5 of a checkpoint, averaging the class probabilities of each video's clips."""
    run = functools.partial(
        evaluate,
        checkpoint,
        data,
        clips_per_video=clips_per_video,
        spatial_crops=spatial_crops,
        max_tokens=max_tokens,
        backend=backend,
    )
    with _bad_input_exits():
        results = {"rlt": run()}
        if compare_dense:
            results["dense"] = run(tokens="dense")
    result = results["rlt"]
    table = Table("eval", *(f"{name} tokens" for name in results) if compare_dense else [result.checkpoint])
    table.add_row("top-1", *(f"{100 * r.top1:.2f}% of {r.videos} videos" for r in results.values()))
    table.add_row("top-5", *(f"{100 * r.top5:.2f}%" for r in results.values()))
    table.add_row("clip top-1", *(f"{100 * r.clip_top1:.2f}% of {r.clips} views" for r in results.values()))
    table.add_row("tokens", *(f"{r.tokens} ({r.tokens / max(r.clips, 1):.0f} a view)" for r in results.values()))
    table.add_row("model", *(f"{r.clips / max(r.model_seconds, 1e-9):.1f} views/s" for r in results.values()))
    if result.failed:
        table.add_row("failed", f"{result.failed} videos could not be decoded")
    console.print(table)
    if compare_dense:
        speedup = results["dense"].model_seconds / max(result.model_seconds, 1e-9)
        console.print(f"RLT: {speedup:.2f}x the dense throughput in the model, on {result.checkpoint}")
    if json_out:
        payload = {name: r.to_dict() for name, r in results.items()} if compare_dense else result.to_dict()
        json_out.write_text(json.dumps(payload, indent=1) + "\n")


@app.command()
def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="a dataset written by `rlt-prep tokenize`; with --format hf, a run folder or step-*.pt file of "
            "`rlt-prep train`"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="new folder for the files")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="a dataset's rows: parquet (zstd: DuckDB, Polars, Spark) | arrow-stream (Arrow IPC streams: HF "
            "datasets); a trained model: hf (a transformers VideoMAEForVideoClassification folder)",
        ),
    ],
    columns: Annotated[str | None, typer.Option(help="comma-separated fields to write (default: all)")] = None,
) -> None:
    """Writes a dataset's rows as Parquet or Arrow IPC stream files, one per shard, for other tools; or a
    trained model as a Hugging Face VideoMAE checkpoint (--format hf)."""
    from rlt.dataset import export_dataset
    from rlt.train import export_hf

    is_dataset = (source / "index.json").is_file()
    with _bad_input_exits():
        if format == "hf":
            if is_dataset or columns is not None:
                raise ValueError(
                    f"{source}: --format hf exports a trained model (a run folder or a step-*.pt file), not a "
                    "dataset's rows"
                )
            export_hf(source, out)
            console.print(f"exported {source} as a Hugging Face VideoMAE model in {out}", soft_wrap=True)
            return
        if not is_dataset and (source.suffix == ".pt" or (source / "ckpt").is_dir()):
            raise ValueError(f"{source} is a training run: export a model with --format hf")
        summary = export_dataset(
            source,
            out,
            format=format,  # type: ignore[arg-type]
            columns=[c.strip() for c in columns.split(",")] if columns is not None else None,
        )
    console.print(
        f"exported {summary.rows} clips into {summary.files} {summary.format} files, "
        f"{summary.bytes / 1e6:.1f} MB, in {summary.out}",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def version() -> None:
    """Prints the installed version."""
    from rlt import __version__

    console.print(__version__)
