"""VideoMAE's fine-tuning ViT, dense and batch-first, written from its paper's description to test against.

No code shared with `rlt.train`: a Conv3d tubelet embedding of ImageNet-normalised ``[B, C, T, H, W]``
clips, the fixed sinusoid table (numpy, as VideoMAE builds it), blocks with q/v biases and optional
layer scale (``init_values``), then mean pooling and ``fc_norm``, or ``norm`` and the first token.
``use_length_embed`` adds the RLT authors' learned ``length_embed[length - 1]``; ``keep`` runs each
clip on its kept tokens only, as their packed model does. Its ``state_dict`` has VideoMAE's key names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(positions: int, width: int) -> torch.Tensor:
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / width) for j in range(width)] for p in range(positions)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)[None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, init_values: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None or self.gamma_2 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        num_frames: int,
        tubelet_size: int = 2,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float = 0.0,
        use_mean_pooling: bool = True,
        use_length_embed: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            3,
            embed_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        # A plain attribute, as in VideoMAE: not in the state dict.
        self.pos_embed = sinusoid(int(np.prod(self.grid)), embed_dim)
        if use_length_embed:
            self.length_embed = nn.Parameter(0.02 * torch.randn(1, self.grid[0], embed_dim))
        self.use_length_embed = use_length_embed
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, eps) for _ in range(depth)
        )
        self.norm = nn.Identity() if use_mean_pooling else nn.LayerNorm(embed_dim, eps=eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=eps) if use_mean_pooling else None
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` normalised ``[B, C, T, H, W]``; ``keep`` bool and ``lengths`` int ``[B, G, h, w]``."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        if self.use_length_embed:
            assert lengths is not None
            x = x + self.length_embed[0, lengths.flatten(1) - 1]
        outs = []
        for b in range(x.shape[0]):
            tokens = x[b : b + 1] if keep is None else x[b : b + 1, keep[b].flatten()]
            for block in self.blocks:
                tokens = block(tokens)
            tokens = self.norm(tokens)
            outs.append(self.fc_norm(tokens.mean(1)) if self.fc_norm is not None else tokens[:, 0])
        return self.head(torch.cat(outs))
