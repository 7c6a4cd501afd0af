"""Where tensors go: a device with its index, and copies to it that keep off the host's path."""

from __future__ import annotations

import torch


def concrete_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: a plain "cuda" is this thread's current GPU.

    Resolved in the caller's thread, because a new thread's current GPU is always GPU 0.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``. From the CPU to a GPU the copy goes from page-locked memory, so the
    host does not wait for it (a copy from pageable memory synchronises); any other copy blocks, since
    nothing else would wait for it."""
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
