"""What a video file holds, read from its container without decoding it (PyAV)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from rlt.pipeline._errors import VideoDecodeError


@dataclass(frozen=True)
class VideoInfo:
    """A video stream's metadata.

    Attributes:
        path: the file.
        codec: FFmpeg's codec name (``"h264"``, ``"vp9"``, ...).
        num_frames: frames in the stream, counted from its packets when the container does not say.
        fps: average frame rate.
        height, width: frame size in pixels.
    """

    path: str
    codec: str
    num_frames: int
    fps: float
    height: int
    width: int


def probe(path: str | Path) -> VideoInfo:
    """Reads a video's metadata, or raises `VideoDecodeError` saying why it cannot be read."""
    import av

    path = str(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "no such file")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no"]
                raise VideoDecodeError(path, f"no video stream (the file has {', '.join(kinds)} streams)")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            num_frames = stream.frames
            if num_frames <= 0:
                # WebM/MKV headers carry no frame count: count packets, which reads no pixels.
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise VideoDecodeError(path, f"not a readable video ({type(e).__name__}: {e})") from e
    if num_frames <= 0:
        raise VideoDecodeError(path, "the video stream holds no frames")
    if height <= 0 or width <= 0:
        raise VideoDecodeError(path, f"the video stream has no frame size ({width}x{height})")
    return VideoInfo(path=path, codec=codec, num_frames=num_frames, fps=float(rate), height=height, width=width)
