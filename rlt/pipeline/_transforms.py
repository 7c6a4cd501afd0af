"""Resizing and cropping clips on whatever device they are on.

The CPU decoders resize here, on the CPU, before frames travel; DALI does the same resize and crop
inside its graph from the geometry `output_geometry` gives, so both paths cut the same window.

Shape legend: T frames, H x W frame size, C channels.
"""

from __future__ import annotations

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
        frames_TCHW = frames_THWC.permute(0, 3, 1, 2)
        if frames_THWC.device.type == "cpu":
            # The CPU has an exact uint8 path for antialiased bilinear in channels-last layout.
            resized = F.interpolate(frames_TCHW, size=(new_h, new_w), mode="bilinear", antialias=True)
        else:
            # No uint8 path on the GPU. The product's GPU path resizes inside DALI instead; this
            # serves callers that hand us GPU frames themselves.
            resized = F.interpolate(frames_TCHW.float(), size=(new_h, new_w), mode="bilinear", antialias=True)
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        frames_THWC = resized.permute(0, 2, 3, 1)
    frames_THWC = frames_THWC[:, top : top + out_h, left : left + out_w]
    return frames_THWC.contiguous()


def _scaled(height: int, width: int, short_side: int) -> tuple[int, int]:
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side
