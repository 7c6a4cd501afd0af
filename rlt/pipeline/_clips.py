"""From videos to clips on the device: sample, decode at output size, gather; and decode ahead.

`decode_clips` decodes a group of videos at once (one DALI batch), each video's clips as the union
of their frames, and gathers them into ``[K, T, S, S, 3]`` on the device. On CUDA it works on a
side stream of its own thread and records an event; the consumer waits on that event on its own
stream (`DecodedVideo.frames`), so decoding the next group overlaps tokenizing this one with no
host synchronisation. `decode_ahead` runs such groups on a pool of worker threads and hands the
results back in order: the decoders (DALI, torchcodec, decord) and torch's kernels release the GIL
while they work, so threads keep every core busy without copying frames between processes.

Shape legend: K clips of a video, T frames per clip, U distinct frames of a video, S output side.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlt.pipeline._decode import Backend, decode_batch, output_device
from rlt.pipeline._device import concrete_device, to_device
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo, probe
from rlt.pipeline._sampling import ClipIndices, ClipSampling, sample_clips

G = TypeVar("G")
R = TypeVar("R")


@dataclass(repr=False)
class DecodedVideo:
    """A video's clips, decoded at output size.

    Attributes:
        video: the video as the caller named it.
        info: its probe result.
        clips: each clip's source frames.
        frames_KTHWC: uint8, on the device; read it through `frames` on CUDA.
        label: its class, where the caller gave one.
    """

    video: str
    info: VideoInfo
    clips: list[ClipIndices]
    frames_KTHWC: torch.Tensor
    label: int = -1
    ready: Any = None  # torch.cuda.Event recorded on the decoding stream

    def frames(self) -> torch.Tensor:
        """The clips, safe to use on the current stream (which waits for the decoder on the GPU)."""
        if self.ready is not None:
            current = torch.cuda.current_stream(self.frames_KTHWC.device)
            current.wait_event(self.ready)
            # Allocated on the decoding stream: keep the memory until this stream is done with it.
            self.frames_KTHWC.record_stream(current)
        return self.frames_KTHWC

    def __repr__(self) -> str:
        return f"DecodedVideo(video={self.video!r}, clips={len(self.clips)}, frames={list(self.frames_KTHWC.shape)})"


def decode_clips(
    videos: Sequence[tuple[str, str | Path]],
    *,
    sampling: ClipSampling,
    backend: Backend,
    device: torch.device | str | None = None,
    epoch: int = 0,
    num_threads: int = 1,
    labels: Sequence[int] | None = None,
) -> list[DecodedVideo | VideoDecodeError]:
    """Decodes the clips ``sampling`` cuts from each video, resized and cropped where decoded.

    Args:
        videos: (name, path) of each video; errors name the video by ``name``.
        sampling: which clips to cut and how to size them.
        backend: the decoder or chain (see `decode_batch`).
        device: where the clips go; by default where the backend's first decoder puts frames.
        epoch: the epoch, for training-mode clip offsets.
        num_threads: decoding threads of the CPU decoders.
        labels: each video's class, carried on its `DecodedVideo`; -1 where not given.

    Returns one entry per video: its clips, or the `VideoDecodeError` saying why not.
    """
    device = concrete_device(device if device is not None else output_device(backend))
    results: list[DecodedVideo | VideoDecodeError | None] = [None] * len(videos)
    todo = []
    for k, (video, path) in enumerate(videos):
        try:
            info = probe(_local_file(path))
        except VideoDecodeError as e:
            results[k] = VideoDecodeError(video, e.reason)
            continue
        clips = sample_clips(info.num_frames, sampling, source_fps=info.fps, video_key=video, epoch=epoch)
        union_U = np.unique(np.concatenate([c.frame_indices for c in clips]))
        todo.append((k, video, info, clips, union_U))
    labels = labels if labels is not None else [-1] * len(videos)
    stream = _side_stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        decoded = decode_batch(
            [info.path for _, _, info, _, _ in todo],
            [union_U for *_, union_U in todo],
            backend=backend,
            size=sampling.size,
            crop=sampling.crop,
            num_threads=num_threads,
            infos=[info for _, _, info, _, _ in todo],
        )
        for (k, video, info, clips, union_U), frames_UHWC in zip(todo, decoded, strict=True):
            if isinstance(frames_UHWC, VideoDecodeError):
                results[k] = VideoDecodeError(video, frames_UHWC.reason)
                continue
            order_KT = np.searchsorted(union_U, np.stack([c.frame_indices for c in clips]))
            frames_KTHWC = _gather(frames_UHWC, order_KT)
            frames_KTHWC = to_device(frames_KTHWC, device)  # CPU-decoded clips travel at output size
            ready = None
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record(stream)
            results[k] = DecodedVideo(
                video=video, info=info, clips=clips, frames_KTHWC=frames_KTHWC, label=labels[k], ready=ready
            )
    return results  # type: ignore[return-value]


def _gather(frames_UHWC: torch.Tensor, order_KT: np.ndarray) -> torch.Tensor:
    """Each clip's frames out of the video's distinct ones; a view where they are those frames."""
    if order_KT.shape[0] == 1 and np.array_equal(order_KT[0], np.arange(frames_UHWC.shape[0])):
        return frames_UHWC.unsqueeze(0)
    return frames_UHWC[torch.from_numpy(order_KT).to(frames_UHWC.device, non_blocking=True)]


def decode_ahead(groups: Iterable[G], decode: Callable[[G], R], *, workers: int, ahead: int) -> Iterator[R]:
    """``decode(group)`` for each group, in order, with up to ``ahead`` groups in flight on
    ``workers`` threads. Stopping the iteration cancels the groups not yet started."""
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlt-decode") as pool:
        try:
            for group in groups:
                pending.append(pool.submit(decode, group))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_local = threading.local()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's decoding stream on ``device``."""
    streams = _local.__dict__.setdefault("streams", {})
    index = device.index
    if index is None:
        raise ValueError("a decoding stream needs a GPU index (see concrete_device)")
    if index not in streams:
        streams[index] = torch.cuda.Stream(device=index)
    return streams[index]


def _local_file(path: str | Path) -> str | Path:
    """A local file for ``path``: a video at a URL (``s3://...``) is fetched into the cache first."""
    from rlt.dataset._remote import fetch_file, is_url

    if not is_url(path):
        return path
    try:
        return fetch_file(str(path))
    except OSError as e:
        raise VideoDecodeError(str(path), f"cannot be fetched ({e})") from e
