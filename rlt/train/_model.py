"""A VideoMAE-style ViT that runs on packed run-length tokens: no padding, no cross-clip attention.

Shape legend: N tokens of a packed batch, B clips, D values per token (ts*p*p*C), d model width,
H heads, G x h x w the full token grid of a clip.

Key names mirror VideoMAE's fine-tuning model (blocks.i.attn.qkv / q_bias / v_bias, gamma_1 / gamma_2,
norm or fc_norm, head), so its checkpoints load with one change: the Conv3d tubelet embedding becomes
a linear map of the stored token pixels. `rlt.train._weights` reads them, and the other layouts users
download.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlt._checks import check_choice
from rlt.pipeline import IMAGENET_MEAN, IMAGENET_STD

Pooling = Literal["mean", "first"]


@dataclass(frozen=True)
class ViTConfig:
    """Model shape. Presets: `tiny`, `vit_s`, `vit_b`, `vit_l`, `vit_h`.

    The fields after ``run_length_embedding`` are VideoMAE's or off by default; other checkpoints set
    them (`rlt.train.read_pretrained`):

    Attributes:
        run_length_embedding: add a fixed sinusoid of each token's run length (the run's choice).
        norm_eps: epsilon of the blocks' layer norms and of ``norm`` (Hugging Face's configs: 1e-12).
        fc_norm_eps: epsilon of ``fc_norm`` (Hugging Face's VideoMAE: 1e-5, whatever its config says).
        pooling: ``"mean"`` over each clip's tokens, then ``fc_norm``; or ``"first"``: ``norm``, then
            the clip's first token (VideoMAE without ``use_mean_pooling``; RLT always keeps the first
            tubelet, and tokens are in grid order, so that is position (0, 0, 0)).
        layer_scale: per-channel ``gamma_1`` / ``gamma_2`` on each block's two branches (VideoMAE's
            ``init_values > 0``), starting at 1.
        learned_length_embedding: add ``length_embed[length - 1]``, a learned ``[1, G, d]`` table (the
            RLT authors' ``use_length_embed``).
        drop_path: stochastic depth in training: block ``i`` of ``depth`` skips each branch for a whole
            clip with probability ``drop_path * i / (depth - 1)`` (VideoMAE fine-tunes ViT-B at 0.1).
    """

    width: int
    depth: int
    heads: int
    num_classes: int
    mlp_ratio: float = 4.0
    num_frames: int = 16
    image_size: int = 224
    tubelet_size: int = 2
    patch_size: int = 16
    channels: int = 3
    run_length_embedding: bool = False
    norm_eps: float = 1e-6
    fc_norm_eps: float = 1e-6
    pooling: Pooling = "mean"
    layer_scale: bool = False
    learned_length_embedding: bool = False
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, ("mean", "first"))
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.run_length_embedding and self.learned_length_embedding:
            raise ValueError("run_length_embedding and learned_length_embedding are exclusive: choose one")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        if self.num_frames % self.tubelet_size or self.image_size % self.patch_size:
            raise ValueError("num_frames and image_size must be multiples of tubelet_size and patch_size")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def grid(self) -> tuple[int, int, int]:
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def token_dim(self) -> int:
        return self.tubelet_size * self.patch_size**2 * self.channels


# VideoMAE / VideoMAE-v2 encoder dimensions (width, depth, heads).
def tiny(num_classes: int, **kw: object) -> ViTConfig:
    return ViTConfig(width=64, depth=2, heads=2, num_classes=num_classes, **kw)  # type: ignore[arg-type]


def vit_s(num_classes: int, **kw: object) -> ViTConfig:
    return ViTConfig(width=384, depth=12, heads=6, num_classes=num_classes, **kw)  # type: ignore[arg-type]


def vit_b(num_classes: int, **kw: object) -> ViTConfig:
    return ViTConfig(width=768, depth=12, heads=12, num_classes=num_classes, **kw)  # type: ignore[arg-type]


def vit_l(num_classes: int, **kw: object) -> ViTConfig:
    return ViTConfig(width=1024, depth=24, heads=16, num_classes=num_classes, **kw)  # type: ignore[arg-type]


def vit_h(num_classes: int, **kw: object) -> ViTConfig:
    return ViTConfig(width=1280, depth=32, heads=16, num_classes=num_classes, **kw)  # type: ignore[arg-type]


PRESETS = {"tiny": tiny, "vit_s": vit_s, "vit_b": vit_b, "vit_l": vit_l, "vit_h": vit_h}


def sinusoid_table(positions: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """VideoMAE's fixed table: sin on even and cos on odd dimensions, float32 ``[positions, width]``."""
    exponent = (torch.arange(width, dtype=torch.float64) // 2 * 2) / width
    angles = torch.arange(positions, dtype=torch.float64)[:, None] / base**exponent
    table = torch.where(torch.arange(width) % 2 == 0, angles.sin(), angles.cos())
    return table.float()


def packed_attention(
    q_NHd: torch.Tensor, k_NHd: torch.Tensor, v_NHd: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """Attention within each packed sequence only: flash varlen on CUDA, one SDPA per clip otherwise."""
    if q_NHd.is_cuda and q_NHd.dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # torch before varlen attention: the loop below is still exact
            pass
        else:
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            out = varlen_attn(q_NHd, k_NHd, v_NHd, cu_seqlens, cu_seqlens, longest, longest)
            return out[0] if isinstance(out, tuple) else out
    out = torch.empty_like(q_NHd)
    bounds = cu_seqlens.tolist()
    # A loop over the clips of a batch: exact, and memory stays linear in the clips' lengths.
    for start, end in itertools.pairwise(bounds):
        if end > start:
            q, k, v = (t[start:end].transpose(0, 1) for t in (q_NHd, k_NHd, v_NHd))  # [H, n, d]
            out[start:end] = F.scaled_dot_product_attention(q, k, v).transpose(0, 1)
    return out


def drop_path(x_Nd: torch.Tensor, cu_seqlens: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth on a packed batch: each clip's branch output is zeroed with probability
    ``rate``, or scaled by ``1 / (1 - rate)``. A "sample" is a clip, as timm's ``drop_path`` drops
    a whole sample, so the mask is drawn per clip and spread over its tokens."""
    if rate == 0:
        return x_Nd
    seqlens_B = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    keep_B = torch.empty(len(seqlens_B), dtype=x_Nd.dtype, device=x_Nd.device).bernoulli_(1 - rate)
    scale_N = torch.repeat_interleave(keep_B / (1 - rate), seqlens_B, output_size=x_Nd.shape[0])
    return x_Nd * scale_N[:, None]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        # VideoMAE keeps separate q and v biases and no k bias.
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x_Nd: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        n, d = x_Nd.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x_Nd, self.qkv.weight, bias).view(n, 3, self.heads, d // self.heads)
        out_NHd = packed_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens)
        return self.proj(out_NHd.reshape(n, d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        width = config.width
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(width, eps=config.norm_eps)
        self.attn = Attention(width, config.heads)
        self.norm2 = nn.LayerNorm(width, eps=config.norm_eps)
        self.mlp = Mlp(width, int(width * config.mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.ones(width)) if config.layer_scale else None
        self.gamma_2 = nn.Parameter(torch.ones(width)) if config.layer_scale else None

    def forward(self, x_Nd: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        rate = self.drop_path if self.training else 0.0
        attn_Nd = self.attn(self.norm1(x_Nd), cu_seqlens)
        x_Nd = x_Nd + drop_path(attn_Nd if self.gamma_1 is None else self.gamma_1 * attn_Nd, cu_seqlens, rate)
        mlp_Nd = self.mlp(self.norm2(x_Nd))
        return x_Nd + drop_path(mlp_Nd if self.gamma_2 is None else self.gamma_2 * mlp_Nd, cu_seqlens, rate)


class VideoViT(nn.Module):
    """Classifies packed clips: ``forward(tokens, positions, lengths, cu_seqlens) -> logits [B, classes]``.

    ``tokens`` are the stored uint8 pixels; they are normalised here, on the model's device.
    """

    pos_table: torch.Tensor
    length_table: torch.Tensor
    length_embed: nn.Parameter  # with learned_length_embedding
    fc_norm: nn.LayerNorm  # with pooling "mean"
    norm: nn.LayerNorm  # with pooling "first"
    pixel_scale: torch.Tensor
    pixel_shift: torch.Tensor

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        g, h, w = config.grid
        self.patch_embed = nn.Linear(config.token_dim, config.width)
        self.register_buffer("pos_table", sinusoid_table(g * h * w, config.width), persistent=False)
        if config.run_length_embedding:
            # Fixed sinusoids over run lengths 0..G, as for positions but with a shorter base.
            self.register_buffer("length_table", sinusoid_table(g + 1, config.width, base=1000.0), persistent=False)
        if config.learned_length_embedding:
            self.length_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, g, config.width), std=0.02))
        # VideoMAE's schedule: no drop in the first block, ``drop_path`` in the last.
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        if config.pooling == "mean":
            self.fc_norm = nn.LayerNorm(config.width, eps=config.fc_norm_eps)
        else:
            self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.head = nn.Linear(config.width, config.num_classes)
        mean = torch.tensor(IMAGENET_MEAN).repeat(config.token_dim // config.channels)
        std = torch.tensor(IMAGENET_STD).repeat(config.token_dim // config.channels)
        # Tokens are laid out (t, y, x, c): channel c sits at every C-th value.
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("pixel_shift", -mean / std, persistent=False)

    def forward(
        self, tokens_ND: torch.Tensor, positions_N3: torch.Tensor, lengths_N: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        _, h, w = self.config.grid
        x_ND = tokens_ND.to(self.pixel_scale.dtype) * self.pixel_scale + self.pixel_shift
        x_Nd = self.patch_embed(x_ND)
        flat_N = (positions_N3[:, 0].long() * h + positions_N3[:, 1].long()) * w + positions_N3[:, 2].long()
        x_Nd = x_Nd + self.pos_table[flat_N]
        if self.config.run_length_embedding:
            x_Nd = x_Nd + self.length_table[lengths_N.long().clamp(max=self.length_table.shape[0] - 1)]
        if self.config.learned_length_embedding:
            x_Nd = x_Nd + self.length_embed[0, (lengths_N.long() - 1).clamp(0, self.length_embed.shape[1] - 1)]
        for block in self.blocks:
            x_Nd = block(x_Nd, cu_seqlens)
        if self.config.pooling == "first":
            return self.head(self.norm(x_Nd[cu_seqlens[:-1].long()]))
        # Mean over each clip's tokens.
        seqlens_B = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        clip_N = torch.repeat_interleave(torch.arange(len(seqlens_B), device=x_Nd.device), seqlens_B)
        pooled_Bd = torch.zeros(len(seqlens_B), x_Nd.shape[1], dtype=x_Nd.dtype, device=x_Nd.device)
        pooled_Bd.index_add_(0, clip_N, x_Nd)
        pooled_Bd = pooled_Bd / seqlens_B.clamp(min=1)[:, None].to(x_Nd.dtype)
        return self.head(self.fc_norm(pooled_Bd))
