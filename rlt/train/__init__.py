"""Training on run-length tokens: the streaming loader, the packed-sequence ViT, the loop and eval."""

from rlt.train._augment import (
    NO_AUGMENT,
    Augmentation,
    AugmentConfig,
    augment,
    centre_crop_tokens,
    crop_tokens,
    cutmix_tokens,
    draw_augmentation,
    erase_tokens,
    flip_tokens,
    one_clip_per_video,
    soft_targets,
)
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
    "NO_AUGMENT",
    "PRESETS",
    "STATE_VERSION",
    "AugmentConfig",
    "Augmentation",
    "EvalResult",
    "PretrainedWeights",
    "TokenLoader",
    "TokenStream",
    "TrainConfig",
    "TrainSummary",
    "ViTConfig",
    "VideoViT",
    "WarmupCosine",
    "augment",
    "centre_crop_tokens",
    "crop_tokens",
    "cutmix_tokens",
    "draw_augmentation",
    "erase_tokens",
    "evaluate",
    "export_hf",
    "find_checkpoint",
    "flip_tokens",
    "load_checkpoint",
    "load_model",
    "load_videomae_state_dict",
    "one_clip_per_video",
    "packed_attention",
    "param_groups",
    "read_pretrained",
    "sinusoid_table",
    "soft_targets",
    "tiny",
    "train",
    "vit_b",
    "vit_h",
    "vit_l",
    "vit_s",
]
