"""The optimiser as VideoMAE fine-tunes: AdamW with layer-wise lr decay, linear warmup, then cosine.

Layer-wise decay (BEiT, VideoMAE): the head learns at the full rate and each block below it at
``layer_decay`` times the rate of the one above, down to the patch embedding. Biases, norms, the
q/v biases, layer scales and a learned length table take no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rlt.train._model import VideoViT

SCHEDULE_VERSION = 1


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for the norm and head."""
    if name.startswith(("patch_embed", "length_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: VideoViT, *, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups, one per (layer, decay or not), each with its ``lr_scale``."""
    depth = model.config.depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and name != "length_embed"  # an embedding table, as VideoMAE's pos_embed
        layer = layer_id(name, depth)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


@dataclass
class WarmupCosine:
    """Learning rate as a function of the step and of how far training has got.

    Linear warmup from 0 over ``warmup_steps`` optimiser steps, then a cosine from ``lr`` to
    ``min_lr`` over the rest of training. "The rest" is measured as ``progress`` in [0, 1] (the share
    of the planned steps or epochs done, whichever is further), because with token-budget
    accumulation the number of steps in an epoch is only known once it has run.
    """

    lr: float
    min_lr: float
    warmup_steps: int
    last_lr: float = 0.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int, progress: float) -> float:
        """The rate for optimiser step ``step`` (0-based) taken at ``progress``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(max(progress, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int, progress: float) -> float:
        """Sets every group's rate (times its ``lr_scale``) and returns the base rate."""
        self.last_lr = self(step, progress)
        for group in optimizer.param_groups:
            group["lr"] = self.last_lr * group.get("lr_scale", 1.0)
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEDULE_VERSION,
            "lr": self.lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "last_lr": self.last_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != SCHEDULE_VERSION:
            raise ValueError(f"schedule state version {state.get('version')!r} is not {SCHEDULE_VERSION}")
        for key in ("lr", "min_lr", "warmup_steps"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint's schedule has {key}={state[key]!r}, this run {getattr(self, key)!r}")
        self.last_lr = state["last_lr"]
