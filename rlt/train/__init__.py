"""Training on pre-pruned token streams: the streaming loader and the packed-sequence ViT."""

from rlt.train._loader import STATE_VERSION, TokenBatch, TokenLoader, TokenStream
from rlt.train._model import (
    PRESETS,
    VideoViT,
    ViTConfig,
    load_videomae_state_dict,
    packed_attention,
    sinusoid_table,
    tiny,
    vit_b,
    vit_h,
    vit_l,
    vit_s,
)

__all__ = [
    "PRESETS",
    "STATE_VERSION",
    "TokenBatch",
    "TokenLoader",
    "TokenStream",
    "ViTConfig",
    "VideoViT",
    "load_videomae_state_dict",
    "packed_attention",
    "sinusoid_table",
    "tiny",
    "vit_b",
    "vit_h",
    "vit_l",
    "vit_s",
]
