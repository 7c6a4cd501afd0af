"""One shard: decode and tokenize its videos, write the rows, commit the folder atomically.

Runs inside a Ray task, or in-process. A shard folder that exists is complete: it is written under a
temporary name and renamed into place only after every file is on disk. Running the same shard
twice (a Ray retry after the rename) leaves the first copy untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlt.dataset import (
    META,
    SHARDS,
    ClipRecord,
    checksum,
    expected_files,
    file_list,
    fsync_tree,
    write_json_atomic,
    write_rows,
)
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


@dataclass(frozen=True)
class ShardSpec:
    """A planned shard: its name and its videos as (video as given, resolved path, label)."""

    name: str
    videos: tuple[tuple[str, str, int], ...]


def shard_folder(out: Path, name: str) -> Path:
    return out / SHARDS / name


def run_shard(out: str | Path, spec: ShardSpec, config: TokenizeConfig, *, videos_per_batch: int = 8) -> dict[str, Any]:
    """Writes shard ``spec`` under ``out`` unless it is already there; returns its meta and timing.

    The shard's videos are decoded ``videos_per_batch`` at a time (one DALI batch), the next group
    decoding while this one is tokenized.
    """
    out = Path(out)
    final = shard_folder(out, spec.name)
    if final.is_dir():
        return {"meta": read_meta(final), "seconds": 0.0, "work_seconds": 0.0, "skipped": True}
    started = time.perf_counter()
    chain = resolve_backend(config.backend)
    # The GPU tokenizes wherever one is there, whichever decoder fed it.
    device = concrete_device("cuda" if torch.cuda.is_available() else "cpu")
    videos = spec.videos
    groups = [videos[i : i + videos_per_batch] for i in range(0, len(videos), videos_per_batch)]
    rows: list[ClipRecord] = []
    errors = []
    dense = 0

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
                errors.append({"video": item.path, "reason": item.reason})
            else:
                good.append(item)
        # "random" draws its drops over a whole batch: one video at a time keeps a clip's draw
        # independent of which videos share its batch.
        batches = [[item] for item in good] if config.rlt.drop_policy == "random" else [good] if good else []
        for batch in (tokenize_clips(b, config.rlt) for b in batches):
            packed = batch.tokens.to("cpu")
            dense += packed.dense_tokens
            for k in range(packed.num_clips):
                one = packed.clip(k)
                rows.append(
                    ClipRecord(
                        video=batch.videos[k],
                        label=int(batch.labels[k]),
                        clip=batch.clip_ids[k],
                        frame_indices=batch.frame_indices[k].numpy(),
                        padded=batch.padded[k].numpy(),
                        num_tokens=one.num_tokens,
                        positions=one.positions.numpy(),
                        lengths=one.lengths.numpy(),
                        tokens=one.tokens.numpy(),
                    )
                )
    work_seconds = time.perf_counter() - started  # decoding and RLT; the rest is writing and committing
    tmp = out / SHARDS / f".tmp-{spec.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        write_rows(tmp, rows, storage=config.storage, token_dim=config.token_dim, grid=config.grid)
        files = file_list(tmp)
        missing = expected_files(config.storage) - {f["path"] for f in files}
        if missing:
            # Someone removed files while we wrote; committing would publish a broken shard.
            raise RuntimeError(f"{tmp} lost {sorted(missing)} while being written")
        meta = {
            "name": spec.name,
            "rows": len(rows),
            "tokens": int(sum(r.num_tokens or 0 for r in rows)),
            "dense_tokens": dense,
            "videos": len(spec.videos),
            "failed": len(errors),
            "errors": errors,
            "decoder": ",".join(chain),
            "files": files,
            "bytes": sum(f["bytes"] for f in files),
            "checksum": checksum(files),
        }
        write_json_atomic(tmp / META, meta)
        fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another attempt of this shard committed first; its bytes are the same as ours.
            shutil.rmtree(tmp)
            return {
                "meta": read_meta(final),
                "seconds": time.perf_counter() - started,
                "work_seconds": work_seconds,
                "skipped": True,
            }
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"meta": meta, "seconds": time.perf_counter() - started, "work_seconds": work_seconds, "skipped": False}


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text())
