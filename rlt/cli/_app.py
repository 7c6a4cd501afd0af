"""`rlt-prep` commands. Each parses options, calls a stage, and prints what happened."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rlt.pipeline import BACKENDS, ClipSampling, OnlinePipeline, RLTConfig
from rlt.samples import make_samples

app = typer.Typer(
    name="rlt-prep",
    help="GPU video data pipeline for training video transformers with Run-Length Tokenization.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

Backend = Annotated[str, typer.Option(help=f"decoder: {' | '.join(BACKENDS)}")]


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
        backend=backend,  # type: ignore[arg-type]
        on_error="skip",
    )
    table = Table("video", "clip", "tokens kept", "of dense", "kept %", "mean run (tubelets)")
    kept = dense = 0
    for batch in pipeline:
        tokens = batch.tokens
        for b in range(tokens.num_clips):
            clip = tokens.clip(b)
            n, d = clip.num_tokens, clip.dense_tokens
            kept, dense = kept + n, dense + d
            table.add_row(
                batch.videos[b],
                str(batch.clip_ids[b]),
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
    for error in pipeline.errors:
        console.print(f"  [red]failed[/red] {error}")
    console.rule(f"done in {time.perf_counter() - started:.1f}s")
    if pipeline.errors:
        raise typer.Exit(code=1)


@app.command()
def version() -> None:
    """Prints the installed version."""
    from rlt import __version__

    console.print(__version__)
