"""Does the pipeline reach its GPU goals on this machine? Five sections, one command.

Each section runs in its own process, so a crash, a hang or a CUDA error in one loses none of the
others; OUT/bench_gpu.json and OUT/bench_gpu.md are rewritten after every section (and a section
saves its figures as it goes, so a killed run still leaves them). Every goal is a ratio of two
things measured side by side in the same section, printed next to the goal:

  decode    clips/s of VideoMAE 16x4 clips at 224 from 720p and 1080p H.264 (10 s, 30 fps, GOP 48):
            DALI (NVDEC) at several videos per batch against decord and torchcodec on all CPU cores
            (os.cpu_count() workers, one decoder thread each; decord in threads and in processes,
            the faster kept). Goals: DALI >= 5x decord; NVDEC busy >= 80% while DALI decodes.
            Frames/s decoded, against NVIDIA's ~770 fps of 1080p H.264 per NVDEC engine.
  rlt       run_length_tokenize on a uint8 [B,16,224,224,3] CUDA batch, half static, against one
            device copy of it (goal <= 5x) and against a ViT-B bf16 forward pass on its tokens
            (goal < 1%). CUDA events, median of many.
  train     ViT-B bf16 training step and inference on RLT tokens against every token of the same
            decoded clips: the speed-up against the token ratio (goal >= 0.9 of it).
  online    rlt.train.train on raw 720p videos (OnlinePipeline, DALI) against training on the same
            videos tokenized beforehand: clips/s, and how busy the GPU is (goal >= 80% online).
  tokenize  tokenize_dataset (embedded Ray) with DALI against decord on all cores, same manifest.

    python benchmarks/bench_gpu.py --out DIR [--quick] [--sections decode,rlt,train,online,tokenize]
        [--budget 300] [--total-budget S] [--preset vit_b] [--videos DIR] [--nvdec-engines N] [--allow-cpu]

``--budget`` is each section's soft time budget (it starts no new measurement past it; its process is
killed at 1.5x, at least +60 s); ``--total-budget`` fits the whole run into S seconds, shrinking the
later sections' budgets and skipping those that would not fit.
A report already in DIR keeps the sections this run does not redo, each marked with its run.

Test videos (a static textured background with grain, textured objects moving across it) are
written first with PyAV into DIR/videos and reused by later runs. GPU and NVDEC utilisation come
from NVML (pynvml) when it imports, else from ``nvidia-smi -lms 100``, sampled every 100 ms in the
background; only the samples inside a timed window count. ``--allow-cpu`` runs every section on the
CPU at --quick sizes (DALI as "dali-cpu", on MJPEG videos, which it can decode; the tiny model) to
test this script; its figures say nothing about a GPU. Exit status: 0, 1 when a section failed (its
error is in the report), 2 for bad arguments or no GPU.

One file, past the usual module size, on purpose: it is copied onto bare GPU machines and run as is.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import inspect
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The tree this script sits in is what it measures, installed or not; children and Ray workers too.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

SECTIONS = ("decode", "rlt", "train", "online", "tokenize")
NEEDS_VIDEOS = {"decode", "train", "online", "tokenize"}
RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920)}
CROP = 224
FRAMES_PER_CLIP = 16
Clip = tuple[str, np.ndarray, Any]  # a video, the frames of its clip, and its rlt.pipeline.VideoInfo
DENSE_PER_CLIP = (FRAMES_PER_CLIP // 2) * (CROP // 16) ** 2  # tubelets of 2x16x16: 1568
NVDEC_FPS_1080P = 770  # NVIDIA's H.264 1080p figure per NVDEC engine (Video Codec SDK performance table)
NVDEC_ENGINES = {"H100": 7, "H200": 7, "GH200": 7, "B200": 7, "A100": 5, "A30": 4, "L40": 3, "L4": 4}
NO_CUDA = (
    "error: bench_gpu needs a CUDA GPU (torch sees none); the CPU benchmarks are benchmarks/bench_decode.py, "
    "bench_rlt.py, bench_train.py, bench_loader.py, bench_tokenize.py and bench_stats.py "
    "(--allow-cpu runs this script on the CPU at --quick sizes, to test it)"
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    videos: int  # per resolution
    frames: int  # per video, at 30 fps
    min_timed_s: float  # shortest timed window of a decoder
    dali_batches: tuple[int, ...]
    rlt_batch: int
    repeats: int
    train_clips: int
    train_steps: int
    online_steps: int
    online_videos_per_batch: int
    warm_steps: int


FULL = Sizes(64, 300, 4.0, (4, 16, 32), 32, 50, 32, 10, 30, 16, 3)
QUICK = Sizes(6, 72, 0.5, (2, 6), 4, 5, 4, 2, 4, 2, 1)


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# What a section sees: its options, its device, and a recorder that saves after every figure.


@dataclasses.dataclass
class Context:
    out: Path
    videos: Path
    sizes: Sizes
    device: torch.device
    dali: str  # "dali", or "dali-cpu" with --allow-cpu
    preset: str
    codec: str
    nvdec_engines: int | None
    sampler: UtilSampler

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class Recorder:
    """One section's figures and goals, written atomically to its JSON file after every change."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.budget_s = path, budget_s
        self.started = time.monotonic()
        self.data: dict[str, Any] = {"status": "running", "figures": {}, "goals": [], "notes": []}

    @property
    def figures(self) -> dict[str, Any]:
        return self.data["figures"]

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.budget_s

    def skip(self, what: str) -> None:
        self.note(f"skipped {what}: the section's time budget ({self.budget_s:.0f} s) ran out")
        self.data["truncated"] = True

    def note(self, text: str) -> None:
        log(f"  note: {text}")
        self.data["notes"].append(text)
        self.save()

    def goal(self, figure: str, value: float | None, op: str, target: float, unit: str = "x") -> None:
        compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}[op]
        met = None if value is None else compare(float(value), float(target))
        self.data["goals"].append({"figure": figure, "value": value, "goal": f"{op} {target}{unit}", "met": met})
        shown = "n/a" if value is None else f"{value:.3g}{unit}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[met]
        log(f"  GOAL {figure}: {shown} (goal {op} {target}{unit}) -> {verdict}")
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        write_atomic(self.path, json.dumps(self.data, indent=1, default=str))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Utilisation sampling: NVML in a thread, or nvidia-smi in a subprocess, every 100 ms.


class UtilSampler:
    """Samples the GPU's decoder (NVDEC) and SM utilisation in the background, with timestamps.

    NVML through pynvml when it imports; else ``nvidia-smi --query-gpu=timestamp,... -lms 100``,
    whose own timestamps survive any buffering of its output. `window` keeps the samples inside a
    timed region, so set-up and warm-up never count.
    """

    def __init__(self, sample: bool) -> None:
        self.samples: list[tuple[float, float | None, float | None]] = []  # (unix time, decoder %, gpu %)
        self.source = "none: no CUDA device, or a section that does not sample"
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        if sample:
            self._start(_gpu_uuid())

    def _start(self, uuid: str | None) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml (pynvml), every 100 ms"
            self._thread = threading.Thread(target=self._poll_nvml, args=(pynvml, handle), daemon=True)
        except Exception as e:  # ImportError or an NVMLError: nvidia-smi reads the same counters
            why = f"{type(e).__name__}: {e}"
            if shutil.which("nvidia-smi") is None:
                self.source = f"none: no pynvml ({why}) and no nvidia-smi"
                return
            if uuid and _run(["nvidia-smi", "--id", uuid, "--query-gpu=name", "--format=csv,noheader"]) is None:
                uuid = None  # an id nvidia-smi does not take: all GPUs' lines would mix, so take GPU 0
            query = "--query-gpu=timestamp,utilization.decoder,utilization.gpu"
            cmd = [
                "nvidia-smi",
                "--id",
                uuid or "0",
                query,
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
            ]
            if shutil.which("stdbuf"):
                cmd = ["stdbuf", "-oL", *cmd]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = f"nvidia-smi -lms 100 (no pynvml: {why})"
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        self._thread.start()

    def _poll_nvml(self, pynvml: Any, handle: Any) -> None:
        while not self._stop.wait(0.1):
            try:
                decoder = float(pynvml.nvmlDeviceGetDecoderUtilization(handle)[0])
                gpu = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                continue
            self.samples.append((time.time(), decoder, gpu))

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None  # set before the thread starts
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 3:
                continue
            self.samples.append((_smi_time(parts[0]), _number(parts[1]), _number(parts[2])))

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Mean and p90 of decoder and GPU utilisation (%) over samples taken in [start, end] (unix time)."""
        if self._thread is not None:
            # Until a sample past the window arrives: nvidia-smi's lines may come in blocks (~10 s of
            # them in 4 KB) where stdbuf cannot make its output line-buffered.
            deadline = time.time() + 12
            while time.time() < deadline and not any(s[0] >= end for s in self.samples[-5:]):
                time.sleep(0.1)
        inside = [s for s in list(self.samples) if start <= s[0] <= end]
        summary: dict[str, Any] = {"source": self.source, "samples": len(inside), "window_s": round(end - start, 2)}
        for column, name in ((1, "decoder"), (2, "gpu")):
            values: list[float] = sorted(v for s in inside if (v := s[column]) is not None)
            summary[f"{name}_mean_pct"] = round(statistics.fmean(values), 1) if values else None
            summary[f"{name}_p90_pct"] = round(float(np.percentile(values, 90)), 1) if values else None
        return summary

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


def _smi_time(text: str) -> float:
    """nvidia-smi's local timestamp as unix time; the time of reading where it has another form."""
    for form in ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S"):
        with suppress(ValueError):
            return datetime.datetime.strptime(text, form).timestamp()
    return time.time()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def _gpu_uuid() -> str | None:
    # By UUID, because nvidia-smi's numbering need not follow CUDA's (CUDA_DEVICE_ORDER, CUDA_VISIBLE_DEVICES).
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


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
    backend, (path, indices, info) = item
    (clip,) = decode_224([path], [indices], backend, [info])
    return clip.numpy()  # pickled back to the parent: the cost a process pool really has


# ---------------------------------------------------------------------------------------------
# Test videos: generated once per (codec, length), reused by every section and later runs.


def scene_frames(height: int, width: int, frames: int, seed: int) -> Iterator[np.ndarray]:
    """RGB uint8 frames: a static textured background with a 5-frame cycle of grain (so the encoder
    codes residuals everywhere, as on camera footage, while RLT still finds it static) and eight
    striped objects crossing it at different speeds. Geometry is relative to the frame, so 720p and
    1080p videos of one seed show the same scene."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / height
    phase = rng.uniform(0, 2 * np.pi, (3, 2))
    texture = rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    background = np.stack(
        [100 + 45 * np.sin(xs * (9 + 4 * c) + phase[c, 0]) * np.cos(ys * (7 + 3 * c) + phase[c, 1]) for c in range(3)],
        axis=-1,
    ).astype(np.int16)
    background += texture
    grainy = [
        np.clip(background + rng.integers(-3, 4, (height, width, 1), dtype=np.int16), 0, 255).astype(np.uint8)
        for _ in range(5)
    ]
    objects = []
    for _ in range(8):
        h, w = int(rng.uniform(0.12, 0.3) * height), int(rng.uniform(0.12, 0.3) * height)
        stripes = (np.sin(np.arange(w) / max(2.0, rng.uniform(0.01, 0.03) * height)) > 0)[None, :, None]
        colour_a, colour_b = rng.integers(0, 256, (2, 3))
        sprite = np.where(stripes, colour_a, colour_b).astype(np.uint8).repeat(h, axis=0)
        velocity = rng.uniform(0.002, 0.01, 2) * np.array([height, width]) * rng.choice([-1, 1], 2)
        objects.append((sprite, rng.uniform(0, 1, 2) * np.array([height - h, width - w]), velocity))
    for f in range(frames):
        frame = grainy[f % len(grainy)].copy()
        for sprite, start, velocity in objects:
            room = np.array([height - sprite.shape[0], width - sprite.shape[1]])
            # A triangle wave: the object bounces off the edges.
            y, x = (room - np.abs((start + f * velocity) % (2 * room) - room)).astype(int)
            frame[y : y + sprite.shape[0], x : x + sprite.shape[1]] = sprite
        yield frame


def _write_video(item: tuple[str, int, int, int, int, str]) -> None:
    path, height, width, frames, seed, codec = item
    import av

    tmp = Path(path).with_name(f".{Path(path).name}.tmp{Path(path).suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream({"h264": "libx264", "mjpeg": "mjpeg"}[codec], rate=30)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec == "h264" else "yuvj420p"
        stream.thread_count = 1  # the pool runs one video per core
        if codec == "h264":
            stream.options = {"crf": "23", "preset": "veryfast", "g": "48", "keyint_min": "48"}
        for array in scene_frames(height, width, frames, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def video_manifest(ctx: Context, resolution: str) -> tuple[Path, list[str]]:
    manifest = ctx.videos / f"manifest_{resolution}.csv"
    if not manifest.is_file():
        raise RuntimeError(f"{manifest} is missing: the videos step did not finish (see its entry)")
    with open(manifest) as f:
        paths = [str(ctx.videos / row["path"]) for row in csv.DictReader(f)]
    return manifest, paths[: ctx.sizes.videos]


def section_videos(rec: Recorder, ctx: Context) -> None:
    suffix = {"h264": ".mp4", "mjpeg": ".avi"}[ctx.codec]
    for resolution, (height, width) in RESOLUTIONS.items():
        names = [f"{resolution}_{i:03d}{suffix}" for i in range(ctx.sizes.videos)]
        todo = [
            (str(ctx.videos / n), height, width, ctx.sizes.frames, i, ctx.codec)
            for i, n in enumerate(names)
            if not (ctx.videos / n).exists()
        ]
        started = time.perf_counter()
        if todo:
            log(f"writing {len(todo)} {resolution} {ctx.codec} videos of {ctx.sizes.frames} frames")
            ctx.videos.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(os.cpu_count(), mp_context=_spawn()) as pool:
                list(pool.map(_write_video, todo))
        with open(ctx.videos / f"manifest_{resolution}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((n, i % 2) for i, n in enumerate(names))
        size = sum((ctx.videos / n).stat().st_size for n in names)
        rec.figures[resolution] = {
            "videos": len(names),
            "written_now": len(todo),
            "seconds": round(time.perf_counter() - started, 1),
            "frames": ctx.sizes.frames,
            "codec": ctx.codec,
            "mbit_per_s": round(8 * size / len(names) / (ctx.sizes.frames / 30) / 1e6, 2),
        }
        rec.save()


# ---------------------------------------------------------------------------------------------
# 1. decode


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
    """Each video's VideoMAE clip (ClipSampling() defaults), and the frames a decoder must decode per
    clip on average (see `frames_to_decode`)."""
    import av

    from rlt.pipeline import ClipSampling, probe, sample_clips

    _, paths = video_manifest(ctx, resolution)
    items, decoded = [], []
    for path in paths:
        info = probe(path)
        indices = sample_clips(info.num_frames, ClipSampling())[0].frame_indices
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


def batched_pass(ctx: Context, backend: str, batch: int, items: list[Clip]) -> None:
    for i in range(0, len(items), batch):
        paths, indices, infos = zip(*items[i : i + batch], strict=True)
        decode_224(list(paths), list(indices), backend, list(infos))
    ctx.sync()


def section_decode(rec: Recorder, ctx: Context) -> None:
    cores = os.cpu_count() or 1
    rec.figures.update(path=decode_path(), cpu_workers=cores)
    torch.set_num_threads(1)  # the thread pool's decoders get one thread each, like the processes'
    pools: dict[str, tuple[Executor, Callable[..., Any]]] = {
        "threads": (ThreadPoolExecutor(cores), _decode_one),
        "processes": (
            ProcessPoolExecutor(cores, mp_context=_spawn(), initializer=_init_cpu_worker),
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
            for batch in ctx.sizes.dali_batches:
                run = functools.partial(batched_pass, ctx, ctx.dali, batch, items)
                result = measure(fig, f"dali_vpb{batch}", f"{resolution}: {ctx.dali}, {batch} videos per batch", run)
                if result is not None:
                    result["decoded_frames_per_s"] = round(result["clips_per_s"] * per_clip, 1)
                    result["utilisation"] = ctx.sampler.window(*result["window"])
            for result in fig.values():
                if isinstance(result, dict):
                    result.pop("window", None)
            rec.save()
            dali_goals(rec, ctx, resolution, height * width)
    finally:
        for pool, _ in pools.values():
            pool.shutdown(cancel_futures=True)


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
    ratio = _ratio(best["clips_per_s"], fig["decord_all_cores"]["clips_per_s"])
    rec.goal(f"decode {resolution}: {ctx.dali} ({key}) / decord all cores", ratio, ">=", 5)
    busy = best["utilisation"]["decoder_mean_pct"]
    rec.goal(f"decode {resolution}: NVDEC busy while DALI decodes ({key}), mean", busy, ">=", 80, "%")


def _spawn() -> Any:
    import multiprocessing

    # Not fork: this process may hold a CUDA context and DALI's threads.
    return multiprocessing.get_context("spawn")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# ---------------------------------------------------------------------------------------------
# 2. rlt


def median_ms(ctx: Context, fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn``: CUDA events on the GPU (the stream's time), perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    ctx.sync()
    if ctx.cuda:
        events = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def section_rlt(rec: Recorder, ctx: Context) -> None:
    from rlt.pipeline import run_length_tokenize
    from rlt.train import PRESETS, VideoViT

    b = ctx.sizes.rlt_batch
    generator = torch.Generator().manual_seed(0)
    clips_BTHWC = torch.randint(0, 256, (b, 16, CROP, CROP, 3), dtype=torch.uint8, generator=generator)
    clips_BTHWC[:, :, : CROP // 2] = clips_BTHWC[:, :1, : CROP // 2]  # the top half of each clip is static
    clips_BTHWC = clips_BTHWC.to(ctx.device)
    repeats = ctx.sizes.repeats
    log(f"RLT against a copy, {b} clips, median of {repeats}")
    rlt_ms = median_ms(ctx, lambda: run_length_tokenize(clips_BTHWC), repeats)
    copy_ms = median_ms(ctx, lambda: clips_BTHWC.clone(), repeats)
    packed = run_length_tokenize(clips_BTHWC)
    rec.figures.update(
        batch=list(clips_BTHWC.shape),
        kept_ratio=round(packed.num_tokens / packed.dense_tokens, 4),
        rlt_ms=round(rlt_ms, 4),
        copy_ms=round(copy_ms, 4),
        copy_gb_per_s=round(2 * clips_BTHWC.numel() / copy_ms / 1e6, 1),  # read + write
        rlt_clips_per_s=round(b / rlt_ms * 1e3, 1),
    )
    rec.goal("rlt: RLT / one device copy of the batch", _ratio(rlt_ms, copy_ms), "<=", 5)

    log(f"{ctx.preset} forward on the batch's {packed.num_tokens} tokens")
    model = VideoViT(PRESETS[ctx.preset](400)).to(ctx.device).eval()
    on = packed.to(ctx.device)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)

    @torch.no_grad()
    def forward() -> None:
        with autocast:
            model(on.tokens, on.positions, on.lengths, on.cu_seqlens)

    vit_ms = median_ms(ctx, forward, max(3, repeats // 5))
    rec.figures.update(model=ctx.preset, vit_forward_ms=round(vit_ms, 3))
    share = rlt_ms / vit_ms
    rec.figures["rlt_share_of_forward"] = round(share, 5)
    rec.goal(f"rlt: RLT as a share of a {ctx.preset} bf16 forward on its tokens", round(100 * share, 3), "<", 1, "%")


# ---------------------------------------------------------------------------------------------
# 3. train


def decoded_batch(ctx: Context, paths: list[str]) -> tuple[torch.Tensor, str]:
    """uint8 [B, 16, 224, 224, 3] on the device: each video's centre clip, decoded by DALI (decord if DALI fails)."""
    from rlt.pipeline import ClipSampling, probe, sample_clips

    indices = [sample_clips(probe(p).num_frames, ClipSampling())[0].frame_indices for p in paths]
    try:
        clips = decode_224(paths, indices, ctx.dali)
        backend = ctx.dali
    except Exception as e:  # the train figures do not depend on who decoded
        log(f"  {ctx.dali} failed ({type(e).__name__}: {e}); decoding with decord")
        clips, backend = decode_224(paths, indices, "decord"), "decord"
    return torch.stack([c.to(ctx.device) for c in clips]), backend


def section_train(rec: Recorder, ctx: Context) -> None:
    import torch.nn.functional as F

    from rlt.pipeline import RLTConfig
    from rlt.train import PRESETS, VideoViT, param_groups

    _, paths = video_manifest(ctx, "720p")
    paths = (paths * math.ceil(ctx.sizes.train_clips / len(paths)))[: ctx.sizes.train_clips]
    log(f"decoding {len(paths)} clips from 720p videos")
    frames_BTHWC, backend = decoded_batch(ctx, paths)
    rlt = RLTConfig()
    packs = {
        "rlt": rlt.tokenize(frames_BTHWC),
        "dense": dataclasses.replace(rlt, drop_policy="none").tokenize(frames_BTHWC),
    }
    kept, dense = packs["rlt"].num_tokens, packs["dense"].num_tokens
    labels = (torch.arange(len(paths)) % 2).to(ctx.device)
    rec.figures.update(model=ctx.preset, clips=len(paths), decoder=backend, tokens_rlt=kept, tokens_dense=dense)
    rec.figures["token_ratio"] = round(dense / kept, 3)
    rec.save()

    torch.manual_seed(0)
    model = VideoViT(PRESETS[ctx.preset](400)).to(ctx.device)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05, layer_decay=0.75), lr=1e-4)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)

    def train_step(name: str) -> None:
        p = packs[name]
        with autocast:
            logits = model(p.tokens, p.positions, p.lengths, p.cu_seqlens)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step(name: str) -> None:
        p = packs[name]
        with autocast:
            model(p.tokens, p.positions, p.lengths, p.cu_seqlens)

    for mode, step in (("train", train_step), ("infer", infer_step)):
        if rec.over_budget():
            rec.skip(mode)
            continue
        log(f"{mode}: {ctx.sizes.train_steps} steps each on RLT and dense tokens, alternating")
        for name in packs:  # warm-up
            for _ in range(2):
                step(name)
        times: dict[str, list[float]] = {name: [] for name in packs}
        for _ in range(ctx.sizes.train_steps):
            for name in packs:  # alternating, so drift in the machine's speed hits both alike
                ctx.sync()
                started = time.perf_counter()
                step(name)
                ctx.sync()
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(t) for name, t in times.items()}
        speedup = median["dense"] / median["rlt"]
        rec.figures[mode] = {
            **{f"{name}_ms": round(1e3 * s, 2) for name, s in median.items()},
            **{f"{name}_clips_per_s": round(len(paths) / s, 1) for name, s in median.items()},
            "rlt_tokens_per_s": round(kept / median["rlt"]),
            "dense_tokens_per_s": round(dense / median["dense"]),
            "speedup": round(speedup, 3),
        }
        rec.goal(f"train: {mode} speed-up / token ratio ({ctx.preset})", round(speedup / (dense / kept), 3), ">=", 0.9)


# ---------------------------------------------------------------------------------------------
# 4. online


def steady_rate(run: Path, called_at: float, warm: int) -> tuple[dict[str, Any], tuple[float, float]]:
    """Clips/s over the steps after ``warm`` (from the run's metrics.jsonl) and that window in unix time."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    if len(steps) <= warm:
        raise RuntimeError(f"{run}: {len(steps)} steps, not more than the {warm} warm-up steps")
    timed = steps[warm:]
    seconds = timed[-1]["seconds"] - steps[warm - 1]["seconds"] if warm else timed[-1]["seconds"]
    clips, tokens = sum(s["clips"] for s in timed), sum(s["tokens"] for s in timed)
    start = called_at + (steps[warm - 1]["seconds"] if warm else 0.0)
    figures = {
        "steps_timed": len(timed),
        "clips": clips,
        "seconds": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "kept_ratio": round(statistics.fmean(s["kept_ratio"] for s in timed), 4),
    }
    return figures, (start, called_at + timed[-1]["seconds"])


def job_batch() -> dict[str, Any]:
    """Videos decoded together inside a shard (one DALI batch), where this rlt's tokenize job takes it."""
    from rlt.tokenize_offline import tokenize_dataset

    return {"videos_per_batch": 8} if "videos_per_batch" in inspect.signature(tokenize_dataset).parameters else {}


def section_online(rec: Recorder, ctx: Context) -> None:
    from rlt.pipeline import ClipSampling
    from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
    from rlt.train import TrainConfig, train

    manifest, paths = video_manifest(ctx, "720p")
    work = ctx.out / "work" / "online"
    shutil.rmtree(work, ignore_errors=True)
    vpb, warm = ctx.sizes.online_videos_per_batch, ctx.sizes.warm_steps
    cores = os.cpu_count() or 1
    config = TrainConfig(
        preset=ctx.preset,
        epochs=None,
        max_steps=ctx.sizes.online_steps + warm,
        lr=1e-4,
        videos_per_batch=vpb,
        backend=ctx.dali,
        checkpoint_every=10**9,  # only the final save, after the timed steps
        keep_checkpoints=1,
        num_workers=min(4, cores) if ctx.cuda else 0,
        max_tokens=DENSE_PER_CLIP * vpb,  # set below for the offline run, once tokens per clip are known
    )
    rec.figures.update(
        model=ctx.preset, videos=len(paths), videos_per_batch=vpb, steps=config.max_steps, warm_steps=warm
    )
    try:
        log(f"online: train {config.max_steps} steps from raw 720p videos, {ctx.dali}, {vpb} videos per batch")
        called_at = time.time()
        train(manifest, work / "run_online", config, online=True, device=ctx.device)
        online, window = steady_rate(work / "run_online", called_at, warm)
        online["utilisation"] = ctx.sampler.window(*window)
        rec.figures["online"] = online
        busy = online["utilisation"]["gpu_mean_pct"]
        rec.goal("online: GPU busy while training online (mean)", busy, ">=", 80, "%")
        if rec.over_budget():
            rec.skip("the offline run")
            return

        log("offline: tokenize the same videos (4 clips each), then train from the dataset")
        sampling = ClipSampling(clips_per_video=4)
        tokenize_config = TokenizeConfig(shard_size=max(1, len(paths) // cores), sampling=sampling, backend=ctx.dali)
        summary = tokenize_dataset(manifest, work / "dataset", tokenize_config, workers=cores, **job_batch())
        # The same clips per micro-batch on average as online, so batch size does not decide the race.
        per_clip = summary.tokens / max(summary.clips, 1)
        config = dataclasses.replace(config, max_tokens=max(DENSE_PER_CLIP, math.ceil(vpb * per_clip)))
        rec.figures["offline_dataset"] = {
            "clips": summary.clips,
            "tokenize_seconds": round(summary.seconds, 1),
            "max_tokens": config.max_tokens,
        }
        called_at = time.time()
        train(work / "dataset", work / "run_offline", config, device=ctx.device)
        offline, window = steady_rate(work / "run_offline", called_at, warm)
        offline["utilisation"] = ctx.sampler.window(*window)
        rec.figures["offline"] = offline
        rec.figures["online_over_offline_clips_per_s"] = _ratio(online["clips_per_s"], offline["clips_per_s"])
        rec.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints of a ViT-B and a dataset: not figures


# ---------------------------------------------------------------------------------------------
# 5. tokenize


def section_tokenize(rec: Recorder, ctx: Context) -> None:
    import logging

    import ray

    from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset

    manifest, paths = video_manifest(ctx, "720p")
    cores = os.cpu_count() or 1
    work = ctx.out / "work" / "tokenize"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shard_size = max(1, len(paths) // cores)  # at least as many shards as workers
    batch = job_batch()
    rec.figures.update(videos=len(paths), workers=cores, shard_size=shard_size, **batch)
    warm = ctx.sizes is FULL
    # Ray started here, once: its start-up is not the tokenizer's speed.
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, object_store_memory=200 * 2**20)
    try:
        rec.figures["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        # DALI tasks ask for the job's default GPU share; decord tasks for none, so every core runs one.
        for backend, gpus_per_task in ((ctx.dali, None), ("decord", 0.0)):
            if rec.over_budget():
                rec.skip(f"tokenize with {backend}")
                continue
            config = TokenizeConfig(shard_size=shard_size, backend=backend)
            options: dict[str, Any] = {"workers": cores, "gpus_per_task": gpus_per_task, **batch}
            if warm:  # Ray's workers, their imports and CUDA contexts, on one video per worker first
                (work / "warm.csv").write_text("path,label\n" + "".join(f"{p},0\n" for p in paths[:cores]))
                tokenize_dataset(work / "warm.csv", work / f"warm_{backend}", config, **options)
            share = "the job's default" if gpus_per_task is None else gpus_per_task
            log(f"tokenize {len(paths)} videos with {backend}, {cores} workers, GPU share per task: {share}")
            summary = tokenize_dataset(manifest, work / backend, config, **options)
            rec.figures[backend] = {
                "seconds": round(summary.seconds, 2),
                "videos_per_s": round(summary.videos / summary.seconds, 2),
                "clips": summary.clips,
                "failed": summary.failed,
                "kept_ratio": round(summary.kept_ratio, 4),
                "gpus_per_task": share,
                "ray_workers_warm": warm,
            }
            rec.save()
        if ctx.dali in rec.figures and "decord" in rec.figures:
            ratio = _ratio(rec.figures[ctx.dali]["videos_per_s"], rec.figures["decord"]["videos_per_s"])
            rec.figures["dali_over_decord_videos_per_s"] = ratio
            log(f"  tokenize: {ctx.dali} / decord on all cores = {ratio}x (no goal set)")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The machine, and the parent that runs each section in its own process.


# Run in a child: a native library that crashes on import (a DALI or decord wheel built for another
# system) must not take the parent, and its report, with it. av before decord, as rlt does.
_VERSIONS = """
import importlib, json, platform
found = {"python": platform.python_version()}
for name, module in (("torch", "torch"), ("av", "av"), ("decord", "decord"), ("dali", "nvidia.dali"),
                     ("torchcodec", "torchcodec"), ("ray", "ray"), ("numpy", "numpy"), ("rlt", "rlt")):
    try:
        found[name] = str(getattr(importlib.import_module(module), "__version__", "importable, no __version__"))
    except Exception as e:
        found[name] = f"not importable ({type(e).__name__}: {str(e)[:120]})"
print(json.dumps(found))
"""


def versions() -> dict[str, str]:
    out = _run([sys.executable, "-c", _VERSIONS], timeout=180) or ""
    try:
        return json.loads(out.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"the version probe failed (it printed {out[-200:]!r})"}


def machine_info(cuda: bool) -> dict[str, Any]:
    cpu_model = ""
    if Path("/proc/cpuinfo").is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = match.group(1) if match else ""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "versions": versions(),
        "git_commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "torch_cuda": torch.version.cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"]),
            "driver_cuda": (re.findall(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]) or "") or [None])[0],
        }
    return info


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def nvdec_engines(name: str) -> int | None:
    for model, engines in sorted(NVDEC_ENGINES.items(), key=lambda kv: -len(kv[0])):  # "GH200" before "H200"
        if model in name:
            return engines
    return None


def run_child(args: argparse.Namespace, cuda: bool) -> int:
    """The section named by --run-section, in this process; its figures go to OUT/.sections/NAME.json."""
    name = args.run_section
    sizes = QUICK if args.quick or args.allow_cpu else FULL
    device = torch.device("cuda" if cuda else "cpu")
    ctx = Context(
        out=args.out,
        videos=args.videos or args.out / "videos" / f"{args.codec}_{sizes.frames}f",
        sizes=sizes,
        device=device,
        dali="dali" if cuda else "dali-cpu",
        preset=args.preset or ("vit_b" if cuda else "tiny"),
        codec=args.codec,
        nvdec_engines=args.nvdec_engines or (nvdec_engines(torch.cuda.get_device_name(0)) if cuda else None),
        sampler=UtilSampler(cuda and name in ("decode", "online")),
    )
    rec = Recorder(args.out / ".sections" / f"{name}.json", args.budget)
    rec.data.update(sizes="full" if sizes is FULL else "quick", utilisation_source=ctx.sampler.source)
    sections = {"videos": section_videos, "decode": section_decode, "rlt": section_rlt, "train": section_train,
                "online": section_online, "tokenize": section_tokenize}  # fmt: skip
    try:
        sections[name](rec, ctx)
        rec.data["status"] = "partial" if rec.data.get("truncated") else "ok"
    except BaseException as e:  # recorded, then the parent goes on with the next section
        rec.data.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        log(f"{name} failed: {type(e).__name__}: {e}")
    finally:
        ctx.sampler.close()
        rec.save()
    return 0 if rec.data["status"] != "error" else 1


_running: subprocess.Popen[str] | None = None  # the section now running, for the SIGTERM handler


def run_section_process(name: str, args: argparse.Namespace, budget: float, limit: float) -> dict[str, Any]:
    """Runs one section in a child process (soft ``budget``, killed at ``limit`` s); returns what it recorded."""
    global _running
    path = args.out / ".sections" / f"{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--budget", str(budget), "--run-section", name]
    started = time.monotonic()
    # Its own process group, so a hung section goes with everything it started (Ray, pools); and it
    # dies with this process, so a run killed at its time limit leaves nothing holding the GPU.
    child = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, preexec_fn=_die_with_parent
    )
    _running = child
    tail: list[str] = []

    def tee() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            tail.append(line)
            del tail[:-40]

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    try:
        code, killed = child.wait(timeout=limit), None
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        code, killed = child.wait(), f"was killed after {limit:.0f} s (soft budget {budget:.0f} s)"
    _running = None
    reader.join(timeout=10)
    result = json.loads(path.read_text()) if path.is_file() else {"figures": {}, "goals": [], "notes": []}
    result["wall_s"] = round(time.monotonic() - started, 1)
    if killed or (code != 0 and result.get("status") != "error"):
        how = killed or (f"died of signal {-code}" if code < 0 else f"exited with status {code}")
        result.update(status="error", error=f"the section's process {how}; its figures up to then are kept")
        result["stderr_tail"] = "".join(tail)[-4000:]
    return result


def _die_with_parent() -> None:
    import ctypes

    with suppress(OSError, AttributeError):  # Linux only; elsewhere the SIGTERM handler still cleans up
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _on_sigterm(signum: int, frame: Any) -> None:
    if _running is not None:
        with suppress(ProcessLookupError):
            os.killpg(_running.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    gpu = machine.get("gpu", {})
    facts = {**{k: v for k, v in machine.items() if k not in ("gpu", "versions")}, **gpu, **machine["versions"]}
    lines = [
        f"# bench_gpu: {gpu.get('name', 'CPU only')} on {machine['hostname']}",
        f"Started {report['started']}: `{' '.join(['bench_gpu.py', *report['argv']])}`. {report.get('warning', '')}",
        "| machine | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in facts.items()),
        "## Goals",
        "| section | figure | value | goal | met |\n| --- | --- | --- | --- | --- |",
    ]
    for name, section in report["sections"].items():
        for g in section.get("goals", []):
            met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
            lines[-1] += f"\n| {name} | {g['figure']} | {g['value']} | {g['goal']} | {met} |"
    for name, section in report["sections"].items():
        earlier = (
            "" if section.get("run_started") == report["started"] else f", from the run of {section.get('run_started')}"
        )
        lines.append(f"## {name}: {section.get('status')} ({section.get('wall_s', 0)} s{earlier})")
        if section.get("error"):
            detail = (section.get("traceback") or section.get("stderr_tail") or "")[-2000:]
            lines.append(f"```\n{section['error']}\n{detail}\n```")
        lines += ["\n".join(f"- {note}" for note in section.get("notes", []))]
        rows = [f"| {k} | {v} |" for k, v in _flatten(section.get("figures", {}))]
        lines += ["| figure | value |\n| --- | --- |\n" + "\n".join(rows)] if rows else []
    return "\n\n".join(line for line in lines if line) + "\n"


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json, bench_gpu.md, videos")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--budget", type=float, help="seconds per section (default 300, 120 with --quick)")
    parser.add_argument(
        "--total-budget", type=float, help="seconds for the whole run: later sections get less, or are skipped"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU at --quick sizes, to test the script")
    parser.add_argument("--preset", help="model of rlt/train/online (default vit_b; tiny with --allow-cpu)")
    parser.add_argument("--codec", choices=("h264", "mjpeg"), help="test videos (default h264; mjpeg with --allow-cpu)")
    parser.add_argument("--videos", type=Path, help="folder of the test videos (default OUT/videos/CODEC_NNf)")
    parser.add_argument("--nvdec-engines", type=int, help="NVDEC engines of the GPU (default: from its name)")
    parser.add_argument("--run-section", choices=("videos", *SECTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.codec = args.codec or ("mjpeg" if args.allow_cpu else "h264")
    args.budget = args.budget or (120.0 if args.quick or args.allow_cpu else 300.0)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.run_section:
        return run_child(args, cuda)

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "bench_gpu.json"
    report: dict[str, Any] = {"schema": 1, "sections": {}}
    if report_path.is_file():  # sections of an earlier run that this one does not redo are kept
        with suppress(json.JSONDecodeError):
            report["sections"] = json.loads(report_path.read_text()).get("sections", {})
    report.update(started=time.strftime("%Y-%m-%d %H:%M:%S %z"), argv=args.argv, machine=machine_info(cuda))
    if not cuda:
        report["warning"] = "--allow-cpu: every section ran on the CPU; these figures say nothing about a GPU"
    machine = report["machine"]
    log(f"{machine.get('gpu', {}).get('name', 'CPU')} on {machine['hostname']}, {machine['cpu_count']} CPUs; "
        f"sections {','.join(args.sections)}, budget {args.budget:.0f} s each")  # fmt: skip

    def save() -> None:
        write_atomic(report_path, json.dumps(report, indent=1, default=str))
        write_atomic(args.out / "bench_gpu.md", render_markdown(report))

    signal.signal(signal.SIGTERM, _on_sigterm)
    save()
    deadline = time.monotonic() + (args.total_budget or math.inf)
    steps = (["videos"] if NEEDS_VIDEOS & set(args.sections) else []) + args.sections
    for name in steps:
        left = deadline - time.monotonic() - 15  # kept for writing the report
        if left < 30:
            note = f"not started: --total-budget {args.total_budget:.0f} s had {max(left, 0):.0f} s left"
            report["sections"][name] = {"status": "skipped", "notes": [note], "run_started": report["started"]}
            log(f"== {name}: {note}")
            save()
            continue
        budget = min(args.budget, 0.7 * left)
        log(f"== {name} (budget {budget:.0f} s)")
        result = run_section_process(name, args, budget, limit=min(budget + max(60.0, budget / 2), left))
        result["run_started"] = report["started"]
        report["sections"][name] = result
        save()
        error = f": {result['error']}" if result.get("error") else ""
        log(f"== {name}: {result.get('status')} in {result['wall_s']} s{error}")
    log(f"wrote {report_path} and {args.out / 'bench_gpu.md'}")
    for name in steps:
        for g in report["sections"][name].get("goals", []):
            state = {True: "met ", False: "MISS", None: "n/a "}[g["met"]]
            log(f"  {state} {g['figure']}: {g['value']} (goal {g['goal']})")
    failed = [n for n in steps if report["sections"][n].get("status") == "error"]
    if failed:
        log(f"failed sections: {', '.join(failed)} (errors in the report)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
