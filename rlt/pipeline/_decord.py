"""decord on the CPU: every common codec, frame-exact by index."""

from __future__ import annotations

import re

import numpy as np
import torch

from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo


def import_decord():
    """Imports decord, loading PyAV first.

    decord bundles FFmpeg 4 and its own libvpx; loaded first, their global symbols shadow PyAV's and
    PyAV's VP9 encoder then fails to open (seen with av 18 and decord 0.6.0).
    """
    import av  # noqa: F401

    try:
        import decord
    except ImportError as e:
        raise ImportError("backend 'decord' needs decord: pip install decord==0.6.0 (Linux x86-64)") from e
    return decord


def decode_decord(info: VideoInfo, frame_indices: np.ndarray, *, num_threads: int = 1) -> torch.Tensor:
    """Decodes ``frame_indices`` of a probed video: uint8 ``[T, H, W, 3]`` on the CPU.

    Increasing indices (what the pipeline asks for) come back in decord's own array, uncopied;
    repeated or unordered ones are decoded once each and gathered into a new array.
    """
    decord = import_decord()
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0), num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoDecodeError(info.path, f"decord cannot open it ({_first_line(e)})") from e
    try:
        available = len(reader)
        if frame_indices.size and int(frame_indices.max()) >= available:
            raise VideoDecodeError(
                info.path, f"frame {int(frame_indices.max())} asked for, but decord finds {available} frames"
            )
        # The pipeline asks for increasing indices: decord's array is then the answer as it is, and a
        # gather would only copy every frame once more.
        unique, inverse = frame_indices, None
        if not np.all(frame_indices[1:] > frame_indices[:-1]):
            unique, inverse = np.unique(frame_indices, return_inverse=True)
        try:
            frames = reader.get_batch(unique.tolist()).asnumpy()
        except decord.DECORDError as e:
            if "size must exact" not in str(e):
                raise VideoDecodeError(info.path, f"decord failed ({_first_line(e)})") from e
            frames = _read_padded_rows(reader, unique, info)
        if frames.shape[1:] != (info.height, info.width, 3):
            frames = _read_padded_rows(reader, unique, info)
    except (RuntimeError, decord.DECORDError) as e:
        if isinstance(e, VideoDecodeError):
            raise
        raise VideoDecodeError(info.path, f"decord failed ({_first_line(e)})") from e
    finally:
        # decord holds decoded frames in its reader; dropping it at once bounds its memory growth.
        del reader
    return torch.from_numpy(frames if inverse is None else frames[inverse])


def _read_padded_rows(reader, indices: np.ndarray, info: VideoInfo) -> np.ndarray:
    """Frame by frame, for the frame widths where decord 0.6.0 returns rows padded to 64 pixels.

    For such widths (48, for one) decord hands back the padded rows labelled ``[H, W, 4]`` and its
    batched read fails; the pixels are right once the rows are cut back to W.
    """
    out = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)
    for k, index in enumerate(indices.tolist()):
        raw = reader[index].asnumpy().reshape(-1)
        row = raw.size // info.height
        if raw.size % info.height or row % 3 or row // 3 < info.width:
            raise VideoDecodeError(
                info.path, f"decord returned {raw.size} bytes for a {info.width}x{info.height} frame"
            )
        out[k] = raw.reshape(info.height, row // 3, 3)[:, : info.width]
    return out


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    # "[22:38:27] /github/workspace/src/video/video_reader.cc:486: Error: ..." -> "Error: ..."
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])[:300]
