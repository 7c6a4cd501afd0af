"""`rlt-prep serve`: tokenization as an HTTP service, and watch mode (see rlt/serve)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rlt.cli._app import (
    Backend,
    ClipsPerVideo,
    Compare,
    DatasetFormat,
    FrameInterval,
    GpusPerTask,
    NumFrames,
    RayAddress,
    ShardSize,
    Size,
    Threshold,
    VideosPerBatch,
    Workers,
    _bad_input_exits,
    app,
    tokenize_config,
)
from rlt.serve._config import TOKEN_ENV, ServeConfig, WatchConfig


@app.command("serve")
def serve_command(
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="with --watch: the dataset folder or URL new videos are tokenized into", show_default=False
        ),
    ] = None,
    watch: Annotated[
        str | None,
        typer.Option(
            help="a manifest, a folder of videos or an object-store prefix: new videos are tokenized into "
            "DATASET as they appear (in a folder, a video's class is its subfolder's name)",
            show_default=False,
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="with --watch: seconds between scans of SOURCE")] = 2.0,
    retry_failed: Annotated[
        bool, typer.Option(help="with --watch: try the videos of DATASET/errors.jsonl again (into new shards)")
    ] = False,
    host: Annotated[str, typer.Option(help="address to bind; any but 127.0.0.1/localhost needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    allow_root: Annotated[
        str | None, typer.Option(help="folder whose files requests may name by path= (default: no path requests)")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar=TOKEN_ENV, help="bearer token every request but /healthz must carry", show_default=False),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest upload in MiB; larger ones get 413")] = 512,
    ray_address: RayAddress = None,
    replicas: Annotated[
        int | None, typer.Option(help="tokenizer replicas, one decoder each (default: one per GPU, or one)")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="concurrent requests decoded together on a replica")] = 8,
    drain: Annotated[
        float, typer.Option(help="on SIGTERM, seconds the running shards get to commit, then the requests to finish")
    ] = 30.0,
    format: DatasetFormat = "arrow",
    shard_size: ShardSize = 64,
    clips_per_video: ClipsPerVideo = 1,
    threshold: Threshold = 0.1,
    compare: Compare = "previous",
    num_frames: NumFrames = 16,
    frame_interval: FrameInterval = 4,
    size: Size = 224,
    backend: Backend = "auto",
    workers: Workers = None,
    gpus_per_task: GpusPerTask = None,
    videos_per_batch: VideosPerBatch = 8,
) -> None:
    """Serves POST /v1/tokenize (a video's bytes, or path= under --allow-root, in; its clips' tokens
    as an Arrow IPC stream out), GET /v1/status, /healthz, /metrics and a status page at /, until
    SIGINT or SIGTERM, which drain.

    With DATASET --watch SOURCE, also tokenizes SOURCE's new videos into DATASET as they appear,
    publishing a new index generation per round (the dataset options are `rlt-prep tokenize`'s).
    """
    from rlt.serve import serve

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with _bad_input_exits():
        if (dataset is None) != (watch is None):
            raise ValueError("watch mode takes both DATASET and --watch SOURCE: rlt-prep serve DATASET --watch SOURCE")
        watching = None
        if dataset is not None and watch is not None:
            config = tokenize_config(
                format, shard_size, clips_per_video, threshold, compare, num_frames, frame_interval, size, backend
            )
            watching = WatchConfig(
                dataset=dataset,
                source=watch,
                tokenize=config,
                poll_s=poll,
                retry_failed=retry_failed,
                workers=workers,
                gpus_per_task=gpus_per_task,
                videos_per_batch=videos_per_batch,
            )
        serve(
            ServeConfig(
                host=host,
                port=port,
                allow_root=allow_root,
                token=token,
                max_body_mb=max_body_mb,
                ray_address=ray_address,
                replicas=replicas,
                max_batch_size=max_batch_size,
                watch=watching,
                drain_s=drain,
            )
        )
