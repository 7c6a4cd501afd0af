"""Which frames make a clip: VideoMAE's conventions, as the RLT authors' code uses them.

A clip is ``num_frames`` frames ``frame_interval`` apart (16 x 4 by default). Evaluation takes
``clips_per_video`` clips spread evenly over the video; training takes one clip at a random offset
that is a pure function of (seed, epoch, video), so runs repeat exactly. A video shorter than the
clip's window is padded by repeating its last frame, as the authors do, and the padded tubelets are
marked so that statistics do not count their drops as savings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rlt._checks import check_choice

SamplingMode = Literal["eval", "train"]


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video and sized.

    Attributes:
        num_frames: frames per clip (T).
        frame_interval: step between a clip's frames, in frames at ``fps``.
        clips_per_video: clips taken from each video in ``"eval"`` mode (K).
        size: the short side is resized to this many pixels; None keeps the native size.
        crop: side of the square centre crop after resizing; None keeps the whole frame.
        fps: resample the video to this frame rate first; None uses the native frames.
        mode: ``"eval"`` (K evenly spaced clips) or ``"train"`` (one clip at a seeded offset).
        seed: seed of the training offsets.
    """

    num_frames: int = 16
    frame_interval: int = 4
    clips_per_video: int = 1
    size: int | None = 224
    crop: int | None = 224
    fps: float | None = None
    mode: SamplingMode = "eval"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_interval", "clips_per_video"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("size", "crop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be None or > 0, got {self.fps!r}")
        check_choice("mode", self.mode, ("eval", "train"))
        if self.crop is not None and self.size is not None and self.crop > self.size:
            raise ValueError(f"crop={self.crop} is larger than the resized short side size={self.size}")

    @property
    def window(self) -> int:
        """Frames (at ``fps``) that one clip spans."""
        return (self.num_frames - 1) * self.frame_interval + 1


@dataclass(frozen=True)
class ClipIndices:
    """One clip's source frames.

    Attributes:
        clip: the clip's number within its video.
        frame_indices: int64 ``[T]`` source frame indices, in order; padding repeats the last frame.
        padded: bool ``[T]``, True where the frame repeats the last one because the video ended.
    """

    clip: int
    frame_indices: np.ndarray
    padded: np.ndarray

    def padded_tubelets(self, tubelet_size: int) -> np.ndarray:
        """bool ``[T / ts]``: tubelets made only of padding frames."""
        return np.asarray(self.padded.reshape(-1, tubelet_size).all(axis=1))


def sample_clips(
    num_frames: int, sampling: ClipSampling, *, source_fps: float = 0.0, video_key: str = "", epoch: int = 0
) -> list[ClipIndices]:
    """The clips to take from a video of ``num_frames`` frames.

    Args:
        num_frames: frames in the video.
        sampling: how to cut clips.
        source_fps: the video's frame rate; needed only when ``sampling.fps`` is set.
        video_key: the video's identity (its manifest path) for the training offset.
        epoch: the epoch, for the training offset.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if sampling.fps is not None and source_fps > 0:
        step = source_fps / sampling.fps
        length = max(1, int(num_frames / step))
    else:
        step, length = 1.0, num_frames
    span = sampling.window
    room = max(length - span, 0)
    if sampling.mode == "train":
        starts = [int(_rng(sampling.seed, epoch, video_key).integers(0, room + 1))]
    elif sampling.clips_per_video == 1:
        starts = [room // 2]
    else:
        starts = [round(k * room / (sampling.clips_per_video - 1)) for k in range(sampling.clips_per_video)]
    clips = []
    offsets = np.arange(sampling.num_frames, dtype=np.int64) * sampling.frame_interval
    for k, start in enumerate(starts):
        resampled = start + offsets
        padded = resampled > length - 1
        source = np.floor(np.minimum(resampled, length - 1) * step).astype(np.int64)
        clips.append(ClipIndices(clip=k, frame_indices=np.minimum(source, num_frames - 1), padded=padded))
    return clips


def _rng(seed: int, epoch: int, video_key: str) -> np.random.Generator:
    # A stable hash: Python's hash() of a str changes between processes.
    digest = hashlib.blake2b(f"{seed}\0{epoch}\0{video_key}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))
