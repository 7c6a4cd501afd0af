"""What does rlt add to a CPU decoder's time per clip, and is torchcodec faster than decord?

Generated H.264 videos at 240p, 480p and 720p (96 frames, 30 fps, keyframe every 48 frames); each
clip is 16 frames at an interval of 4 (VideoMAE's 16x4), ``--clips`` evenly spaced clips a video.
Every decoder runs on one thread, opens the file anew for each clip (as the pipeline does) and
returns the clip's RGB uint8 frames at native size. The four are timed in turn within each round,
so a slow spell of the machine falls on all of them; time is the median of ``--repeats`` rounds
after one round of warm-up.

  decord          decord.VideoReader(path, num_threads=1).get_batch(indices).asnumpy()
  rlt-decord      rlt.pipeline.decode_frames(path, indices, backend="decord"): a PyAV probe first,
                  then decord
  torchcodec      VideoDecoder(path, seek_mode="exact", dimension_order="NHWC",
                  num_ffmpeg_threads=1).get_frames_at(indices); "exact" scans the file's packets on
                  opening, which is part of its cost
  rlt-torchcodec  rlt.pipeline._torchcodec.decode_torchcodec(probe(path), indices)

    python benchmarks/bench_cpu_decode.py [--videos 4] [--clips 2] [--repeats 3]
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

from rlt.pipeline import ClipSampling, decode_frames, probe, sample_clips
from rlt.pipeline._decord import import_decord
from rlt.pipeline._torchcodec import decode_torchcodec, import_torchcodec
from rlt.samples import synthetic_clip, write_video

RESOLUTIONS = {"240p": (240, 428), "480p": (480, 852), "720p": (720, 1280)}
Clips = list[tuple[str, np.ndarray]]


def decoders(clips: Clips) -> dict[str, Callable[[], object]]:
    """One pass over ``clips`` per decoder."""
    decord = import_decord()
    video_decoder = import_torchcodec()

    def raw_decord() -> None:
        for path, indices in clips:
            decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(indices.tolist()).asnumpy()

    def rlt_decord() -> None:
        for path, indices in clips:
            decode_frames(path, indices, backend="decord", num_threads=1)

    def raw_torchcodec() -> None:
        for path, indices in clips:
            decoder = video_decoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)
            _ = decoder.get_frames_at(indices.tolist()).data

    def rlt_torchcodec() -> None:
        for path, indices in clips:
            decode_torchcodec(probe(path), indices, num_threads=1)

    return {
        "decord": raw_decord,
        "rlt-decord": rlt_decord,
        "torchcodec": raw_torchcodec,
        "rlt-torchcodec": rlt_torchcodec,
    }


def interleaved_medians(passes: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each pass, timed in turn within each round after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in passes}
    for round_ in range(repeats + 1):
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def same_pixels(clips: Clips) -> bool:
    """Whether the four decoders return the same frames for the first clip."""
    decord = import_decord()
    path, indices = clips[0]
    reference = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(indices.tolist()).asnumpy()
    others = [
        decode_frames(path, indices, backend="decord").numpy(),
        import_torchcodec()(path, seek_mode="exact", dimension_order="NHWC").get_frames_at(indices.tolist()).data,
        decode_torchcodec(probe(path), indices).numpy(),
    ]
    return all(np.array_equal(reference, np.asarray(frames)) for frames in others)


def machine() -> str:
    import decord
    import torchcodec
    from torchcodec._core import get_ffmpeg_library_versions

    ffmpeg = get_ffmpeg_library_versions()["ffmpeg_version"]
    return (
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n"
        f"python {platform.python_version()}, torch {torch.__version__}, decord {decord.__version__}, "
        f"torchcodec {torchcodec.__version__} (FFmpeg {ffmpeg}), av {av.__version__} (FFmpeg {av.ffmpeg_version_info})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=2, help="clips per video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
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
            seconds = interleaved_medians(decoders(clips), args.repeats)
            print(f"\n{name} ({width}x{height}), {n} clips of 16x4, same pixels from all four: {same_pixels(clips)}")
            print(f"{'':6} {'decoder':15} {'ms/clip':>8} {'clips/s':>8} {'x decord time':>13}")
            for decoder, s in seconds.items():
                print(f"{name:6} {decoder:15} {1000 * s / n:8.1f} {n / s:8.1f} {s / seconds['decord']:13.2f}")
            print(
                f"rlt-decord / decord {seconds['rlt-decord'] / seconds['decord']:.2f}, "
                f"torchcodec / decord {seconds['torchcodec'] / seconds['decord']:.2f}, "
                f"rlt-torchcodec / rlt-decord {seconds['rlt-torchcodec'] / seconds['rlt-decord']:.2f} (time ratios)"
            )


if __name__ == "__main__":
    main()
