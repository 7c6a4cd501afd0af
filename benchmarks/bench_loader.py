"""How fast does training read pre-pruned tokens, against decoding the videos again?

Generated 320x240 H.264 sample videos, 2 clips of 16x4 at 224 each, tokenized once into a dataset;
then in one run, on one core (one thread, no DataLoader workers):

  online   `OnlinePipeline` (decord decode + resize + RLT) over the videos
  loader   `TokenLoader` over the dataset, three epochs, with the process's resident memory after each

    python benchmarks/bench_loader.py [--videos 48] [--format arrow|zarr] [--max-tokens 16384]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from rlt.pipeline import ClipSampling, OnlinePipeline
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--format", default="arrow")
    parser.add_argument("--max-tokens", type=int, default=16384)
    args = parser.parse_args()
    import ray

    sampling = ClipSampling(clips_per_video=2)
    with tempfile.TemporaryDirectory() as folder:
        manifest = make_samples(Path(folder) / "videos", num_videos=args.videos)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        config = TokenizeConfig(storage=args.format, shard_size=16, sampling=sampling, backend="decord")  # type: ignore[arg-type]
        summary = tokenize_dataset(manifest, Path(folder) / "dataset", config)
        ray.shutdown()
        torch.set_num_threads(1)

        start = time.perf_counter()
        online_clips = sum(b.num_clips for b in OnlinePipeline(manifest, sampling=sampling, backend="decord"))
        online = time.perf_counter() - start

        loader = TokenLoader(TokenStream(Path(folder) / "dataset", max_tokens=args.max_tokens, seed=0))
        epochs = []
        for _ in range(3):
            start = time.perf_counter()
            clips = tokens = 0
            for batch in loader:
                clips += batch.num_clips
                tokens += batch.num_tokens
            epochs.append((time.perf_counter() - start, clips, tokens, rss_mb()))

    seconds, clips, tokens, _ = min(epochs)
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, 1 thread; {args.videos} videos, "
        f"{summary.clips} clips, {args.format}, max_tokens {args.max_tokens}, {100 * summary.kept_ratio:.1f}% kept"
    )
    print(f"online decode+RLT: {online_clips / online:8.1f} clips/s")
    print(
        f"loader:            {clips / seconds:8.1f} clips/s, {tokens / seconds / 1e6:.2f} M tokens/s "
        f"({tokens * 1536 / seconds / 1e6:.0f} MB/s of pixels)"
    )
    print(f"loader against online: {(clips / seconds) / (online_clips / online):.1f}x (goal >= 20x)")
    rss = [e[3] for e in epochs]
    print(
        f"resident memory after epochs 1, 2, 3: {', '.join(f'{r:.0f} MB' for r in rss)}; growth from epoch 1 "
        f"to 3: {100 * (rss[2] / rss[0] - 1):.1f}% (goal < 5%)"
    )


if __name__ == "__main__":
    main()
