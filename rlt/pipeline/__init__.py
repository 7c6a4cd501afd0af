"""The online path: video files to clips on the device, tokenized where the frames are."""

from rlt.pipeline._packed import PackedTokens
from rlt.pipeline._rlt import IMAGENET_MEAN, IMAGENET_STD, run_length_tokenize, run_lengths

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PackedTokens", "run_length_tokenize", "run_lengths"]
