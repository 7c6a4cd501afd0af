"""How fast does each decoder decode clips, and what does rlt's `decode_frames` add to a raw decoder?

Generated H.264 videos at 240p, 480p and 720p (96 frames, 30 fps, keyframe every 48 frames); each
clip is 16 frames at an interval of 4 (VideoMAE's 16x4), ``--clips`` evenly spaced clips a video.
Every decoder gets the same clips, opens the file anew for each clip (as the pipeline does) and
returns the clip's RGB uint8 frames at native size. The decoders are timed in turn within each
round, so a slow spell of the machine falls on all of them; time is the median of ``--repeats``
rounds after one round of warm-up.

  pyav            PyAV, one thread: seek to the keyframe before the clip, decode forward, keep the
                  frames asked for (frame timestamps read beforehand, untimed). The CPU's practical
                  limit for one core, and the baseline of "x pyav"
  decord          decord.VideoReader(path, num_threads=1).get_batch(indices).asnumpy(); the
                  baseline of "x decord time"
  decord-N        the same on all cores (num_threads=N, N = os.cpu_count())
  torchcodec      VideoDecoder(path, seek_mode="exact", dimension_order="NHWC",
                  num_ffmpeg_threads=1).get_frames_at(indices); "exact" scans the file's packets on
                  opening, which is part of its cost
  rlt-decord      rlt.pipeline.decode_frames(path, indices, backend="decord"), one thread: the
                  product path, a PyAV probe first, then decord
  rlt-torchcodec  decode_frames(path, indices, backend="torchcodec"), one thread: probe, then torchcodec
  dali            decode_batch(paths, indices, backend="dali"): DALI's NVDEC decoder, batches of 8
                  clips (only with a CUDA GPU)

    python benchmarks/bench_decode.py [--videos 4] [--clips 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import torch

from rlt.pipeline import ClipSampling, decode_batch, decode_frames, sample_clips
from rlt.pipeline._decord import import_decord
from rlt.pipeline._torchcodec import import_torchcodec
from rlt.samples import synthetic_clip, write_video

RESOLUTIONS = {"240p": (240, 428), "480p": (480, 852), "720p": (720, 1280)}
Clips = list[tuple[str, np.ndarray]]
# One clip: (path, frame indices) -> its frames [T, H, W, 3] (numpy or a CPU tensor).
ClipDecoder = Callable[[str, np.ndarray], object]


def frame_pts(path: str) -> list[int]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None)


def pyav_decode(path: str, indices: np.ndarray, pts: list[int]) -> np.ndarray:
    wanted = {pts[i]: i for i in indices.tolist()}
    frames = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        container.seek(pts[int(indices.min())], stream=stream, backward=True, any_frame=False)
        last = pts[int(indices.max())]
        for frame in container.decode(stream):
            if frame.pts in wanted:
                frames[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
            if frame.pts >= last:
                break
    return np.stack([frames[i] for i in indices.tolist()])


def cpu_decoders(paths: list[str], cores: int) -> dict[str, ClipDecoder]:
    """Each CPU decoder as a function of one clip, in the order of the table."""
    decord = import_decord()
    video_decoder = import_torchcodec()
    pts = {p: frame_pts(p) for p in paths}

    def pyav(path: str, indices: np.ndarray) -> np.ndarray:
        return pyav_decode(path, indices, pts[path])

    def raw_decord(threads: int) -> ClipDecoder:
        def run(path: str, indices: np.ndarray) -> np.ndarray:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
            return reader.get_batch(indices.tolist()).asnumpy()

        return run

    def raw_torchcodec(path: str, indices: np.ndarray) -> torch.Tensor:
        decoder = video_decoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)
        return decoder.get_frames_at(indices.tolist()).data

    def rlt(backend: str) -> ClipDecoder:
        def run(path: str, indices: np.ndarray) -> torch.Tensor:
            return decode_frames(path, indices, backend=backend, num_threads=1)

        return run

    return {
        "pyav": pyav,
        "decord": raw_decord(1),
        f"decord-{cores}": raw_decord(cores),
        "torchcodec": raw_torchcodec,
        "rlt-decord": rlt("decord"),
        "rlt-torchcodec": rlt("torchcodec"),
    }


def passes(clips: Clips, decoders: dict[str, ClipDecoder], dali: bool) -> dict[str, Callable[[], None]]:
    """One pass over ``clips`` per decoder, and DALI's in batches of 8 when ``dali``."""

    def each_clip(decode: ClipDecoder) -> Callable[[], None]:
        def run() -> None:
            for path, indices in clips:
                decode(path, indices)

        return run

    runs = {name: each_clip(decode) for name, decode in decoders.items()}
    if dali:

        def run_dali() -> None:
            for i in range(0, len(clips), 8):
                chunk = clips[i : i + 8]
                decode_batch([p for p, _ in chunk], [ix for _, ix in chunk], backend="dali")
            torch.cuda.synchronize()

        runs["dali"] = run_dali
    return runs


def interleaved_medians(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each pass, timed in turn within each round after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def differing(clips: Clips, decoders: dict[str, ClipDecoder]) -> list[str]:
    """The CPU decoders whose frames of the first clip differ from PyAV's (all convert with libswscale)."""
    path, indices = clips[0]
    reference = decoders["pyav"](path, indices)
    same = {name: np.array_equal(reference, np.asarray(decode(path, indices))) for name, decode in decoders.items()}
    return [name for name, equal in same.items() if not equal]


def machine(cuda: bool) -> str:
    import decord
    import torchcodec
    from torchcodec._core import get_ffmpeg_library_versions

    ffmpeg = get_ffmpeg_library_versions()["ffmpeg_version"]
    gpu = "no CUDA"
    if cuda:
        from rlt.pipeline._dali import import_dali

        gpu = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, DALI {import_dali().__version__}"
    return (
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, decord {decord.__version__}, "
        f"torchcodec {torchcodec.__version__} (FFmpeg {ffmpeg}), av {av.__version__} (FFmpeg {av.ffmpeg_version_info})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=2, help="clips per video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cuda = torch.cuda.is_available()
    print(machine(cuda))
    with tempfile.TemporaryDirectory() as folder:
        for name, (height, width) in RESOLUTIONS.items():
            paths = []
            for v in range(args.videos):
                path = Path(folder) / f"{name}_{v}.mp4"
                write_video(path, synthetic_clip(96, height, width, seed=v, direction=v % 2), codec="h264")
                paths.append(str(path))
            sampling = ClipSampling(clips_per_video=args.clips)
            clips = [(p, c.frame_indices) for p in paths for c in sample_clips(96, sampling)]
            n = len(clips)
            decoders = cpu_decoders(paths, cores)
            seconds = interleaved_medians(passes(clips, decoders, dali=cuda), args.repeats)
            odd = differing(clips, decoders)
            same = "all" if not odd else f"all but {', '.join(odd)}"
            print(f"\n{name} ({width}x{height}), {n} clips of 16x4; CPU decoders with PyAV's frames: {same}")
            print(f"{'':6} {'decoder':15} {'ms/clip':>8} {'clips/s':>8} {'x pyav speed':>12} {'x decord time':>13}")
            for decoder, s in seconds.items():
                print(
                    f"{name:6} {decoder:15} {1000 * s / n:8.1f} {n / s:8.1f} "
                    f"{seconds['pyav'] / s:12.2f} {s / seconds['decord']:13.2f}"
                )
            print(
                f"rlt-decord / decord {seconds['rlt-decord'] / seconds['decord']:.2f}, "
                f"torchcodec / decord {seconds['torchcodec'] / seconds['decord']:.2f}, "
                f"rlt-torchcodec / rlt-decord {seconds['rlt-torchcodec'] / seconds['rlt-decord']:.2f} (time ratios)"
            )
            print(f"goal: rlt-decord >= 0.7x pyav -> {seconds['pyav'] / seconds['rlt-decord']:.2f}x")
            if cuda:
                print(f"goal: dali >= 3x decord-{cores} -> {seconds[f'decord-{cores}'] / seconds['dali']:.2f}x")


if __name__ == "__main__":
    main()
