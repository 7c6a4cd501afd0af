"""`ClipRecord`: one row of a dataset, as written and as read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("video", "label", "clip", "frame_indices", "padded", "num_tokens", "positions", "lengths", "tokens")


@dataclass(frozen=True, repr=False)
class ClipRecord:
    """One clip: its identity, sampling and run-length tokens (see FORMAT.md).

    Fields not read (``open_dataset(columns=...)``) are None.
    """

    video: str | None = None
    label: int | None = None
    clip: int | None = None
    frame_indices: np.ndarray | None = None
    padded: np.ndarray | None = None
    num_tokens: int | None = None
    positions: np.ndarray | None = None
    lengths: np.ndarray | None = None
    tokens: np.ndarray | None = None

    def __repr__(self) -> str:
        parts = []
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            shown = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else repr(value)
            parts.append(f"{name}={shown}")
        return f"ClipRecord({', '.join(parts)})"
