"""NVIDIA DALI: NVDEC on the GPU (``"dali"``) or libavcodec on the CPU (``"dali-cpu"``).

One DALI graph decodes a batch of videos from their encoded bytes, each with its own list of frame
indices (``fn.decoders.video(frames=...)``), and resamples each video's frames straight to the
output size inside DALI: ``fn.resize`` reads the source window that the short-side resize and the
centre crop would keep (``roi_start``/``roi_end``) and writes ``crop x crop`` pixels, antialiased.
So no native-resolution frame leaves DALI, and no float copy of one is made. The same graph runs on
the CPU for ``"dali-cpu"``, which is how machines without a GPU test it.

Frames reach torch through DLPack, on the GPU for ``"dali"``, synchronised with the caller's
current CUDA stream. A bad file makes DALI fail the whole batch and leaves the pipeline unusable,
so we drop the pipeline and decode that batch's videos one by one to name it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from rlt.pipeline._device import to_device
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo
from rlt.pipeline._transforms import output_geometry

# Codec names as FFmpeg (and so `probe`) spells them.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mjpeg", "av1", "mpeg4"})

# The smallest frames NVDEC decodes, by codec (NVIDIA Video Codec SDK's decoder capabilities; an H100
# refuses a 128x96 VP9 and returns wrong pixels for a 131x97 one). Smaller videos of a codec DALI's CPU
# graph takes are decoded there and handed over on the GPU.
NVDEC_MIN_SIZE = {"vp9": 128, "av1": 128, "hevc": 144}

# Pipelines of one kind (device, batch bucket, resize or not) that may run at once in a process.
# The online pipeline's workers and the job's threads decode from several threads; more than one
# pipeline keeps NVDEC busy while another one demuxes, sets up its decoders or finishes its slowest
# video, and each holds its own decoders and buffers (benchmarks/bench_gpu.py compares 1, 2 and 4).
PIPELINES_PER_KIND = 4

_Key = tuple[str, int, int, bool]


def import_dali():
    try:
        import nvidia.dali as dali
    except ImportError as e:
        raise ImportError(
            "the DALI backends need NVIDIA DALI >= 1.48: pip install nvidia-dali-cuda120 (or nvidia-dali-cuda130)"
        ) from e
    return dali


def decode_dali(
    infos: Sequence[VideoInfo],
    frame_indices: Sequence[np.ndarray],
    *,
    gpu: bool,
    size: int | None = None,
    crop: int | None = None,
    device_id: int = 0,
) -> list[torch.Tensor | VideoDecodeError]:
    """Decodes each video's frames, resized and cropped in DALI: uint8 ``[T, H', W', 3]``.

    ``size`` and ``crop`` mean what they mean in `resize_and_crop`; with both None, frames come at
    native size. On ``cuda:device_id`` when ``gpu``, ready on the caller's current stream.

    Returns one entry per video: its frames, or the `VideoDecodeError` that names why not.
    """
    if not infos:
        return []
    supported = DALI_GPU_CODECS if gpu else DALI_CPU_CODECS
    results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(infos)
    todo, unsupported = [], set()
    for k, info in enumerate(infos):
        if gpu and min(info.height, info.width) < NVDEC_MIN_SIZE.get(info.codec, 0):
            results[k] = VideoDecodeError(
                info.path, f"NVDEC decodes no {info.codec} under {NVDEC_MIN_SIZE[info.codec]} px"
            )
        elif info.codec not in supported:
            results[k] = VideoDecodeError(
                info.path, unsupported_codec_reason(info.codec, "dali" if gpu else "dali-cpu")
            )
            unsupported.add(k)
        else:  # indices were checked against the probed frame count by the caller, `decode_batch`
            todo.append(k)
    if todo:
        graph = _Graph(gpu=gpu, device_id=device_id, size=size, crop=crop)
        decoded: list[torch.Tensor | VideoDecodeError] = []
        try:
            decoded.extend(graph.run([infos[k] for k in todo], [frame_indices[k] for k in todo]))
        except _BatchFailed:
            for k in todo:
                try:
                    decoded.extend(graph.run([infos[k]], [frame_indices[k]]))
                except _BatchFailed as e:
                    decoded.append(VideoDecodeError(infos[k].path, f"DALI failed to decode it ({e})"))
        for k, item in zip(todo, decoded, strict=True):
            results[k] = item
    if gpu:
        # What NVDEC refused or failed on, where DALI's CPU graph takes the codec. Beyond the sizes in
        # `NVDEC_MIN_SIZE`, what NVDEC takes depends on the GPU (an H100 has no MJPEG): found by trying.
        cpu = [
            k
            for k, item in enumerate(results)
            if isinstance(item, VideoDecodeError) and infos[k].codec in DALI_CPU_CODECS and k not in unsupported
        ]
        _decode_on_the_cpu(cpu, infos, frame_indices, results, size=size, crop=crop, device_id=device_id)
    return results  # type: ignore[return-value]


def _decode_on_the_cpu(
    which: list[int],
    infos: Sequence[VideoInfo],
    frame_indices: Sequence[np.ndarray],
    results: list[torch.Tensor | VideoDecodeError | None],
    *,
    size: int | None,
    crop: int | None,
    device_id: int,
) -> None:
    """Decodes videos ``which`` on DALI's CPU graph into ``results``, copied to ``cuda:device_id``
    from page-locked memory on the caller's current stream, like NVDEC's frames."""
    if not which:
        return
    decoded = decode_dali([infos[k] for k in which], [frame_indices[k] for k in which], gpu=False, size=size, crop=crop)
    device = torch.device("cuda", device_id)
    for k, item in zip(which, decoded, strict=True):
        results[k] = to_device(item, device) if isinstance(item, torch.Tensor) else item


def unsupported_codec_reason(codec: str, backend: str) -> str:
    can = (
        ["decord", "torchcodec"]
        + (["dali-cpu"] if codec in DALI_CPU_CODECS else [])
        + (["dali"] if codec in DALI_GPU_CODECS else [])
    )
    return f"backend {backend!r} cannot decode {codec}; use backend {' or '.join(repr(b) for b in can)}"


class _BatchFailed(RuntimeError):
    pass


class _Graph:
    """One call's view of the cached DALI pipelines: where they run and what size they write."""

    def __init__(self, *, gpu: bool, device_id: int, size: int | None, crop: int | None) -> None:
        self.gpu, self.device_id, self.size, self.crop = gpu, device_id, size, crop

    def run(self, infos: Sequence[VideoInfo], indices: Sequence[np.ndarray]) -> list[torch.Tensor]:
        batch = len(infos)
        resize = self.size is not None or self.crop is not None
        key = ("mixed" if self.gpu else "cpu", self.device_id if self.gpu else -1, _bucket(batch), resize)
        inputs: dict[str, list[np.ndarray]] = {
            "encoded": [np.fromfile(info.path, dtype=np.uint8) for info in infos],
            "frames": [np.ascontiguousarray(ix, dtype=np.int32) for ix in indices],
        }
        if resize:
            windows = [_source_window(info, self.size, self.crop) for info in infos]
            inputs["out_size"] = [w[0] for w in windows]
            inputs["roi_start"] = [w[1] for w in windows]
            inputs["roi_end"] = [w[2] for w in windows]
        stream = torch.cuda.current_stream(self.device_id) if self.gpu else None
        with _pool.checkout(key) as pipe:
            try:
                for name, values in inputs.items():
                    pipe.feed_input(name, values)
                # DALI makes its outputs ready on the stream we pass: the caller's, not the host.
                (video,) = pipe.run(stream.cuda_stream) if stream is not None else pipe.run()
                # Copied out while the pipeline is ours, so its buffers are free for the next run.
                # At output size this copy is small; it is the only one on the way to torch.
                out = [torch.from_dlpack(video[i]).clone() for i in range(batch)]
            except RuntimeError as e:
                # After a failed run DALI marks the pipeline invalid: the pool drops it.
                raise _BatchFailed(_dali_reason(e)) from e
        for info, tensor, ix in zip(infos, out, indices, strict=True):
            if tensor.shape[0] != len(ix) or tensor.shape[-1] != 3:
                raise _BatchFailed(f"{info.path}: DALI returned {list(tensor.shape)} for {len(ix)} frames")
        return out


class _Pool:
    """Built pipelines by kind, each used by one thread at a time, at most `PIPELINES_PER_KIND`."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._idle: dict[_Key, list[Any]] = {}
        self._built: dict[_Key, int] = {}

    @contextlib.contextmanager
    def checkout(self, key: _Key) -> Iterator[Any]:
        with self._changed:
            while not self._idle.get(key) and self._built.get(key, 0) >= PIPELINES_PER_KIND:
                self._changed.wait()
            pipe = self._idle[key].pop() if self._idle.get(key) else None
            if pipe is None:
                self._built[key] = self._built.get(key, 0) + 1
        keep = False
        try:
            if pipe is None:
                pipe = _build(*key)
            yield pipe
            keep = True
        finally:
            with self._changed:
                if keep:
                    self._idle.setdefault(key, []).append(pipe)
                else:  # failed to build, or failed a run, which leaves a DALI pipeline unusable
                    self._built[key] -= 1
                self._changed.notify_all()  # one condition for every kind: wake the waiter of this one

    def clear(self) -> None:
        # Before CUDA's own teardown at exit, not after it.
        with self._changed:
            self._idle.clear()


_pool = _Pool()
atexit.register(_pool.clear)


def _source_window(info: VideoInfo, size: int | None, crop: int | None) -> tuple[np.ndarray, ...]:
    """(output [H', W'], roi start [y, x], roi end [y, x]): the source pixels `resize_and_crop`
    would keep, in source coordinates, and the size it would give them."""
    (new_h, new_w), (top, left, out_h, out_w) = output_geometry(info.height, info.width, size=size, crop=crop)
    scale_y, scale_x = info.height / new_h, info.width / new_w
    start = np.array([top * scale_y, left * scale_x], dtype=np.float32)
    end = np.array([(top + out_h) * scale_y, (left + out_w) * scale_x], dtype=np.float32)
    return np.array([out_h, out_w], dtype=np.float32), start, end


def _bucket(batch: int) -> int:
    # A pipeline serves any batch up to its size; powers of two keep the number of pipelines small.
    return 1 << (batch - 1).bit_length()


def _build(device: str, device_id: int, max_batch: int, resize: bool) -> Any:
    dali = import_dali()
    from nvidia.dali import fn, types

    @dali.pipeline_def(
        batch_size=max_batch,
        # DALI's CPU threads demux and, for "dali-cpu", decode and resize; a batch's videos spread
        # over them.
        num_threads=max(1, min(max_batch, len(os.sched_getaffinity(0)))),
        device_id=device_id if device == "mixed" else None,
        exec_dynamic=True,
        prefetch_queue_depth=1,
    )
    def video_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        # pad_mode "none": an index past what DALI can decode is an error (then retried by the next
        # decoder of the chain), not a black frame; a header's frame count can be wrong.
        extra = {"affine": False} if device == "mixed" else {}  # several pipelines: no core pinning
        video = _video_decoder(fn)(encoded, frames=frames, device=device, pad_mode="none", **extra)
        if resize:
            out_size = fn.external_source(name="out_size", dtype=types.FLOAT, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            video = fn.resize(
                video,
                size=out_size,
                roi_start=roi_start,
                roi_end=roi_end,
                roi_relative=False,
                antialias=True,
                interp_type=types.INTERP_LINEAR,
                dtype=types.UINT8,
            )
        return video

    pipe = video_pipeline()
    pipe.build()
    return pipe


def _video_decoder(fn: Any) -> Any:
    # DALI 2.0 moved the decoder out of `experimental`; 1.48 to 1.53 have it (with `frames=`) there.
    return getattr(fn.decoders, "video", None) or fn.experimental.decoders.video


def _dali_reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if "Failed" in line or "not supported" in line or "Assert" in line]
    return (useful or lines or [type(e).__name__])[-1][:300]
