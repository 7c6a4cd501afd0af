"""Dataset statistics from metadata alone: token counts, positions, run lengths, padding.

Predicted compute: a ViT layer over n tokens of width d costs 24·n·d² FLOPs in its linear maps (QKV,
output projection, a 4x MLP) plus 4·n²·d in attention (QKᵀ and AV). ViT-B has d = 768 and 12
layers. Summing over clips, per clip, gives the dense and the RLT cost; their ratio is the predicted
speed-up of the encoder (patch embedding and head are negligible beside it).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rlt.dataset import FIELDS, TokenDataset

PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
VIT_B = {"width": 768, "layers": 12}
SCHEMA_VERSION = 1


def vit_flops(tokens: np.ndarray, *, width: int = VIT_B["width"], layers: int = VIT_B["layers"]) -> float:
    """Encoder FLOPs summed over clips with ``tokens[i]`` tokens each (see module docstring)."""
    n = tokens.astype(np.float64)
    return float(layers * (24 * n * width**2 + 4 * n**2 * width).sum())


def dataset_stats(root: str | Path, *, by: str | None = "label") -> dict[str, Any]:
    """The statistics report of a dataset (JSON-ready; see README "Statistics" for the schema).

    Reads the per-clip and per-token metadata columns of every shard, never the token pixels. ``root``
    may be a URL (``s3://bucket/prefix``).
    """
    # No tokens column: from a URL, only the shards' metadata files are fetched.
    dataset = TokenDataset(root, columns=[c for c in FIELDS if c != "tokens"], verify=False)
    config, index = dataset.config, dataset.index
    sampling, rlt = config["sampling"], config["rlt"]
    g = sampling["num_frames"] // rlt["tubelet_size"]
    side = sampling["crop"] // rlt["patch_size"]
    grid = side * side  # patches per tubelet

    labels, counts, videos = [], [], []
    padded_rows, kept_in_padded = [], []
    lengths_hist = np.zeros(g + 1, dtype=np.int64)
    kept_per_t = np.zeros(g, dtype=np.int64)
    real_per_t = np.zeros(g, dtype=np.int64)  # clips whose tubelet t is real (not padding)
    for k in range(len(dataset.shards)):
        shard = dataset.shard(k)
        shard_counts = shard.column("num_tokens").astype(np.int64)
        padded = shard.column("padded").astype(bool).reshape(len(shard_counts), g)
        positions = shard.column("positions").reshape(-1, 3)
        t_of_token = positions[:, 0].astype(np.int64)
        row_of_token = np.repeat(np.arange(len(shard_counts)), shard_counts)
        token_padded = padded[row_of_token, t_of_token] if len(t_of_token) else np.zeros(0, bool)
        lengths_hist += np.bincount(shard.column("lengths").astype(np.int64), minlength=g + 1)[: g + 1]
        kept_per_t += np.bincount(t_of_token[~token_padded], minlength=g)[:g]
        real_per_t += (~padded).sum(axis=0)
        kept_in_padded.append(np.bincount(row_of_token[token_padded], minlength=len(shard_counts)))
        labels.append(shard.column("label").astype(np.int64))
        videos.append(shard.column("video"))
        counts.append(shard_counts)
        padded_rows.append(padded)
        dataset.release(k)  # from a URL: the cache may evict it

    counts_c = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    labels_c = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    padded_c = np.concatenate(padded_rows) if padded_rows else np.zeros((0, g), bool)
    padded_kept_c = np.concatenate(kept_in_padded) if kept_in_padded else np.zeros(0, np.int64)
    clips = len(counts_c)
    dense_per_clip = g * grid
    ratio_c = counts_c / dense_per_clip if clips else np.zeros(0)
    padded_tubelets = int(padded_c.sum())
    real_dense = dense_per_clip * clips - padded_tubelets * grid
    real_kept = int(counts_c.sum() - padded_kept_c.sum())

    per_class: dict[str, dict[str, float]] = {}
    if by == "label" and clips:
        classes = index.classes
        groups: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels_c.tolist()):
            groups[label].append(i)
        for label, rows in sorted(groups.items()):
            name = classes[label] if classes else str(label)
            kept = int(counts_c[rows].sum())
            per_class[name] = {"clips": len(rows), "kept": kept, "dense": dense_per_clip * len(rows),
                               "kept_ratio": kept / (dense_per_clip * len(rows))}  # fmt: skip

    totals = index.totals
    dense_clip_bytes = sampling["num_frames"] * sampling["crop"] ** 2 * 3
    flops_dense = vit_flops(np.full(clips, dense_per_clip))
    flops_rlt = vit_flops(counts_c)
    return {
        "schema": SCHEMA_VERSION,
        "dataset": str(dataset.root),
        "config": config,
        "videos": totals.videos,
        "failed": totals.failed,
        "videos_with_clips": len({v for part in videos for v in part.tolist()}),
        "clips": clips,
        "tokens": {
            "dense_per_clip": dense_per_clip,
            "dense": dense_per_clip * clips,
            "kept": int(counts_c.sum()),
            "kept_ratio": float(counts_c.sum() / max(dense_per_clip * clips, 1)),
            "per_clip_kept_ratio_percentiles": {
                str(p): float(np.percentile(ratio_c, p)) if clips else 0.0 for p in PERCENTILES
            },
        },
        "padding": {
            "padded_tubelets": padded_tubelets,
            "clips_with_padding": int(padded_c.any(axis=1).sum()),
            "kept_in_padded_tubelets": int(padded_kept_c.sum()),
            "real_dense": int(real_dense),
            "real_kept": real_kept,
            "real_kept_ratio": real_kept / real_dense if real_dense else 0.0,
        },
        "per_class": per_class,
        "run_lengths": {str(length): int(lengths_hist[length]) for length in range(1, g + 1)},
        "keep_rate_per_tubelet": [
            float(kept_per_t[t] / (real_per_t[t] * grid)) if real_per_t[t] else 0.0 for t in range(g)
        ],
        "disk": {
            "bytes": totals.bytes,
            "bytes_per_clip": totals.bytes / clips if clips else 0.0,
            "dense_bytes_per_clip": dense_clip_bytes,
            "compression": dense_clip_bytes * clips / totals.bytes if totals.bytes else 0.0,
        },
        "compute": {
            "model": "ViT-B (d=768, 12 layers)",
            "dense_gflops": flops_dense / 1e9,
            "rlt_gflops": flops_rlt / 1e9,
            "predicted_speedup": flops_dense / flops_rlt if flops_rlt else 0.0,
        },
    }
