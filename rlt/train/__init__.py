"""Training on run-length tokens: the streaming loader, the packed-sequence ViT, the loop and eval."""

from rlt.train._checkpoint import find_checkpoint, load_checkpoint
from rlt.train._eval import EvalResult, evaluate, load_model
from rlt.train._loader import STATE_VERSION, TokenLoader, TokenStream
from rlt.train._loop import TrainConfig, TrainSummary, train
from rlt.train._model import (
    PRESETS,
    VideoViT,
    ViTConfig,
    packed_attention,
    sinusoid_table,
    tiny,
    vit_b,
    vit_h,
    vit_l,
    vit_s,
)
from rlt.train._optim import WarmupCosine, param_groups
from rlt.train._weights import PretrainedWeights, export_hf, load_videomae_state_dict, read_pretrained

__all__ = [
    "PRESETS",
    "STATE_VERSION",
    "EvalResult",
    "PretrainedWeights",
    "TokenLoader",
    "TokenStream",
    "TrainConfig",
    "TrainSummary",
    "ViTConfig",
    "VideoViT",
    "WarmupCosine",
    "evaluate",
    "export_hf",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_videomae_state_dict",
    "packed_attention",
    "param_groups",
    "read_pretrained",
    "sinusoid_table",
    "tiny",
    "train",
    "vit_b",
    "vit_h",
    "vit_l",
    "vit_s",
]
