"""Resizing and cropping clips on whatever device they are on.

The CPU decoders resize here, on the CPU, before frames travel; DALI does the same resize and crop
inside its graph from the geometry `output_geometry` gives, so both paths cut the same window.
`augment_frames` is the online path's training augmentation, on the device, before RLT.

Shape legend: B clips, T frames, H x W frame size, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def output_geometry(
    height: int, width: int, *, size: int | None, crop: int | None
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Where `resize_and_crop` takes a ``height x width`` frame.

    Returns ``((new_h, new_w), (top, left, out_h, out_w))``: the size after the short-side resize,
    and the window of that resized frame that is kept.
    """
    short = min(height, width)
    target = size
    if crop is not None and (target or short) < crop:
        # A frame smaller than the crop is resized up first, so the crop always fits.
        target = crop
    new_h, new_w = _scaled(height, width, target) if target is not None and target != short else (height, width)
    if crop is None:
        return (new_h, new_w), (0, 0, new_h, new_w)
    return (new_h, new_w), ((new_h - crop) // 2, (new_w - crop) // 2, crop, crop)


def resize_and_crop(frames_THWC: torch.Tensor, *, size: int | None, crop: int | None) -> torch.Tensor:
    """Resizes the short side to ``size`` (antialiased bilinear) and centre-crops ``crop x crop``.

    A frame smaller than the crop is resized up first, so the crop always fits. Stays uint8 and on
    the input's device.
    """
    t, height, width, c = frames_THWC.shape
    (new_h, new_w), (top, left, out_h, out_w) = output_geometry(height, width, size=size, crop=crop)
    if (new_h, new_w) != (height, width):
        frames_THWC = _resize(frames_THWC, new_h, new_w)
    frames_THWC = frames_THWC[:, top : top + out_h, left : left + out_w]
    return frames_THWC.contiguous()


def _resize(frames_THWC: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 frames, on their device."""
    frames_TCHW = frames_THWC.permute(0, 3, 1, 2)
    if frames_THWC.device.type == "cpu":
        # The CPU has an exact uint8 path for antialiased bilinear in channels-last layout.
        resized = F.interpolate(frames_TCHW, size=(height, width), mode="bilinear", antialias=True)
    else:
        # No uint8 path on the GPU. The product's GPU path resizes inside DALI instead; this
        # serves callers that hand us GPU frames themselves.
        resized = F.interpolate(frames_TCHW.float(), size=(height, width), mode="bilinear", antialias=True)
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized.permute(0, 2, 3, 1)


@dataclass(frozen=True)
class FrameAugment:
    """The online path's training augmentation, in pixels before RLT: VideoMAE's fine-tuning
    transform (a random resized crop held over the clip, then a horizontal flip).

    Decode with ``ClipSampling(crop=None)`` and a short side a little larger than ``size`` (VideoMAE
    decodes at 256 for 224), so that the crop has room to move.

    Attributes:
        size: side of the square output, in pixels.
        scale: range of the crop's share of the frame's area (torchvision's ``RandomResizedCrop``).
        ratio: range of the crop's width / height, drawn log-uniformly.
        flip: flip each clip with probability 1/2; off where direction matters (Something-Something).
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ValueError(f"size must be an int >= 1, got {self.size!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {self.scale!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio!r}")


def augment_frames(
    frames_BTHWC: torch.Tensor, config: FrameAugment, *, rng: int | Sequence[int] | np.random.Generator
) -> torch.Tensor:
    """Random resized crop and flip of each clip, the same for all its frames, on their device.

    Args:
        frames_BTHWC: uint8 clips of one frame size.
        config: the augmentation.
        rng: a numpy Generator, or its seed (``(seed, epoch, batch)`` draws anew every epoch).

    Returns:
        uint8 ``[B, T, size, size, C]``.
    """
    rng = np.random.default_rng(rng)
    _, _, height, width, _ = frames_BTHWC.shape
    out = []
    for clip_THWC in frames_BTHWC:
        top, left, h, w = _crop_box(rng, height, width, config.scale, config.ratio)
        clip_THWC = clip_THWC[:, top : top + h, left : left + w]
        if (h, w) != (config.size, config.size):
            # Contiguous first: the CPU's uint8 path wants the channels-last layout whole.
            clip_THWC = _resize(clip_THWC.contiguous(), config.size, config.size)
        if config.flip and rng.random() < 0.5:
            clip_THWC = clip_THWC.flip(2)
        out.append(clip_THWC)
    return torch.stack(out)  # one copy, into the batch: the crops and flips above are views


def _crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: 10 tries, else the centre crop that the
    ratio range allows."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _scaled(height: int, width: int, short_side: int) -> tuple[int, int]:
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def spatial_views(frames_BTHWC: torch.Tensor, views: int) -> torch.Tensor:
    """VideoMAE's test crops: ``views`` squares of the short side per clip, spread evenly along the
    long side (first edge, ..., last edge; one view is the centre), centred across the short one.

    Returns:
        uint8 ``[B * views, T, S, S, C]``, each clip's views together, S the short side.
    """
    _, _, height, width, _ = frames_BTHWC.shape
    side = min(height, width)
    margin = max(height, width) - side
    offsets = [margin // 2] if views == 1 else [round(v * margin / (views - 1)) for v in range(views)]
    out = []
    for clip_THWC in frames_BTHWC:
        for offset in offsets:
            top, left = (offset, 0) if height > width else (0, offset)
            out.append(clip_THWC[:, top : top + side, left : left + side])
    return torch.stack(out)
