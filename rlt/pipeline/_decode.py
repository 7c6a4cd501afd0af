"""One decoding interface over DALI (GPU and CPU), torchcodec and decord.

Every backend returns the frames asked for, by index in decode order, as uint8 ``[T, H, W, 3]``
RGB: at native size, or resized and centre-cropped where ``size``/``crop`` are given (inside DALI's
graph for the DALI backends, on the CPU for the others). On the GPU for ``"dali"``, on the CPU
otherwise.

A backend is one decoder's name or a comma-separated chain of them, ``"dali,decord"``: each video
goes to the first decoder of the chain that takes its codec, and a video that decoder fails on is
tried by the next one that takes it. ``"auto"`` is the chain of the fastest decoders installed:
NVDEC where CUDA and DALI are there, then the faster CPU decoder.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rlt._checks import check_choice
from rlt.pipeline._dali import DALI_CPU_CODECS, DALI_GPU_CODECS, decode_dali, unsupported_codec_reason
from rlt.pipeline._decord import decode_decord
from rlt.pipeline._errors import VideoDecodeError
from rlt.pipeline._probe import VideoInfo, probe
from rlt.pipeline._transforms import resize_and_crop

# A decoder's name, "auto", or a comma-separated chain of them ("dali,decord").
Backend = str
Decoder = Literal["dali", "dali-cpu", "torchcodec", "decord"]
DECODERS: tuple[Decoder, ...] = ("dali", "dali-cpu", "torchcodec", "decord")
BACKENDS = ("auto", *DECODERS)
# The CPU decoders in the order "auto" prefers them, the faster first (benchmarks/bench_decode.py).
CPU_DECODERS: tuple[Decoder, ...] = ("torchcodec", "decord")
_CODECS: dict[str, frozenset[str] | None] = {"dali": DALI_GPU_CODECS, "dali-cpu": DALI_CPU_CODECS}


def resolve_backend(backend: Backend) -> tuple[Decoder, ...]:
    """The decoders ``backend`` names, in the order videos are offered to them.

    ``"auto"`` is ``("dali", <CPU decoder>)`` when CUDA and DALI are there, else the CPU decoder
    alone; the CPU decoder is torchcodec where it is installed and loads, else decord.

    Raises:
        ValueError: an unknown name, or ``"dali"`` without CUDA.
    """
    chain: list[Decoder] = []
    for name in check_backend(backend):
        if name == "auto":
            gpu: list[Decoder] = ["dali"] if torch.cuda.is_available() and _dali_installed() else []
            names = [*gpu, _best_cpu_decoder()]
        else:
            names = [name]  # type: ignore[list-item]
        chain += [n for n in names if n not in chain]
    if "dali" in chain and not torch.cuda.is_available():
        raise ValueError(
            "backend 'dali' decodes on the GPU (NVDEC), but torch sees no CUDA device; "
            "use backend 'decord', 'torchcodec' or 'dali-cpu'"
        )
    return tuple(chain)


def check_backend(backend: Backend) -> list[str]:
    """The names of ``backend``'s chain, each checked against `BACKENDS` (CUDA is not asked for).

    Raises:
        ValueError: an unknown name, or not a string.
    """
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or a comma chain, got {backend!r}")
    names = [part.strip() for part in backend.split(",")]
    for name in names:
        check_choice("backend", name, BACKENDS)
    return names


def output_device(backend: Backend) -> torch.device:
    """Where ``backend`` puts frames: the GPU when its first decoder is ``"dali"``."""
    return torch.device("cuda") if resolve_backend(backend)[0] == "dali" else torch.device("cpu")


def takes(decoder: Decoder, codec: str) -> bool:
    """Whether ``decoder`` can decode ``codec`` (FFmpeg's name for it)."""
    codecs = _CODECS.get(decoder)
    return codecs is None or codec in codecs


def decode_frames(
    path: str | Path,
    frame_indices: Sequence[int] | np.ndarray,
    *,
    backend: Backend = "auto",
    size: int | None = None,
    crop: int | None = None,
    num_threads: int = 1,
) -> torch.Tensor:
    """Decodes the frames at ``frame_indices`` (in the order given, repeats allowed).

    Args:
        path: the video file.
        frame_indices: 0-based indices into the video's frames, in decode order.
        backend: ``"dali"`` (NVDEC, GPU), ``"dali-cpu"`` (VP8/VP9/MJPEG), ``"torchcodec"``,
            ``"decord"``, ``"auto"``, or a comma chain of them.
        size: resize the short side to this (antialiased); None keeps the native size.
        crop: centre-crop ``crop x crop`` after resizing; None keeps the whole frame.
        num_threads: decoding threads of the CPU decoders.

    Returns:
        uint8 ``[T, H, W, 3]`` RGB, on the GPU for ``"dali"``.

    Raises:
        VideoDecodeError: the file cannot be decoded, or an index is past its end.
        ValueError: an unknown backend, or ``"dali"`` without CUDA.
    """
    (result,) = decode_batch([path], [frame_indices], backend=backend, size=size, crop=crop, num_threads=num_threads)
    if isinstance(result, VideoDecodeError):
        raise result
    return result


def decode_batch(
    paths: Sequence[str | Path],
    frame_indices: Sequence[Sequence[int] | np.ndarray],
    *,
    backend: Backend = "auto",
    size: int | None = None,
    crop: int | None = None,
    num_threads: int = 1,
    infos: Sequence[VideoInfo | None] | None = None,
) -> list[torch.Tensor | VideoDecodeError]:
    """Decodes several videos at once; DALI decodes its share as one batch.

    Returns one entry per video: its frames (see `decode_frames`), or the `VideoDecodeError`
    saying why not. A bad file never fails the others.

    Args:
        infos: the videos' `probe` results, where the caller already has them.
    """
    chain = resolve_backend(backend)
    results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(paths)
    probed: list[VideoInfo | None] = list(infos) if infos is not None else [None] * len(paths)
    todo: list[_Item] = []
    for k, (path, indices) in enumerate(zip(paths, frame_indices, strict=True)):
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        try:
            info = probed[k] or probe(path)
            _check_indices(info, array)
        except VideoDecodeError as e:
            results[k] = e
            continue
        todo.append(_Item(k, info, array))

    for position, decoder in enumerate(chain):
        mine = [item for item in todo if results[item.k] is None and takes(decoder, item.info.codec)]
        if not mine:
            continue
        later = chain[position + 1 :]
        for item, out in zip(mine, _decode_with(decoder, mine, size, crop, num_threads), strict=True):
            if isinstance(out, VideoDecodeError) and any(takes(d, item.info.codec) for d in later):
                item.error = out  # the next decoder that takes the codec tries it
            else:
                results[item.k] = out
    for item in todo:
        if results[item.k] is None:
            results[item.k] = item.error or VideoDecodeError(
                item.info.path, unsupported_codec_reason(item.info.codec, backend)
            )
    return results  # type: ignore[return-value]


@dataclass
class _Item:
    k: int
    info: VideoInfo
    indices: np.ndarray
    error: VideoDecodeError | None = None


def _decode_with(
    decoder: Decoder, items: list[_Item], size: int | None, crop: int | None, num_threads: int
) -> list[torch.Tensor | VideoDecodeError]:
    if decoder in ("dali", "dali-cpu"):
        gpu = decoder == "dali"
        return decode_dali(
            [item.info for item in items],
            [item.indices for item in items],
            gpu=gpu,
            size=size,
            crop=crop,
            device_id=torch.cuda.current_device() if gpu else 0,
        )
    decode = _cpu_decoder(decoder)
    out: list[torch.Tensor | VideoDecodeError] = []
    for item in items:
        try:
            frames = decode(item.info, item.indices, num_threads=num_threads)
        except VideoDecodeError as e:
            out.append(e)
            continue
        # Resized where decoded: the clip travels on at output size.
        out.append(resize_and_crop(frames, size=size, crop=crop))
    return out


def _cpu_decoder(decoder: Decoder):
    if decoder == "torchcodec":
        from rlt.pipeline._torchcodec import decode_torchcodec

        return decode_torchcodec
    return decode_decord


def _check_indices(info: VideoInfo, indices: np.ndarray) -> None:
    if indices.size == 0:
        raise VideoDecodeError(info.path, "no frame indices asked for")
    if int(indices.min()) < 0:
        raise VideoDecodeError(info.path, f"frame index {int(indices.min())} is negative")
    if int(indices.max()) >= info.num_frames:
        raise VideoDecodeError(info.path, f"frame {int(indices.max())} asked for, but it has {info.num_frames} frames")


@functools.cache
def _best_cpu_decoder() -> Decoder:
    for decoder in CPU_DECODERS:
        if decoder == "torchcodec":
            try:
                from rlt.pipeline._torchcodec import import_torchcodec

                import_torchcodec()
            except (ImportError, OSError, RuntimeError):
                # Not installed, or its FFmpeg libraries are missing: the next one serves.
                continue
        return decoder
    return "decord"


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False
