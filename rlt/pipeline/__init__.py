"""The online path: video files to clips on the device, tokenized where the frames are."""

from rlt.pipeline._clips import DecodedVideo, decode_ahead, decode_clips, usable_cores
from rlt.pipeline._decode import (
    BACKENDS,
    DECODERS,
    Backend,
    Decoder,
    check_backend,
    decode_batch,
    decode_frames,
    output_device,
    resolve_backend,
)
from rlt.pipeline._device import concrete_device
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._manifest import Manifest, ManifestError, ManifestRow, read_manifest
from rlt.pipeline._online import OnlinePipeline, RLTConfig, tokenize_clips, tokenize_video
from rlt.pipeline._packed import PackedTokens
from rlt.pipeline._probe import VideoInfo, probe
from rlt.pipeline._rlt import IMAGENET_MEAN, IMAGENET_STD, run_length_tokenize, run_lengths
from rlt.pipeline._sampling import ClipIndices, ClipSampling, sample_clips
from rlt.pipeline._transforms import FrameAugment, augment_frames, resize_and_crop

__all__ = [
    "BACKENDS",
    "DECODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backend",
    "ClipIndices",
    "ClipSampling",
    "DecodedVideo",
    "Decoder",
    "FrameAugment",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "OnlinePipeline",
    "PackedTokens",
    "RLTConfig",
    "VideoDecodeError",
    "VideoInfo",
    "augment_frames",
    "check_backend",
    "concrete_device",
    "decode_ahead",
    "decode_batch",
    "decode_clips",
    "decode_frames",
    "output_device",
    "probe",
    "read_manifest",
    "resize_and_crop",
    "resolve_backend",
    "run_length_tokenize",
    "run_lengths",
    "sample_clips",
    "tokenize_clips",
    "tokenize_video",
    "usable_cores",
]
