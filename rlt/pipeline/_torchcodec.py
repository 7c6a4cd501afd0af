"""torchcodec on the CPU: the system's FFmpeg, frame-exact by index."""

from __future__ import annotations

import re

import numpy as np
import torch

from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo

# PyPI's Linux wheels of torchcodec 0.14 and later are CUDA builds that load libtorch_cuda, so they
# fail to import next to a CPU build of torch; 0.12 and 0.13 are CPU builds on torch's stable ABI
# (any torch >= 2.11).
_PIP = "pip install 'torchcodec>=0.12,<0.14'"
# torchcodec loads the system's FFmpeg (4 to 8) at import; these are FFmpeg 5.1's libraries in Debian 12.
_APT = "apt-get install libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4"


def import_torchcodec():
    """Imports torchcodec's `VideoDecoder`, or raises an ImportError saying what to install.

    No import order is needed: torchcodec links the system's FFmpeg by its plain names, PyAV and
    decord their own renamed copies, and all three decode H.264, VP9 and MJPEG in one process
    whichever comes first (checked with av 18, decord 0.6.0, torchcodec 0.13). decord's own rule
    (after PyAV) is kept by `import_decord`.
    """
    try:
        from torchcodec.decoders import VideoDecoder
    except ModuleNotFoundError as e:
        raise ImportError(f"backend 'torchcodec' needs torchcodec: {_PIP}, and FFmpeg's libraries ({_APT})") from e
    except (ImportError, OSError, RuntimeError) as e:
        # RuntimeError: no FFmpeg 4-8 found; OSError: a CUDA build of torchcodec beside a CPU torch.
        raise ImportError(
            f"torchcodec is installed but cannot load ({_first_line(e)}); it needs FFmpeg's shared libraries "
            f"(on Debian 12: {_APT}) and a build matching torch {torch.__version__} ({_PIP} for a CPU torch)"
        ) from e
    return VideoDecoder


def decode_torchcodec(info: VideoInfo, frame_indices: np.ndarray, *, num_threads: int = 1) -> torch.Tensor:
    """Decodes ``frame_indices`` of a probed video: uint8 ``[T, H, W, 3]`` RGB on the CPU.

    Args:
        info: the video's `probe` result.
        frame_indices: 0-based indices into its frames, in the order wanted; repeats allowed.
        num_threads: FFmpeg's decoding threads.

    Returns:
        The frames at native resolution, in the order asked for.

    Raises:
        VideoDecodeError: torchcodec cannot open or decode the file, or an index is negative or
            past the frames it finds.
        ImportError: torchcodec or FFmpeg's libraries are missing.
    """
    video_decoder = import_torchcodec()
    if frame_indices.size and int(frame_indices.min()) < 0:
        raise VideoDecodeError(info.path, f"frame index {int(frame_indices.min())} is negative")
    try:
        # "exact" scans the file once to index every frame, so index i is the i-th frame even with
        # variable frame rates or a wrong header; device "cpu" because torch's default device may not be.
        decoder = video_decoder(
            info.path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=num_threads, device="cpu"
        )
    except (RuntimeError, ValueError) as e:
        raise VideoDecodeError(info.path, f"torchcodec cannot open it ({_first_line(e)})") from e
    available = len(decoder)
    if frame_indices.size and int(frame_indices.max()) >= available:
        raise VideoDecodeError(
            info.path, f"frame {int(frame_indices.max())} asked for, but torchcodec finds {available} frames"
        )
    try:
        # One call decodes each distinct frame once, in file order, and writes the answer in the order asked.
        frames_THWC = decoder.get_frames_at(frame_indices.tolist()).data
    except (RuntimeError, ValueError, IndexError) as e:
        raise VideoDecodeError(info.path, f"torchcodec failed ({_first_line(e)})") from e
    if frames_THWC.shape[1:] != (info.height, info.width, 3):
        raise VideoDecodeError(
            info.path,
            f"torchcodec returned {tuple(frames_THWC.shape[1:])} frames for a {info.width}x{info.height} video",
        )
    return frames_THWC


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    # "SingleStreamDecoder, /__w/.../SingleStreamDecoder.cpp:52, Could not open ..." -> "Could not open ..."
    line = re.sub(r"^\w+, \S+:\d+, ", "", lines[0])
    # "Could not load libtorchcodec. Likely causes:" -> the causes follow on lines of their own.
    return re.sub(r"\s*Likely causes:$", "", line)[:300]
