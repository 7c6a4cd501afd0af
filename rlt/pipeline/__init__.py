"""The online path: video files to clips on the device, tokenized where the frames are."""

from rlt.pipeline._decode import BACKENDS, Backend, decode_batch, decode_frames, resolve_backend
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._manifest import Manifest, ManifestRow, read_manifest
from rlt.pipeline._online import ClipBatch, OnlinePipeline, RLTConfig, VideoTokens, tokenize_video
from rlt.pipeline._packed import PackedTokens
from rlt.pipeline._probe import VideoInfo, probe
from rlt.pipeline._rlt import IMAGENET_MEAN, IMAGENET_STD, run_length_tokenize, run_lengths
from rlt.pipeline._sampling import ClipIndices, ClipSampling, sample_clips
from rlt.pipeline._transforms import resize_and_crop

__all__ = [
    "BACKENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backend",
    "ClipBatch",
    "ClipIndices",
    "ClipSampling",
    "Manifest",
    "ManifestRow",
    "OnlinePipeline",
    "PackedTokens",
    "RLTConfig",
    "VideoDecodeError",
    "VideoInfo",
    "VideoTokens",
    "decode_batch",
    "decode_frames",
    "probe",
    "read_manifest",
    "resize_and_crop",
    "resolve_backend",
    "run_length_tokenize",
    "run_lengths",
    "sample_clips",
    "tokenize_video",
]
