"""`PackedTokens`: the kept tokens of a batch of clips, packed without padding.

The one batch type: the RLT stage makes it, the online pipeline adds the clips' labels and
sampling, the shard writer stores it, the training loader reads it back, and the model takes it.

Shape legend:
    B  clips in the batch            N  kept tokens over all clips
    G  tubelets per clip (T / ts)    D  values per token (ts * p * p * C)
    h, w  patch grid (H / p, W / p)  T, H, W, C  frames, height, width, channels
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from rlt._checks import check_choice


@dataclass(frozen=True, repr=False)
class PackedTokens:
    """Run-length tokens of B clips, concatenated clip by clip, each clip in (t, h, w) order.

    Attributes:
        tokens: uint8 ``[N, ts*p*p*C]``, each row one tubelet's raw pixels laid out (t, y, x, c).
        positions: int64 ``[N, 3]``: tubelet index, patch row, patch column of each token.
        lengths: int64 ``[N]``: each token's run length in tubelets, that is the number of
            tubelets until the next kept token at the same patch, or the clip's end.
        cu_seqlens: int32 ``[B+1]``: clip ``b`` owns rows ``cu_seqlens[b]:cu_seqlens[b+1]``.
        keep: bool ``[B, G, h, w]``: which tubelets were kept.
        tubelet_size: frames per tubelet (ts).
        patch_size: pixels per patch side (p).

    What each clip is, where it is known (None from `run_length_tokenize` alone; set by the
    pipeline, the loader and `with_clips`):
        labels: int64 ``[B]``.
        padded: bool ``[B, G]``: tubelets made only of padding frames (the video ended).
        frame_indices: int64 ``[B, T]``: each clip's source frames.
        videos: each clip's video, as the manifest gives it.
        clip_ids: each clip's number within its video.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    keep: torch.Tensor
    tubelet_size: int
    patch_size: int
    labels: torch.Tensor | None = None
    padded: torch.Tensor | None = None
    frame_indices: torch.Tensor | None = None
    videos: tuple[str, ...] | None = None
    clip_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.dtype != torch.uint8 or self.tokens.dim() != 2:
            raise ValueError(f"tokens must be uint8 [N, D], got {self.tokens.dtype} {_shape(self.tokens)}")
        if self.keep.dtype != torch.bool or self.keep.dim() != 4:
            raise ValueError(f"keep must be bool [B, G, h, w], got {self.keep.dtype} {_shape(self.keep)}")
        if self.positions.shape != (n, 3):
            raise ValueError(f"positions must be [{n}, 3], got {_shape(self.positions)}")
        if self.lengths.shape != (n,):
            raise ValueError(f"lengths must be [{n}], got {_shape(self.lengths)}")
        b = self.keep.shape[0]
        if self.cu_seqlens.dtype != torch.int32 or self.cu_seqlens.shape != (b + 1,):
            raise ValueError(
                f"cu_seqlens must be int32 [{b + 1}], got {self.cu_seqlens.dtype} {_shape(self.cu_seqlens)}"
            )
        d = self.tokens.shape[1]
        if self.tubelet_size < 1 or self.patch_size < 1 or d % (self.tubelet_size * self.patch_size**2):
            raise ValueError(
                f"token width {d} is not a multiple of tubelet_size * patch_size**2 "
                f"= {self.tubelet_size} * {self.patch_size}**2"
            )
        g = self.keep.shape[1]
        for name, shape, dtype in (
            ("labels", (b,), torch.int64),
            ("padded", (b, g), torch.bool),
            ("frame_indices", (b, g * self.tubelet_size), torch.int64),
        ):
            value = getattr(self, name)
            if value is not None and (value.dtype != dtype or tuple(value.shape) != shape):
                raise ValueError(f"{name} must be {dtype} {list(shape)}, got {value.dtype} {_shape(value)}")
        for name in ("videos", "clip_ids"):
            value = getattr(self, name)
            if value is not None and len(value) != b:
                raise ValueError(f"{name} must have one entry per clip ({b}), got {len(value)}")

    def with_clips(
        self,
        *,
        labels: torch.Tensor | Sequence[int],
        videos: Sequence[str],
        clip_ids: Sequence[int],
        frame_indices: torch.Tensor,
        padded: torch.Tensor,
    ) -> PackedTokens:
        """These tokens, with what each clip is (see the class docstring)."""
        return replace(
            self,
            labels=torch.as_tensor(labels, dtype=torch.int64),
            videos=tuple(videos),
            clip_ids=tuple(int(c) for c in clip_ids),
            frame_indices=frame_indices.to(torch.int64),
            padded=padded.to(torch.bool),
        )

    def require_labels(self) -> torch.Tensor:
        """``labels``, or a ValueError for a batch that has none (one from `run_length_tokenize` alone)."""
        if self.labels is None:
            raise ValueError("this batch has no labels: give the clips' labels with `with_clips`")
        return self.labels

    @property
    def num_clips(self) -> int:
        return self.keep.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def channels(self) -> int:
        return self.tokens.shape[1] // (self.tubelet_size * self.patch_size**2)

    @property
    def dense_tokens(self) -> int:
        """Tokens the clips would have with none dropped (B * G * h * w)."""
        return self.keep.numel()

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def seqlens(self) -> torch.Tensor:
        """Kept tokens per clip, int32 ``[B]``."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> PackedTokens:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedTokens:
        """Page-locked copies, for non-blocking host-to-device copies (a DataLoader calls this)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Any) -> PackedTokens:
        tensors = ("tokens", "positions", "lengths", "cu_seqlens", "keep", "labels", "padded", "frame_indices")
        return replace(self, **{name: fn(v) for name in tensors if (v := getattr(self, name)) is not None})

    @classmethod
    def concat(cls, batches: Sequence[PackedTokens]) -> PackedTokens:
        """The clips of ``batches``, in order, as one batch (of the same tubelet and patch size and grid)."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        shape = (first.tubelet_size, first.patch_size, first.keep.shape[1:], first.tokens.shape[1])
        if any((b.tubelet_size, b.patch_size, b.keep.shape[1:], b.tokens.shape[1]) != shape for b in batches):
            raise ValueError("concat takes batches of one tubelet_size, patch_size, grid and token width")
        cu_seqlens = [first.cu_seqlens]
        offset = first.cu_seqlens[-1]
        for b in batches[1:]:
            cu_seqlens.append(b.cu_seqlens[1:] + offset)
            offset = offset + b.cu_seqlens[-1]
        values: dict[str, Any] = {"cu_seqlens": torch.cat(cu_seqlens)}
        for name in ("tokens", "positions", "lengths", "keep", "labels", "padded", "frame_indices"):
            parts = [getattr(b, name) for b in batches]
            values[name] = torch.cat(parts) if all(p is not None for p in parts) else None
        for name in ("videos", "clip_ids"):
            lists = [getattr(b, name) for b in batches]
            values[name] = tuple(v for part in lists for v in part) if all(p is not None for p in lists) else None
        return cls(tubelet_size=first.tubelet_size, patch_size=first.patch_size, **values)

    def clip(self, index: int) -> PackedTokens:
        """The tokens of clip ``index`` alone, as a batch of one."""
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        index %= self.num_clips
        start, end = int(self.cu_seqlens[index]), int(self.cu_seqlens[index + 1])
        one = slice(index, index + 1)
        return replace(
            self,
            tokens=self.tokens[start:end],
            positions=self.positions[start:end],
            lengths=self.lengths[start:end],
            cu_seqlens=torch.tensor([0, end - start], dtype=torch.int32, device=self.cu_seqlens.device),
            keep=self.keep[one],
            labels=None if self.labels is None else self.labels[one],
            padded=None if self.padded is None else self.padded[one],
            frame_indices=None if self.frame_indices is None else self.frame_indices[one],
            videos=None if self.videos is None else self.videos[one],
            clip_ids=None if self.clip_ids is None else self.clip_ids[one],
        )

    def unpack(self, *, fill: Literal["zeros", "repeat"] = "repeat") -> torch.Tensor:
        """Lays the tokens back onto the frame grid: uint8 ``[B, T, H, W, C]``.

        Args:
            fill: what dropped tubelets hold. ``"repeat"`` repeats each kept token over its run,
                which is what the model is told it sees; ``"zeros"`` leaves them black.
        """
        check_choice("fill", fill, ("zeros", "repeat"))
        b, g, h, w = self.keep.shape
        ts, p, c = self.tubelet_size, self.patch_size, self.channels
        grid_BGhwD = torch.zeros((b, g, h, w, ts * p * p * c), dtype=torch.uint8, device=self.device)
        clip_N = torch.repeat_interleave(
            torch.arange(b, device=self.device), self.seqlens().to(torch.int64), output_size=self.num_tokens
        )
        t_N, i_N, j_N = self.positions.unbind(1)
        if fill == "zeros":
            grid_BGhwD[clip_N, t_N, i_N, j_N] = self.tokens
        else:
            # Each token covers tubelets t .. t+length-1 of its patch.
            run_N = self.lengths
            total = int(run_N.sum())
            token_M = torch.repeat_interleave(
                torch.arange(self.num_tokens, device=self.device), run_N, output_size=total
            )
            run_start_N = torch.cumsum(run_N, 0) - run_N
            offset_M = torch.arange(total, device=self.device) - run_start_N[token_M]
            grid_BGhwD[clip_N[token_M], t_N[token_M] + offset_M, i_N[token_M], j_N[token_M]] = self.tokens[token_M]
        frames = grid_BGhwD.view(b, g, h, w, ts, p, p, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return frames.reshape(b, g * ts, h * p, w * p, c)

    def __repr__(self) -> str:
        return (
            f"PackedTokens(clips={self.num_clips}, tokens={_shape(self.tokens)} of {self.dense_tokens} dense, "
            f"tubelet_size={self.tubelet_size}, patch_size={self.patch_size}, grid={_shape(self.keep)[1:]}, "
            f"device={self.device})"
        )


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)
