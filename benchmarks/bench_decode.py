"""How fast does each backend decode clips, against PyAV decoding the same frames?

Generated H.264 videos at 240p, 480p and 720p (96 frames, 30 fps, keyframe every 48 frames); each
clip is 16 frames at an interval of 4 (VideoMAE's 16x4) from a seeded offset. All decoders get the
same clips and return RGB uint8 at native size; time is the median of ``--repeats`` passes.

  pyav      PyAV, one thread: seek to the keyframe before the clip, decode forward, keep the frames
            asked for. The CPU's practical limit for one core.
  decord-1  decord, one thread
  decord-N  decord, all cores (N = os.cpu_count())
  dali      DALI's NVDEC decoder, batches of 8 videos (only with a CUDA GPU)

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
from rlt.samples import synthetic_clip, write_video

RESOLUTIONS = {"240p": (240, 428), "480p": (480, 852), "720p": (720, 1280)}


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


def frame_pts(path: str) -> list[int]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=2, help="clips per video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cuda = torch.cuda.is_available()
    print(f"machine: {platform.machine()}, {cores} cores, torch {torch.__version__}, cuda {cuda}")
    header = f"{'':6} {'backend':9} {'clips/s':>9} {'x pyav':>7}"
    with tempfile.TemporaryDirectory() as folder:
        for name, (height, width) in RESOLUTIONS.items():
            paths = []
            for v in range(args.videos):
                path = Path(folder) / f"{name}_{v}.mp4"
                write_video(path, synthetic_clip(96, height, width, seed=v, direction=v % 2), codec="h264")
                paths.append(str(path))
            sampling = ClipSampling(clips_per_video=args.clips)
            clips = [(p, c.frame_indices) for p in paths for c in sample_clips(96, sampling)]
            pts = {p: frame_pts(p) for p in paths}
            n = len(clips)

            def run_pyav(clips: list = clips, pts: dict = pts) -> None:
                for p, ix in clips:
                    pyav_decode(p, ix, pts[p])

            def run_decord(threads: int, clips: list = clips) -> None:
                for p, ix in clips:
                    decode_frames(p, ix, backend="decord", num_threads=threads)

            # Same pixels: decord and PyAV both convert with libswscale.
            p0, ix0 = clips[0]
            same = np.array_equal(pyav_decode(p0, ix0, pts[p0]), decode_frames(p0, ix0, backend="decord").numpy())
            results = {"pyav": median_time(run_pyav, args.repeats)}
            results["decord-1"] = median_time(lambda: run_decord(1), args.repeats)
            results[f"decord-{cores}"] = median_time(lambda: run_decord(cores), args.repeats)
            if cuda:

                def run_dali(clips: list = clips) -> None:
                    for i in range(0, len(clips), 8):
                        chunk = clips[i : i + 8]
                        decode_batch([p for p, _ in chunk], [ix for _, ix in chunk], backend="dali")
                    torch.cuda.synchronize()

                results["dali"] = median_time(run_dali, args.repeats)
            print(f"\n{name} ({width}x{height}), {n} clips of 16x4, frames identical to PyAV's: {same}")
            print(header)
            for backend, seconds in results.items():
                print(f"{name:6} {backend:9} {n / seconds:9.1f} {results['pyav'] / seconds:7.2f}")
            print(f"goal: decord-1 >= 0.7x pyav -> {results['pyav'] / results['decord-1']:.2f}x")
            if cuda:
                print(f"goal: dali >= 3x decord-{cores} -> {results[f'decord-{cores}'] / results['dali']:.2f}x")


if __name__ == "__main__":
    main()
