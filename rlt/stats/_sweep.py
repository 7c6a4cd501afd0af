"""Threshold calibration on raw videos: the reduction at each threshold, without writing a dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rlt.pipeline import Backend, ClipSampling, RLTConfig, VideoDecodeError, read_manifest, tokenize_video


def threshold_sweep(
    manifest: str | Path,
    *,
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.2),
    sample: int | None = 32,
    target_reduction: float | None = None,
    sampling: ClipSampling = ClipSampling(),  # noqa: B008 (frozen)
    rlt: RLTConfig = RLTConfig(),  # noqa: B008 (frozen)
    backend: Backend = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Decodes a sample of the manifest's videos once and measures RLT's reduction at each threshold.

    The reduction is ``1 - kept / dense`` over non-padded tubelets. With ``target_reduction``, also
    finds (by bisection; the reduction grows with the threshold) the smallest threshold reaching it.
    """
    rows = read_manifest(manifest).rows
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(rows), size=min(sample or len(rows), len(rows)), replace=False).tolist())
    clips, failed = [], []
    for i in chosen:
        try:
            # Decode once at threshold 0 with every token kept, then re-tokenize the frames per threshold.
            result = tokenize_video(rows[i].path, sampling=sampling, rlt=RLTConfig(drop_policy="none"), backend=backend)
        except VideoDecodeError as e:
            failed.append({"video": rows[i].video, "reason": e.reason})
            continue
        if result.padded is None:  # tokenize_video says what each clip is
            raise RuntimeError(f"tokenize_video gave no padding for {rows[i].video}")
        clips.append((result.unpack(fill="zeros"), result.padded))
    if not clips:
        raise ValueError(f"none of the {len(chosen)} sampled videos of {manifest} could be decoded")

    def reduction(threshold: float) -> float:
        kept = dense = 0
        for frames, padded in clips:
            keep = replace(rlt, threshold=threshold).tokenize(frames).keep
            real = ~padded.to(keep.device)[:, :, None, None].expand_as(keep)
            kept += int((keep & real).sum())
            dense += int(real.sum())
        return 1 - kept / dense if dense else 0.0

    report: dict[str, Any] = {
        "videos": len(chosen),
        "failed": failed,
        "clips": sum(frames.shape[0] for frames, _ in clips),
        "compare": rlt.compare,
        "reduction": {str(t): reduction(t) for t in thresholds},
    }
    if target_reduction is not None:
        report["target_reduction"] = target_reduction
        report["threshold_for_target"] = _bisect(reduction, target_reduction)
    return report


def _bisect(reduction: Any, target: float, low: float = 0.0, high: float = 4.0, steps: int = 20) -> float | None:
    if not 0 < target < 1:
        raise ValueError(f"target_reduction must be between 0 and 1, got {target}")
    if reduction(high) < target:
        return None  # not reachable: even a very high threshold keeps too much (tubelet 0 always stays)
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if reduction(middle) < target else (low, middle)
    return high
