"""One decoding interface over DALI (GPU and CPU) and decord.

Every backend returns the frames asked for, by index in decode order, as uint8 ``[T, H, W, 3]``
RGB at native resolution: on the GPU for ``"dali"``, on the CPU otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rlt._checks import check_choice
from rlt.pipeline._dali import DALI_GPU_CODECS, decode_dali
from rlt.pipeline._decord import decode_decord
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo, probe

Backend = Literal["auto", "dali", "dali-cpu", "decord"]
BACKENDS = ("auto", "dali", "dali-cpu", "decord")


def resolve_backend(backend: Backend) -> Literal["dali", "dali-cpu", "decord"]:
    """The concrete backend for ``backend``: ``"auto"`` is DALI on the GPU when CUDA and DALI are
    there, else decord."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "dali" if torch.cuda.is_available() and _dali_installed() else "decord"
    if backend == "dali" and not torch.cuda.is_available():
        raise ValueError(
            "backend 'dali' decodes on the GPU (NVDEC), but torch sees no CUDA device; "
            "use backend 'decord' or 'dali-cpu'"
        )
    return backend


def decode_frames(
    path: str | Path, frame_indices: Sequence[int] | np.ndarray, *, backend: Backend = "auto", num_threads: int = 1
) -> torch.Tensor:
    """Decodes the frames at ``frame_indices`` (in the order given, repeats allowed).

    Args:
        path: the video file.
        frame_indices: 0-based indices into the video's frames, in decode order.
        backend: ``"dali"`` (NVDEC, GPU), ``"dali-cpu"`` (VP8/VP9/MJPEG), ``"decord"`` or ``"auto"``.
        num_threads: decoding threads for decord.

    Returns:
        uint8 ``[T, H, W, 3]`` RGB at native resolution, on the GPU for ``"dali"``.

    Raises:
        VideoDecodeError: the file cannot be decoded, or an index is past its end.
        ValueError: an unknown backend, or ``"dali"`` without CUDA.
    """
    (result,) = decode_batch([path], [frame_indices], backend=backend, num_threads=num_threads)
    if isinstance(result, VideoDecodeError):
        raise result
    return result


def decode_batch(
    paths: Sequence[str | Path],
    frame_indices: Sequence[Sequence[int] | np.ndarray],
    *,
    backend: Backend = "auto",
    num_threads: int = 1,
    infos: Sequence[VideoInfo | None] | None = None,
) -> list[torch.Tensor | VideoDecodeError]:
    """Decodes several videos at once; DALI decodes them as one batch.

    Returns one entry per video: its frames, or the `VideoDecodeError` saying why not. A bad file
    never fails the others.

    Args:
        infos: the videos' `probe` results, where the caller already has them.
    """
    concrete = resolve_backend(backend)
    results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(paths)
    probed: list[VideoInfo | None] = list(infos) if infos is not None else [None] * len(paths)
    wanted = []
    for k, (path, indices) in enumerate(zip(paths, frame_indices, strict=True)):
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        try:
            info = probed[k] or probe(path)
            _check_indices(info, array)
        except VideoDecodeError as e:
            results[k] = e
            continue
        wanted.append((k, info, array))

    dali_items = [item for item in wanted if concrete in ("dali", "dali-cpu")]
    if concrete == "dali" and backend == "auto":
        # "auto" picks, per video, a backend that can decode its codec.
        dali_items = [item for item in dali_items if item[1].codec in DALI_GPU_CODECS]
    if dali_items:
        decoded = decode_dali(
            [info for _, info, _ in dali_items],
            [array for _, _, array in dali_items],
            gpu=concrete == "dali",
            device_id=torch.cuda.current_device() if concrete == "dali" else 0,
        )
        for (k, _, _), item in zip(dali_items, decoded, strict=True):
            results[k] = item
    for k, info, array in wanted:
        if results[k] is not None:
            continue
        # decord, or a codec that "auto" sends past DALI.
        try:
            results[k] = decode_decord(info, array, num_threads=num_threads)
        except VideoDecodeError as e:
            results[k] = e
    return results  # type: ignore[return-value]


def _check_indices(info: VideoInfo, indices: np.ndarray) -> None:
    if indices.size == 0:
        raise VideoDecodeError(info.path, "no frame indices asked for")
    if int(indices.min()) < 0:
        raise VideoDecodeError(info.path, f"frame index {int(indices.min())} is negative")
    if int(indices.max()) >= info.num_frames:
        raise VideoDecodeError(info.path, f"frame {int(indices.max())} asked for, but it has {info.num_frames} frames")


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False
