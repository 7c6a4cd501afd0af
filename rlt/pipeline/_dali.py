"""NVIDIA DALI: NVDEC on the GPU (``"dali"``) or libavcodec on the CPU (``"dali-cpu"``).

One DALI pipeline per (backend, device, batch size) decodes a batch of videos from their encoded
bytes, each with its own list of frame indices (``fn.decoders.video(frames=...)``). GPU frames reach
torch through DLPack, with no host copy. A bad file makes DALI fail the whole batch and leaves the
pipeline unusable, so we drop the pipeline and decode that batch's videos one by one to name it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo

# Codec names as FFmpeg (and so `probe`) spells them.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mjpeg", "av1", "mpeg4"})

_lock = threading.Lock()
_pipelines: dict[tuple[str, int, int], Any] = {}


def import_dali():
    try:
        import nvidia.dali as dali
    except ImportError as e:
        raise ImportError(
            "the DALI backends need NVIDIA DALI: pip install nvidia-dali-cuda120 (or nvidia-dali-cuda130)"
        ) from e
    return dali


def decode_dali(
    infos: Sequence[VideoInfo], frame_indices: Sequence[np.ndarray], *, gpu: bool, device_id: int = 0
) -> list[torch.Tensor | VideoDecodeError]:
    """Decodes each video's frames: uint8 ``[T, H, W, 3]``, on ``cuda:device_id`` when ``gpu``.

    Returns one entry per video: its frames, or the `VideoDecodeError` that names why not.
    """
    if not infos:
        return []
    supported = DALI_GPU_CODECS if gpu else DALI_CPU_CODECS
    results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(infos)
    todo = []
    for k, info in enumerate(infos):
        if info.codec not in supported:
            results[k] = VideoDecodeError(
                info.path, unsupported_codec_reason(info.codec, "dali" if gpu else "dali-cpu")
            )
        else:  # indices were checked against the probed frame count by the caller, `decode_batch`
            todo.append(k)
    if todo:
        decoded: list[torch.Tensor | VideoDecodeError] = []
        try:
            decoded.extend(_run([infos[k] for k in todo], [frame_indices[k] for k in todo], gpu, device_id))
        except _BatchFailed:
            for k in todo:
                try:
                    decoded.extend(_run([infos[k]], [frame_indices[k]], gpu, device_id))
                except _BatchFailed as e:
                    decoded.append(VideoDecodeError(infos[k].path, f"DALI failed to decode it ({e})"))
        for k, item in zip(todo, decoded, strict=True):
            results[k] = item
    return results  # type: ignore[return-value]


def unsupported_codec_reason(codec: str, backend: str) -> str:
    can = (
        ["decord"] + (["dali-cpu"] if codec in DALI_CPU_CODECS else []) + (["dali"] if codec in DALI_GPU_CODECS else [])
    )
    return f"backend {backend!r} cannot decode {codec}; use backend {' or '.join(repr(b) for b in can)}"


class _BatchFailed(RuntimeError):
    pass


def _run(infos: Sequence[VideoInfo], indices: Sequence[np.ndarray], gpu: bool, device_id: int) -> list[torch.Tensor]:
    batch = len(infos)
    key = ("mixed" if gpu else "cpu", device_id if gpu else -1, _bucket(batch))
    encoded = [np.fromfile(info.path, dtype=np.uint8) for info in infos]
    frames = [np.ascontiguousarray(ix, dtype=np.int32) for ix in indices]
    with _lock:
        pipe = _pipelines.get(key) or _build(*key)
        _pipelines[key] = pipe
        try:
            pipe.feed_input("encoded", encoded)
            pipe.feed_input("frames", frames)
            (video,) = pipe.run()
            # DALI reuses its output buffers on the next run: copy out while we hold the lock.
            out = [torch.from_dlpack(video[i]).clone() for i in range(batch)]
        except RuntimeError as e:
            # After a failed run DALI marks the pipeline invalid; build a fresh one next time.
            _pipelines.pop(key, None)
            raise _BatchFailed(_dali_reason(e)) from e
    for info, tensor, ix in zip(infos, out, indices, strict=True):
        if tensor.shape[0] != len(ix) or tensor.shape[-1] != 3:
            raise _BatchFailed(f"{info.path}: DALI returned {list(tensor.shape)} for {len(ix)} frames")
    return out


def _bucket(batch: int) -> int:
    # A pipeline serves any batch up to its size; powers of two keep the number of pipelines small.
    return 1 << (batch - 1).bit_length()


def _build(device: str, device_id: int, max_batch: int) -> Any:
    dali = import_dali()
    from nvidia.dali import fn, types

    @dali.pipeline_def(
        batch_size=max_batch,
        num_threads=4,
        device_id=device_id if device == "mixed" else None,
        exec_dynamic=True,
        prefetch_queue_depth=1,
    )
    def video_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, frames=frames, device=device)

    pipe = video_pipeline()
    pipe.build()
    return pipe


def _dali_reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if "Failed" in line or "not supported" in line or "Assert" in line]
    return (useful or lines or [type(e).__name__])[-1][:300]
