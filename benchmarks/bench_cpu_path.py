"""Does the CPU path keep every core busy, and does DALI's batching pay?

Three questions, each answered side by side in one run on this machine:

  dali-batch   `decode_clips` with backend "dali-cpu" on VP9 videos, ``--videos-per-batch`` videos
               per DALI run against one video per run (same clips, resized and cropped in DALI).
  online       `OnlinePipeline` (decode, resize, RLT; default workers = usable cores) pinned to one
               core against two (``taskset``), in fresh processes whose decoder is loaded before
               timing, clips/s. Goal: >= 1.6x.
  job          `rlt-prep tokenize` as a user runs it (a fresh process, embedded defaults) with 1 and
               2 workers (and 2 on threads alone, no Ray), against a plain loop of `tokenize_video`
               in a fresh process, on the same videos; and the job with 1 and 2 workers on an
               embedded Ray started before timing (its start reported apart), the job's own scaling.
               Goals: 2 workers >= 1.8x one worker; the 1-worker run < 1.2x the plain loop.

    python benchmarks/bench_cpu_path.py [--sections dali-batch,online,job] [--videos 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlt.pipeline import ClipSampling, decode_clips, read_manifest
from rlt.samples import make_samples

ROOT = Path(__file__).resolve().parents[1]


def dali_batch(folder: Path, videos: int, per_batch: int, rounds: int) -> dict[str, float]:
    manifest = make_samples(folder / "vp9", num_videos=videos, height=360, width=640, codec="vp9")
    rows = [(r.video, r.path) for r in read_manifest(manifest).rows]
    sampling = ClipSampling(clips_per_video=2)

    def run(size: int) -> float:
        start = time.perf_counter()
        for i in range(0, len(rows), size):
            for item in decode_clips(rows[i : i + size], sampling=sampling, backend="dali-cpu"):
                assert not isinstance(item, Exception), item
        return time.perf_counter() - start

    run(per_batch), run(1)  # build both DALI pipelines before timing
    batched = min(run(per_batch) for _ in range(rounds))
    single = min(run(1) for _ in range(rounds))
    clips = 2 * len(rows)
    print(f"dali-cpu, {len(rows)} VP9 videos 640x360, {clips} clips of 16x4 at 224:")
    print(f"  {per_batch} videos per DALI run {clips / batched:7.1f} clips/s")
    print(f"  1 video per DALI run  {clips / single:7.1f} clips/s")
    print(f"  batched / one at a time: {single / batched:.2f}x")
    return {"batched_clips_per_s": clips / batched, "single_clips_per_s": clips / single, "ratio": single / batched}


ONLINE = """
import sys, time, torch
from rlt.pipeline import ClipSampling, OnlinePipeline, decode_frames, read_manifest
# Steady state: the decoder's one-time load (about 1 s for torchcodec's FFmpeg) is not counted.
decode_frames(read_manifest(sys.argv[1]).rows[0].path, [0], backend=sys.argv[2])
sampling = ClipSampling(clips_per_video=2)
pipeline = OnlinePipeline(sys.argv[1], sampling=sampling, backend=sys.argv[2], videos_per_batch=2)
start = time.perf_counter()
clips = sum(batch.num_clips for batch in pipeline)
print(clips / (time.perf_counter() - start), pipeline.workers, torch.get_num_threads())
"""


def online(folder: Path, videos: int, rounds: int, backend: str) -> dict[str, float]:
    manifest = make_samples(folder / "h264", num_videos=videos, height=480, width=640)
    best: dict[str, float] = {}
    seen = {}
    for _ in range(rounds):
        for cores in ("0", "0,1"):
            out = subprocess.run(
                ["taskset", "-c", cores, sys.executable, "-c", ONLINE, str(manifest), backend],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            best[cores] = max(best.get(cores, 0.0), float(out[0]))
            seen[cores] = f"{out[1]} workers, {out[2]} torch threads"
    ratio = best["0,1"] / best["0"]
    print(f"online pipeline ({backend}), {videos} H.264 videos 640x480, 2 clips each, decode + resize + RLT:")
    print(f"  1 core  {best['0']:7.1f} clips/s ({seen['0']})")
    print(f"  2 cores {best['0,1']:7.1f} clips/s ({seen['0,1']})")
    print(f"  2 cores / 1 core: {ratio:.2f}x (goal >= 1.6x)")
    return {"one_core_clips_per_s": best["0"], "two_cores_clips_per_s": best["0,1"], "ratio": ratio}


LOOP = """
import sys, time
start = time.perf_counter()
import torch
from rlt.pipeline import ClipSampling, read_manifest, tokenize_video
torch.set_num_threads(1)
sampling = ClipSampling(clips_per_video=2)
for row in read_manifest(sys.argv[1]).rows:
    tokenize_video(row.path, sampling=sampling, backend=sys.argv[2])
"""


def job(folder: Path, videos: int, rounds: int, backend: str) -> dict[str, float]:
    import ray

    from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset

    manifest = make_samples(folder / "job", num_videos=videos, height=480, width=640)
    cli = [sys.executable, "-m", "rlt", "tokenize", str(manifest), "--clips-per-video", "2", "--backend", backend]

    def timed(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start

    loop, cli1, cli2, threads2 = [], [], [], []
    for r in range(rounds):
        loop.append(timed([sys.executable, "-c", LOOP, str(manifest), backend]))
        cli1.append(timed([*cli, str(folder / f"cli1-{r}"), "--workers", "1"]))
        cli2.append(timed([*cli, str(folder / f"cli2-{r}"), "--workers", "2"]))
        threads2.append(timed([*cli, str(folder / f"threads2-{r}"), "--workers", "2", "--ray-after", "600"]))
    base, one, two, threads = min(loop), min(cli1), min(cli2), min(threads2)

    config = TokenizeConfig(sampling=ClipSampling(clips_per_video=2), backend=backend)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray_start = time.perf_counter() - start
    warm: dict[int, list[float]] = {1: [], 2: []}
    try:
        for r in range(rounds + 1):  # round 0 warms the workers' imports
            for workers in (1, 2):
                start = time.perf_counter()
                # workers=1 on a running Ray uses it: the in-process shortcut is for the embedded case.
                tokenize_dataset(manifest, folder / f"ray{workers}-{r}", config, workers=workers, ray_address="auto")
                if r:
                    warm[workers].append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    w1, w2 = min(warm[1]), min(warm[2])
    print(f"rlt-prep tokenize ({backend}), {videos} H.264 videos 640x480, 2 clips each; fresh processes:")
    print(f"  plain loop of tokenize_video {base:6.2f} s")
    print(f"  CLI, 1 worker                {one:6.2f} s   {one / base:.2f}x the loop (goal < 1.2x)")
    print(f"  CLI, 2 workers (Ray)         {two:6.2f} s   {one / two:.2f}x one worker")
    print(f"  CLI, 2 workers, threads only {threads:6.2f} s   {one / threads:.2f}x one worker (--ray-after 600)")
    print(f"on a running Ray (its start: {ray_start:.1f} s), warm workers:")
    print(f"  1 worker {w1:6.2f} s, 2 workers {w2:6.2f} s: {w1 / w2:.2f}x (goal >= 1.8x)")
    return {
        "loop_s": base,
        "cli_1_worker_s": one,
        "cli_2_workers_s": two,
        "cli_1_over_loop": one / base,
        "cli_2_over_1": one / two,
        "cli_2_threads_s": threads,
        "cli_2_threads_over_1": one / threads,
        "ray_start_s": ray_start,
        "ray_1_worker_s": w1,
        "ray_2_workers_s": w2,
        "ray_2_over_1": w1 / w2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="dali-batch,online,job")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--videos-per-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="auto", help="CPU decoder of the online and job sections")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    from rlt.pipeline import resolve_backend

    args.backend = ",".join(resolve_backend(args.backend))
    print(f"backend of the online and job sections: {args.backend}")
    figures: dict[str, object] = {
        "machine": platform.platform(),
        "cores": len(os.sched_getaffinity(0)),
        "backend": args.backend,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sections = args.sections.split(",")
        if "dali-batch" in sections:
            figures["dali_batch"] = dali_batch(folder, args.videos // 2, args.videos_per_batch, args.rounds)
        if "online" in sections:
            figures["online"] = online(folder, args.videos, args.rounds, args.backend)
        if "job" in sections:
            figures["job"] = job(folder, args.videos, args.rounds, args.backend)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
