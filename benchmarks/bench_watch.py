"""Watch mode against the batch job: what does tokenizing videos as they arrive cost?

The sample videos (320x240 H.264, 96 frames; 16x4 frames at 224, 1 clip each, as `rlt-prep tokenize`'s
defaults) are tokenized three ways, on the embedded defaults (threads, and Ray tasks), with the
embedded Ray started once beforehand, as a running server has it (so no mode pays its start), and
``--rounds`` interleaved rounds of the first two (medians):

  tokenize   `rlt-prep tokenize` on a manifest of all of them (`tokenize_dataset`)
  burst      a watcher (`rlt-prep serve DATASET --watch SOURCE` without the HTTP side) on a folder into
             which all of them are copied at once: seconds until its index lists them all
  trickle    the same, one video copied in every ``--every`` seconds: the latency of each video,
             from its copy to the index generation that lists it (p50, p99, max)

A watcher takes a file once two scans in a row see it the same, so its latency floor is one poll
interval (``--poll``) plus the shard's work and the index's publication.

    python benchmarks/bench_watch.py [--videos 32] [--rounds 3] [--every 0.5] [--poll 0.5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rlt.dataset import read_index
from rlt.samples import make_samples
from rlt.serve._watch import Source, Watcher
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.tokenize_offline._append import GrowingDataset
from rlt.tokenize_offline._executor import Executor, shutdown_ray, start_ray
from rlt.tokenize_offline._output import Output


def watch(videos: list[Path], root: Path, config: TokenizeConfig, *, every: float, poll: float) -> dict[str, Any]:
    """Copies ``videos`` into a watched folder, ``every`` seconds apart (0: at once); each one's
    latency to the generation that lists it."""
    source, out = root / "incoming", root / "dataset"
    source.mkdir(parents=True)
    executor = Executor(config, address=None, workers=None, gpus_per_task=None, videos_per_batch=8)
    with executor:
        watcher = Watcher(GrowingDataset(Output(out), config, executor), Source(str(source)), poll_s=poll)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        copied: dict[str, float] = {}
        published: dict[str, float] = {}
        started = time.perf_counter()

        def drop_in() -> None:
            for video in videos:
                # Written under a partial name and renamed, as a careful uploader does.
                part = source / f"{video.name}.part"
                shutil.copyfile(video, part)
                part.rename(source / video.name)
                copied[video.name] = time.perf_counter()
                if every:
                    time.sleep(every)

        dropper = threading.Thread(target=drop_in)
        dropper.start()
        generation = 0
        while len(published) < len(videos):
            time.sleep(0.02)
            try:
                index = read_index(out)
            except (FileNotFoundError, ValueError):
                continue
            if index.generation != generation:
                generation, now = index.generation, time.perf_counter()
                listed = {s.name for s in index.shards}
                for video, shard in watcher.dataset.owners().items():
                    if video not in published and shard in listed:
                        published[video] = now
        seconds = time.perf_counter() - started
        dropper.join()
        watcher.stop()
        thread.join()
    latencies = sorted(published[v] - copied[v] for v in published)
    return {
        "seconds": seconds,
        "videos_per_s": len(videos) / seconds,
        "generations": generation,
        "shards": len(read_index(out).shards),
        "latency_s": {
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
            "max": latencies[-1],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between videos in the trickle run")
    parser.add_argument("--poll", type=float, default=0.5, help="the watcher's seconds between scans")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved tokenize and burst rounds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        root = Path(tmp)
        manifest = make_samples(root / "samples", num_videos=args.videos)
        videos = sorted((root / "samples").glob("*.mp4"))
        config = TokenizeConfig()
        start_ray(None)
        # Interleaved rounds, medians reported: the first round also pays for Ray's workers
        # importing torch and the decoders on their first tasks, whichever mode runs first.
        batch, bursts = [], []
        for r in range(args.rounds):
            started = time.perf_counter()
            tokenize_dataset(manifest, root / f"tokenized-{r}", config)
            batch.append(time.perf_counter() - started)
            bursts.append(watch(videos, root / f"burst-{r}", config, every=0, poll=args.poll))
        trickle = watch(videos, root / "trickle", config, every=args.every, poll=args.poll)
        shutdown_ray(embedded=True)
    burst = sorted(bursts, key=lambda b: b["seconds"])[len(bursts) // 2]
    seconds = statistics.median(batch)
    result = {
        "machine": f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}",
        "videos": args.videos,
        "poll_s": args.poll,
        "rounds": args.rounds,
        "tokenize": {"seconds": seconds, "videos_per_s": args.videos / seconds, "every_round_s": batch},
        "burst": {**burst, "every_round_s": [b["seconds"] for b in bursts]},
        "trickle": {"every_s": args.every, **trickle},
        "burst_over_tokenize": seconds / burst["seconds"],
        "command": " ".join(["python", *sys.argv]),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
