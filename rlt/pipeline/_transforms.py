"""Resizing and cropping clips on whatever device they are on.

Shape legend: T frames, H x W frame size, C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_and_crop(frames_THWC: torch.Tensor, *, size: int | None, crop: int | None) -> torch.Tensor:
    """Resizes the short side to ``size`` (antialiased bilinear) and centre-crops ``crop x crop``.

    A frame smaller than the crop is resized up first, so the crop always fits. Stays uint8 and on
    the input's device.
    """
    t, height, width, c = frames_THWC.shape
    short = min(height, width)
    target = size
    if crop is not None and (target or short) < crop:
        target = crop
    if target is not None and target != short:
        new_h, new_w = _scaled(height, width, target)
        frames_TCHW = frames_THWC.permute(0, 3, 1, 2)
        if frames_THWC.device.type == "cpu":
            # The CPU has an exact uint8 path for antialiased bilinear in channels-last layout.
            resized = F.interpolate(frames_TCHW, size=(new_h, new_w), mode="bilinear", antialias=True)
        else:
            resized = F.interpolate(frames_TCHW.float(), size=(new_h, new_w), mode="bilinear", antialias=True)
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        frames_THWC = resized.permute(0, 2, 3, 1)
        height, width = new_h, new_w
    if crop is not None:
        top, left = (height - crop) // 2, (width - crop) // 2
        frames_THWC = frames_THWC[:, top : top + crop, left : left + crop]
    return frames_THWC.contiguous()


def _scaled(height: int, width: int, short_side: int) -> tuple[int, int]:
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side
