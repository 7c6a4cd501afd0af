"""Section decode: DALI (NVDEC) at several videos per batch against decord and torchcodec on all cores."""

from __future__ import annotations

import functools
import inspect
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from benchmarks.gpu._context import CROP, FRAMES_PER_CLIP, Context, Recorder, log, ratio, spawn
from benchmarks.gpu._videos import RESOLUTIONS, video_manifest

Clip = tuple[str, np.ndarray, Any]  # a video, the frames of its clip, and its rlt.pipeline.VideoInfo
NVDEC_FPS_1080P = 770  # NVIDIA's H.264 1080p figure per NVDEC engine (Video Codec SDK performance table)

# ---------------------------------------------------------------------------------------------
# Decoding through rlt, with the fallbacks this rlt may still need.


def decode_224(
    paths: list[str], indices: list[np.ndarray], backend: str, infos: list | None = None
) -> list[torch.Tensor]:
    """Each clip's frames, uint8 [16, 224, 224, 3], decoded with ``backend`` through `rlt.pipeline.decode_batch`.

    The decoder resizes and crops where `decode_batch` takes ``size=``/``crop=``; an older
    `decode_batch` decodes at native size and `resize_and_crop` follows, on the frames' device. A
    backend `decode_batch` does not know yet (torchcodec) is called directly. ``infos`` (the videos'
    `probe`) spare every decoder the same re-reading of each container's header. A failed video
    fails the measurement: a benchmark that skips clips measures something else.
    """
    from rlt.pipeline import BACKENDS, VideoDecodeError, decode_batch, resize_and_crop

    if backend == "torchcodec" and backend not in BACKENDS:
        return [_torchcodec_clip(p, ix) for p, ix in zip(paths, indices, strict=True)]
    takes = inspect.signature(decode_batch).parameters
    options: dict[str, Any] = {"infos": infos} if infos is not None and "infos" in takes else {}
    resize = "size" not in takes
    if not resize:
        options.update(size=CROP, crop=CROP)
    clips = []
    for result in decode_batch(paths, indices, backend=backend, num_threads=1, **options):
        if isinstance(result, VideoDecodeError):
            raise RuntimeError(f"{backend} failed to decode a benchmark video: {result}")
        clips.append(resize_and_crop(result, size=CROP, crop=CROP) if resize else result)
    return clips


def decode_path() -> str:
    """How `decode_224` reaches the decoders with this rlt, for the report."""
    from rlt.pipeline import BACKENDS, decode_batch

    takes = inspect.signature(decode_batch).parameters
    how = "decode_batch(size=224, crop=224" if "size" in takes else "resize_and_crop(decode_batch(native size"
    how += ", infos=probed beforehand)" if "infos" in takes else ")"
    return how + ("" if "torchcodec" in BACKENDS else "; torchcodec directly (rlt has no torchcodec backend)")


def videomae_clip(info: Any) -> np.ndarray:
    """The frame indices of a video's VideoMAE clip (ClipSampling() defaults: one 16x4 clip, the centre one)."""
    from rlt.pipeline import ClipSampling, sample_clips

    return sample_clips(info.num_frames, ClipSampling())[0].frame_indices


def _torchcodec_clip(path: str, indices: np.ndarray) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    from rlt.pipeline import resize_and_crop

    decoder = VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC")
    return resize_and_crop(decoder.get_frames_at(indices.tolist()).data, size=CROP, crop=CROP)


def _init_cpu_worker() -> None:
    # One thread per worker: the pool supplies the parallelism (os.cpu_count() workers).
    torch.set_num_threads(1)


def _decode_one(item: tuple[str, Clip]) -> torch.Tensor:
    backend, (path, indices, info) = item
    (clip,) = decode_224([path], [indices], backend, [info])
    return clip


def _decode_one_process(item: tuple[str, Clip]) -> np.ndarray:
    return _decode_one(item).numpy()  # pickled back to the parent: the cost a process pool really has


# ---------------------------------------------------------------------------------------------
# The section


def timed_passes(run_pass: Callable[[], None], clips_per_pass: int, rec: Recorder, min_s: float) -> dict[str, Any]:
    """One warm-up pass, then passes until ``min_s`` seconds have gone by: clips/s over the timed ones."""
    run_pass()
    passes, started, wall = 0, time.perf_counter(), time.time()
    while True:
        run_pass()
        passes += 1
        seconds = time.perf_counter() - started
        if seconds >= min_s or rec.over_budget():
            break
    rate = passes * clips_per_pass / seconds
    return {
        "clips": passes * clips_per_pass,
        "seconds": round(seconds, 3),
        "clips_per_s": round(rate, 2),
        "frames_per_s": round(rate * FRAMES_PER_CLIP, 1),
        "window": (wall, time.time()),
    }


def decode_items(ctx: Context, resolution: str) -> tuple[list[Clip], float]:
    """Each video's VideoMAE clip, and the frames a decoder must decode per clip on average (see
    `frames_to_decode`)."""
    import av

    from rlt.pipeline import probe

    _, paths = video_manifest(ctx, resolution)
    items, decoded = [], []
    for path in paths:
        info = probe(path)
        indices = videomae_clip(info)
        with av.open(path) as container:
            packets = sorted((pk.pts, pk.is_keyframe) for pk in container.demux(video=0) if pk.pts is not None)
        decoded.append(frames_to_decode([i for i, (_, key) in enumerate(packets) if key], indices))
        items.append((path, indices, info))
    return items, statistics.fmean(decoded)


def frames_to_decode(keyframes: list[int], indices: np.ndarray) -> int:
    """Frames a decoder decodes to return ``indices`` (increasing): from the position it is at, or
    from the last keyframe before the next wanted frame when that is further on (a seek). Every
    frame of an intra-only codec is a keyframe, so it decodes only the frames asked for."""
    position, count = -1, 0
    for index in sorted(set(indices.tolist())):
        key = max((k for k in keyframes if k <= index), default=0)
        start = key if key > position else position + 1
        count += index - start + 1
        position = index
    return count


def pool_pass(pool: Executor, fn: Callable[..., Any], backend: str, items: list[Clip]) -> None:
    for _ in pool.map(fn, [(backend, item) for item in items]):
        pass


def batched_pass(ctx: Context, backend: str, batch: int, threads: int, items: list[Clip]) -> None:
    """Decodes ``items`` in batches of ``batch`` videos, ``threads`` batches at once (as the online
    pipeline's workers do, each thread with a DALI pipeline of its own)."""
    device = torch.cuda.current_device() if ctx.cuda else None

    def one(start: int) -> None:
        if device is not None:
            torch.cuda.set_device(device)
        paths, indices, infos = zip(*items[start : start + batch], strict=True)
        decode_224(list(paths), list(indices), backend, list(infos))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(0, len(items), batch)))
    ctx.sync()


def section_decode(rec: Recorder, ctx: Context) -> None:
    cores = os.cpu_count() or 1
    rec.figures.update(path=decode_path(), cpu_workers=cores)
    torch.set_num_threads(1)  # the thread pool's decoders get one thread each, like the processes'
    pools: dict[str, tuple[Executor, Callable[..., Any]]] = {
        "threads": (ThreadPoolExecutor(cores), _decode_one),
        "processes": (
            ProcessPoolExecutor(cores, mp_context=spawn(), initializer=_init_cpu_worker),
            _decode_one_process,
        ),
    }

    def measure(fig: dict[str, Any], key: str, what: str, run: Callable[[], None]) -> dict[str, Any] | None:
        if rec.over_budget():
            rec.skip(what)
            return None
        log(what)
        fig[key] = timed_passes(run, fig["clips_per_pass"], rec, ctx.sizes.min_timed_s)
        rec.save()
        return fig[key]

    try:
        for resolution, (height, width) in RESOLUTIONS.items():
            items, per_clip = decode_items(ctx, resolution)
            fig: dict[str, Any] = {"clips_per_pass": len(items), "frames_decoded_per_clip": round(per_clip, 1)}
            rec.figures[resolution] = fig
            for kind, (pool, fn) in pools.items():
                run = functools.partial(pool_pass, pool, fn, "decord", items)
                measure(fig, f"decord_{kind}", f"{resolution}: decord, {cores} {kind}", run)
            decord: dict[str, float] = {
                k: fig[k]["clips_per_s"] for k in ("decord_threads", "decord_processes") if k in fig
            }
            if decord:
                kind = max(decord, key=decord.__getitem__).removeprefix("decord_")
                fig["decord_all_cores"] = {"pool": kind, "clips_per_s": decord[f"decord_{kind}"]}
                pool, fn = pools[kind]
                run = functools.partial(pool_pass, pool, fn, "torchcodec", items)
                try:
                    measure(fig, "torchcodec", f"{resolution}: torchcodec, {cores} {kind}", run)
                except Exception as e:  # a CPU decoder that fails (torchcodec missing) costs no DALI figures
                    fig["torchcodec"] = {"error": f"{type(e).__name__}: {e}"}
            for batch, threads in ctx.sizes.dali_runs:
                run = functools.partial(batched_pass, ctx, ctx.dali, batch, threads, items)
                what = f"{resolution}: {ctx.dali}, {batch} videos per batch, {threads} at once"
                result = measure(fig, f"dali_vpb{batch}x{threads}", what, run)
                if result is not None:
                    result["decoded_frames_per_s"] = round(result["clips_per_s"] * per_clip, 1)
                    result["utilisation"] = ctx.sampler.window(*result["window"])
            for reader in DALI_READERS:
                key = "dali_" + reader.replace(".", "_")
                what = f"{resolution}: DALI fn.{reader}, {READER_BATCH} clips per batch (experiment)"
                try:
                    pipe = reader_pipeline(ctx, reader, items, READER_BATCH)
                    # Its first clip against rlt's: the same frames, resized a little differently.
                    (video,) = pipe.run()
                    mine = decode_224([items[0][0]], [items[0][1]], ctx.dali, [items[0][2]])[0]
                    theirs = torch.from_dlpack(video[0]).to(mine.device)
                    same_shape = theirs.shape == mine.shape
                    diff = (theirs.float() - mine.float()).abs().mean().item() if same_shape else None
                    result = measure(
                        fig, key, what, functools.partial(reader_pass, ctx, pipe, len(items), READER_BATCH)
                    )
                except Exception as e:  # an experiment: a reader DALI refuses here costs nothing else
                    fig[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
                    continue
                if result is not None:
                    result["decoded_frames_per_s"] = round(result["clips_per_s"] * per_clip, 1)
                    result["utilisation"] = ctx.sampler.window(*result["window"])
                    result["first_clip_mean_abs_diff_to_rlt"] = None if diff is None else round(diff, 2)
                del pipe
            for result in fig.values():
                if isinstance(result, dict):
                    result.pop("window", None)
            rec.save()
            dali_goals(rec, ctx, resolution, height * width)
    finally:
        for pool, _ in pools.values():
            pool.shutdown(cancel_futures=True)


# DALI's readers, which own their files and keep decoders between samples, against the per-sample
# `fn.decoders.video` that rlt uses: each clip as a file-list entry of exactly one 16x4 sequence. An
# experiment for the next decoder of the GPU path, outside the goals. fn.readers.video is GPU-only.
DALI_READERS = ("readers.video", "experimental.readers.video")
READER_BATCH = 16


def reader_pipeline(ctx: Context, reader: str, items: list[Clip], batch: int) -> Any:
    """A built DALI pipeline reading ``items``' clips with ``fn.<reader>``, resized and cropped to 224."""
    import nvidia.dali as dali
    from nvidia.dali import fn, types

    if reader == "readers.video" and not ctx.cuda:
        raise RuntimeError("fn.readers.video runs on the GPU only")
    span = int(items[0][1][-1] - items[0][1][0])
    stride = int(items[0][1][1] - items[0][1][0])
    lines = [f"{path} 0 {int(ix[0])} {int(ix[0]) + span + stride}\n" for path, ix, _ in items]
    file_list = ctx.out / f"file_list_{len(items)}.txt"
    file_list.write_text("".join(lines))
    common = {
        "file_list": str(file_list),
        "sequence_length": len(items[0][1]),
        "stride": stride,
        "step": span + stride,  # one sequence an entry
        "random_shuffle": False,
        "pad_last_batch": True,
        "name": "reader",
    }
    if reader == "readers.video":
        options = {**common, "file_list_frame_num": True, "device": "gpu"}
    else:
        options = {**common, "file_list_format": "frames", "device": "gpu" if ctx.cuda else "cpu"}

    @dali.pipeline_def(
        batch_size=batch,
        num_threads=min(batch, os.cpu_count() or 1),
        device_id=torch.cuda.current_device() if ctx.cuda else None,
        prefetch_queue_depth=2,
    )
    def pipeline() -> Any:
        op = fn.readers.video if reader == "readers.video" else fn.experimental.readers.video
        video, _ = op(**options)
        video = fn.resize(video, resize_shorter=CROP, antialias=True, interp_type=types.INTERP_LINEAR)
        return fn.crop(video, crop=(CROP, CROP))

    pipe = pipeline()
    pipe.build()
    return pipe


def reader_pass(ctx: Context, pipe: Any, clips: int, batch: int) -> None:
    """One epoch of the reader's clips, handed to torch as `decode_224` hands them."""
    for _ in range(-(-clips // batch)):
        (video,) = pipe.run()
        [torch.from_dlpack(video[i]).clone() for i in range(len(video))]
    ctx.sync()


def dali_goals(rec: Recorder, ctx: Context, resolution: str, pixels: int) -> None:
    fig = rec.figures[resolution]
    runs = {k: v for k, v in fig.items() if k.startswith("dali_vpb")}
    if not runs or "decord_all_cores" not in fig:
        return
    key = max(runs, key=lambda k: runs[k]["clips_per_s"])
    best = runs[key]
    fig["dali_best"] = key
    if ctx.nvdec_engines:
        # NVIDIA's per-engine figure is for 1080p; a smaller frame costs proportionally less.
        peak = ctx.nvdec_engines * NVDEC_FPS_1080P * (1920 * 1080) / pixels
        fig["nvdec_peak_fps_estimate"] = round(peak)
        fig["dali_share_of_nvdec_peak"] = round(best["decoded_frames_per_s"] / peak, 3)
    value = ratio(best["clips_per_s"], fig["decord_all_cores"]["clips_per_s"])
    rec.goal(f"decode {resolution}: {ctx.dali} ({key}) / decord all cores", value, ">=", 5)
    busy = best["utilisation"]["decoder_mean_pct"]
    rec.goal(f"decode {resolution}: NVDEC busy while DALI decodes ({key}), mean", busy, ">=", 80, "%")
