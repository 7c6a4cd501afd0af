"""One shard: decode and tokenize its videos, and commit them with the dataset's `ShardWriter`.

Runs inside a Ray task, or in-process. Running the same shard twice (a Ray retry after the commit)
leaves the first copy untouched.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlt.dataset import ShardWriter, shard_folder
from rlt.dataset._remote import publish_shard
from rlt.pipeline import (
    DecodedVideo,
    VideoDecodeError,
    concrete_device,
    decode_ahead,
    decode_clips,
    resolve_backend,
    tokenize_clips,
)
from rlt.tokenize_offline._config import TokenizeConfig
from rlt.tokenize_offline._output import Output


@dataclass(frozen=True)
class ShardSpec:
    """A planned shard: its name and its videos as (video as given, resolved path, label)."""

    name: str
    videos: tuple[tuple[str, str, int], ...]


def run_shard(out: str | Path, spec: ShardSpec, config: TokenizeConfig, *, videos_per_batch: int = 8) -> dict[str, Any]:
    """Writes shard ``spec`` under ``out`` unless it is already there; returns its `ShardMeta` and timing.

    The shard's videos are decoded ``videos_per_batch`` at a time (one DALI batch), the next group
    decoding while this one is tokenized.
    """
    output = Output(out)
    if output.committed(spec.name):
        return {"meta": output.meta(spec.name), "seconds": 0.0, "work_seconds": 0.0, "skipped": True}
    started = time.perf_counter()
    chain = resolve_backend(config.backend)
    # The GPU tokenizes wherever one is there, whichever decoder fed it.
    device = concrete_device("cuda" if torch.cuda.is_available() else "cpu")
    videos = spec.videos
    groups = [videos[i : i + videos_per_batch] for i in range(0, len(videos), videos_per_batch)]
    writer = ShardWriter(output.local, spec.name, storage=config.storage, geometry=config.geometry)

    def decode(group: tuple[tuple[str, str, int], ...]) -> list[DecodedVideo | VideoDecodeError]:
        return decode_clips(
            [(video, path) for video, path, _ in group],
            sampling=config.sampling,
            backend=config.backend,
            device=device,
            labels=[label for *_, label in group],
        )

    # With a GPU, the next group decodes (NVDEC, or the CPU) while this one is tokenized on the GPU.
    # A CPU-only task has one core: a second thread there would only contend with the first.
    overlapped = decode_ahead(groups, decode, workers=1, ahead=1) if device.type == "cuda" else map(decode, groups)
    for decoded in overlapped:
        good = []
        for item in decoded:
            if isinstance(item, VideoDecodeError):
                writer.fail(item.path, item.reason)
            else:
                good.append(item)
        # "random" draws its drops over a whole batch: one video at a time keeps a clip's draw
        # independent of which videos share its batch.
        batches = [[item] for item in good] if config.rlt.drop_policy == "random" else [good] if good else []
        for batch in batches:
            writer.add(tokenize_clips(batch, config.rlt))
    work_seconds = time.perf_counter() - started  # decoding and RLT; the rest is writing and committing
    meta, committed = writer.commit(videos=len(videos), decoder=",".join(chain))
    if output.store:
        # Committed in the staging folder (perhaps by an attempt killed before it finished
        # publishing): publish it, data objects first, and keep no local copy.
        folder = shard_folder(output.local, spec.name)
        publish_shard(output.store, folder, spec.name, [f.path for f in meta.files])
        shutil.rmtree(folder)
        committed = True
    return {
        "meta": meta,
        "seconds": time.perf_counter() - started,
        "work_seconds": work_seconds,
        "skipped": not committed,
    }
