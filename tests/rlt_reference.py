"""A deliberately naive RLT, written from the paper's rule with plain loops, to test against.

Slow on purpose: one patch at a time, float64 ImageNet-normalised pixels, no shared code with
`rlt.pipeline._rlt`.
"""

from __future__ import annotations

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def naive_rlt(
    frames_BTHWC: np.ndarray,
    *,
    tubelet_size: int,
    patch_size: int,
    threshold: float,
    compare: str = "previous",
    units: str = "normalized",
) -> dict[str, np.ndarray]:
    """Returns keep [B,G,h,w], and tokens, positions, lengths, cu_seqlens packed clip by clip."""
    ts, p = tubelet_size, patch_size
    b, t, height, width, c = frames_BTHWC.shape
    g, h, w = t // ts, height // p, width // p
    if units == "normalized":
        x = (frames_BTHWC.astype(np.float64) / 255.0 - MEAN) / STD
    else:
        x = frames_BTHWC.astype(np.float64)

    def score(frame_a: int, frame_b: int, clip: int, i: int, j: int) -> float:
        total = 0.0
        for y in range(i * p, (i + 1) * p):
            for xx in range(j * p, (j + 1) * p):
                for ch in range(c):
                    total += abs(x[clip, frame_a, y, xx, ch] - x[clip, frame_b, y, xx, ch])
        return total / (p * p * c)

    keep = np.zeros((b, g, h, w), dtype=bool)
    for clip in range(b):
        for i in range(h):
            for j in range(w):
                keep[clip, 0, i, j] = True
                run_start = 0
                for k in range(1, g):
                    reference = (k - 1) * ts if compare == "previous" else run_start * ts
                    if score(k * ts + ts - 1, reference, clip, i, j) > threshold:
                        keep[clip, k, i, j] = True
                        run_start = k
    return pack_reference(frames_BTHWC, keep, ts, p)


def pack_reference(frames_BTHWC: np.ndarray, keep: np.ndarray, ts: int, p: int) -> dict[str, np.ndarray]:
    b, g, h, w = keep.shape
    tokens, positions, lengths, cu = [], [], [], [0]
    for clip in range(b):
        for k in range(g):
            for i in range(h):
                for j in range(w):
                    if not keep[clip, k, i, j]:
                        continue
                    block = frames_BTHWC[clip, k * ts : (k + 1) * ts, i * p : (i + 1) * p, j * p : (j + 1) * p]
                    tokens.append(block.reshape(-1))
                    positions.append((k, i, j))
                    length = 1
                    while k + length < g and not keep[clip, k + length, i, j]:
                        length += 1
                    lengths.append(length)
        cu.append(len(tokens))
    d = ts * p * p * frames_BTHWC.shape[-1]
    return {
        "keep": keep,
        "tokens": np.array(tokens, dtype=np.uint8).reshape(-1, d),
        "positions": np.array(positions, dtype=np.int64).reshape(-1, 3),
        "lengths": np.array(lengths, dtype=np.int64),
        "cu_seqlens": np.array(cu, dtype=np.int32),
    }
