"""How much faster is `rlt-prep stats` than reading the dataset, since it reads no pixels?

Tokenizes generated 320x240 sample videos (2 clips of 16x4 at 224 each) into a dataset with the job's
default 64 videos per shard, then times,
in one run, best of 3: `dataset_stats` against a full read of every record (all fields, token pixels
copied out, so that memory-mapped files are really read). Both with the files in the page cache
(warm) and dropped from it first (cold, as for a dataset larger than memory). Neither recomputes
checksums.

    python benchmarks/bench_stats.py [--videos 256] [--format arrow|zarr]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from pagecache import drop_page_cache  # benchmarks/pagecache.py, beside this script

from rlt.dataset import TokenDataset
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.stats import dataset_stats
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset


def best_of(fn, repeats: int = 3, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--format", default="arrow")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as folder:
        manifest = make_samples(Path(folder) / "videos", num_videos=args.videos)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        config = TokenizeConfig(storage=args.format, sampling=ClipSampling(clips_per_video=2), backend="decord")  # type: ignore[arg-type]
        summary = tokenize_dataset(manifest, Path(folder) / "dataset", config)
        ray.shutdown()
        root = Path(folder) / "dataset"

        # Copying the tokens makes a memory-mapped (Arrow) read actually bring the pixel bytes in.
        def read_all() -> int:
            return sum(r.tokens.copy().nbytes for r in TokenDataset(root, verify=False))

        results = {}
        for cache, before in (("warm", None), ("cold", lambda: drop_page_cache(root))):
            results[cache] = (best_of(lambda: dataset_stats(root), before=before), best_of(read_all, before=before))
    print(f"machine: {platform.machine()}; {summary.clips} clips, {summary.bytes / 1e6:.0f} MB, {args.format}")
    for cache, (stats, full) in results.items():
        print(
            f"page cache {cache}: stats {stats * 1e3:.0f} ms, full read {full * 1e3:.0f} ms: "
            f"stats is {full / stats:.1f}x faster (goal >= 10x)"
        )


if __name__ == "__main__":
    main()
