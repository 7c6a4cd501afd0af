"""Synthetic clips with known content, as uint8 [B, T, H, W, C] numpy arrays."""

from __future__ import annotations

import numpy as np


def static_clip(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3) -> np.ndarray:
    """One random frame repeated t times."""
    frame = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    return np.broadcast_to(frame, (t, h, w, c)).copy()


def moving_square(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3, size: int = 6) -> np.ndarray:
    """A static background with a bright square that moves one step a frame."""
    clip = static_clip(rng, t, h, w, c) // 2
    for f in range(t):
        y, x = (f * 2) % max(h - size, 1), (f * 3) % max(w - size, 1)
        clip[f, y : y + size, x : x + size] = 255
    return clip


def noise_patches(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3, patch: int = 8) -> np.ndarray:
    """A static background where some patches flicker with fresh noise every frame."""
    clip = static_clip(rng, t, h, w, c)
    for i in range(0, h - patch + 1, patch):
        for j in range(0, w - patch + 1, patch):
            if rng.random() < 0.3:
                clip[:, i : i + patch, j : j + patch] = rng.integers(0, 256, (t, patch, patch, c), dtype=np.uint8)
    return clip


def slow_ramp(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3, step: int = 2) -> np.ndarray:
    """A frame that brightens by `step` levels a frame: a fade below any per-step threshold."""
    base = rng.integers(0, 256 - step * t, (h, w, c), dtype=np.int64)
    ramp = base[None] + step * np.arange(t)[:, None, None, None]
    return ramp.astype(np.uint8)


def jitter(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3) -> np.ndarray:
    """A static frame plus small noise whose amplitude varies by region, so scores straddle 0.1."""
    clip = static_clip(rng, t, h, w, c).astype(np.int64)
    blocks = rng.integers(0, 24, (1, -(-h // 8), -(-w // 8), 1))
    amplitude = blocks.repeat(8, 1).repeat(8, 2)[:, :h, :w]
    noise = rng.integers(-64, 65, (t, h, w, c)) * amplitude // 64
    return np.clip(clip + noise, 0, 255).astype(np.uint8)


def random_clip(rng: np.random.Generator, t: int, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (t, h, w, c), dtype=np.uint8)


KINDS = {
    "static": static_clip,
    "moving_square": moving_square,
    "noise_patches": noise_patches,
    "slow_ramp": slow_ramp,
    "jitter": jitter,
    "random": random_clip,
}


def batch(kinds: list[str], seed: int, t: int, h: int, w: int, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([KINDS[k](rng, t, h, w, c) for k in kinds])
