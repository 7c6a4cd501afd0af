"""What a video file holds, read from its container without decoding it (PyAV)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from stat import S_ISDIR

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
    """Reads a video's metadata, or raises `VideoDecodeError` saying why it cannot be read.

    The result is remembered for as long as the file keeps its size and modification time, so a
    training run probes each video once, not once per epoch.
    """
    path = str(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "no such file") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot be read ({e.strerror})") from None
    if S_ISDIR(stat.st_mode):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if stat.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return _read_info(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _read_info(path: str, size: int, mtime_ns: int) -> VideoInfo:
    # `size` and `mtime_ns` only key the cache: a file that changes is read again.
    import av

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
