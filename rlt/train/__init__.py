"""Training on run-length tokens: the streaming loader, the packed-sequence ViT, the loop and eval."""

from rlt.train._checkpoint import find_checkpoint, load_checkpoint
from rlt.train._eval import EvalResult, evaluate, load_model
from rlt.train._loader import STATE_VERSION, TokenLoader, TokenStream
from rlt.train._loop import TrainConfig, TrainSummary, train
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
from rlt.train._optim import WarmupCosine, param_groups

__all__ = [
    "PRESETS",
    "STATE_VERSION",
    "EvalResult",
    "TokenLoader",
    "TokenStream",
    "TrainConfig",
    "TrainSummary",
    "ViTConfig",
    "VideoViT",
    "WarmupCosine",
    "evaluate",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_videomae_state_dict",
    "packed_attention",
    "param_groups",
    "sinusoid_table",
    "tiny",
    "train",
    "vit_b",
    "vit_h",
    "vit_l",
    "vit_s",
]
