"""`PackedTokens`: the kept tokens of a batch of clips, packed without padding.

Shape legend:
    B  clips in the batch            N  kept tokens over all clips
    G  tubelets per clip (T / ts)    D  values per token (ts * p * p * C)
    h, w  patch grid (H / p, W / p)  T, H, W, C  frames, height, width, channels
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    keep: torch.Tensor
    tubelet_size: int
    patch_size: int

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
        return PackedTokens(
            tokens=self.tokens.to(device, non_blocking=non_blocking),
            positions=self.positions.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=non_blocking),
            keep=self.keep.to(device, non_blocking=non_blocking),
            tubelet_size=self.tubelet_size,
            patch_size=self.patch_size,
        )

    def clip(self, index: int) -> PackedTokens:
        """The tokens of clip ``index`` alone, as a batch of one."""
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        index %= self.num_clips
        start, end = int(self.cu_seqlens[index]), int(self.cu_seqlens[index + 1])
        return PackedTokens(
            tokens=self.tokens[start:end],
            positions=self.positions[start:end],
            lengths=self.lengths[start:end],
            cu_seqlens=torch.tensor([0, end - start], dtype=torch.int32, device=self.cu_seqlens.device),
            keep=self.keep[index : index + 1],
            tubelet_size=self.tubelet_size,
            patch_size=self.patch_size,
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
