"""Our training loader against the streaming loaders people already use, on the same per-clip records.

Generated 320x240 H.264 sample videos, 2 clips of 16x4 at 224 each, tokenized once into our dataset
(``--storage``, Arrow by default); every clip's record (tokens uint8 [N, D], positions int16 [N, 3],
lengths int16 [N], label) is then written again, in the dataset's order and with as many clips per
shard as ours, as:

  litdata    LitData chunks (`litdata.optimize`), read by `litdata.StreamingDataset`
  mds        MosaicML Streaming MDS, uncompressed, read by `streaming.StreamingDataset(local=...)`
  mds-zstd   the same with compression 'zstd'; streaming decompresses each shard next to it on
             first use, so its epoch 1 includes that (the decompressed copies are removed before
             every epoch 1)
  wds        WebDataset tar shards of .npy entries, read by `webdataset.WebDataset` with a shuffle
             buffer as large as ours

Each peer runs in a torch DataLoader, shuffled, whose collate_fn concatenates a batch's clips and
adds ``cu_seqlens`` (int32 [B+1]), with positions and lengths widened to int64 as ours does; B is the
mean clips per batch of ours, which packs clips up to ``--max-tokens`` tokens (`TokenLoader`), so
that both move the same clips per batch on average.

First, one untimed epoch of every loader with 0 and with 2 workers checks that it yields exactly the
dataset's clips (label, tokens, positions and lengths, hashed per clip; shuffled orders compared as
sets); any difference stops the run. Then ``--rounds`` rounds, the loaders' order rotating from round
to round, each loader with 0 and then 2 DataLoader workers:

  epoch 1  cold: fresh dataset objects; the files dropped from the page cache (posix_fadvise,
           unless ``--page-cache keep``); ours' records of checked shards (in this process and in
           its cache folder) forgotten, so that it computes its shards' checksums as on the first
           read of a dataset (``--checks recorded`` keeps the folder's: a later job's epoch 1);
           a Zarr dataset's tokens that ours unpacked into its cache removed, as MDS's copies are
  epoch 2  warm: the same objects again, files in the page cache

Workers are started afresh for every epoch (``persistent_workers=False``, as `TokenLoader` does).
Figures: clips/s and tokens/s of the fastest round (the median is in the JSON), the lowest
first-batch latency (from creating the dataset objects, for epoch 1), the highest peak memory
(proportional set size of this process and its workers, sampled every 20 ms, above this process's
before the epoch; memory-mapped file pages count), and bytes per clip on disk. Ratios are ours over
each peer and over the best peer of each column.

    python benchmarks/bench_loader_peers.py [--clips 256] [--rounds 5] [--storage arrow|zarr|arrow,zarr]
        [--max-tokens 16384] [--page-cache drop|keep] [--checks first|recorded] [--profile] [--json PATH] [--quick]

Needs the `bench` extra (pip install -e '.[bench]'). About 2 minutes on 2 cores; --quick, about one.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import glob
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pagecache import drop_page_cache  # benchmarks/pagecache.py, beside this script
from torch.utils.data import DataLoader

from rlt.dataset import open_dataset
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream

WORKERS = (0, 2)
COLUMNS = [(epoch, workers) for workers in WORKERS for epoch in (1, 2)]
MB = 1 << 20


# --- the peers, imported only when used ---------------------------------------------------------


def _missing(package: str, error: Exception) -> SystemExit:
    return SystemExit(
        f"bench_loader_peers needs {package} ({type(error).__name__}: {error}); install the peers with "
        f"`pip install -e '.[bench]'` (or `pip install litdata mosaicml-streaming webdataset`)"
    )


def import_litdata() -> Any:
    try:
        import litdata
    except ImportError as e:
        raise _missing("litdata", e) from e
    return litdata


def import_webdataset() -> Any:
    try:
        import webdataset
    except ImportError as e:
        raise _missing("webdataset", e) from e
    return webdataset


@functools.cache
def import_streaming() -> types.SimpleNamespace:
    """`StreamingDataset`, `MDSWriter` and `clean_stale_shared_memory` of mosaicml-streaming.

    ``import streaming`` also imports its text and vision datasets and a DataLoader subclass, which
    need transformers and torchvision. Where those do not import (a torchvision built for a CUDA
    torch beside a CPU torch, transformers refusing the installed huggingface-hub), the MDS reader
    and writer, which use neither, are imported with the two package ``__init__`` files skipped.
    """
    try:
        import streaming
        from streaming.base.util import clean_stale_shared_memory

        return types.SimpleNamespace(
            StreamingDataset=streaming.StreamingDataset, MDSWriter=streaming.MDSWriter, clean=clean_stale_shared_memory
        )
    except Exception as e:  # ImportError, or RuntimeError from a torchvision built for another torch
        reason = e
    for name in [n for n in sys.modules if n == "streaming" or n.startswith("streaming.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("streaming")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("mosaicml-streaming", reason)
    root = spec.submodule_search_locations[0]
    for name, folder in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
        package = types.ModuleType(name)
        package.__path__ = [folder]
        sys.modules[name] = package
    try:
        from streaming.base.dataset import StreamingDataset
        from streaming.base.format.mds.writer import MDSWriter
        from streaming.base.util import clean_stale_shared_memory
    except Exception as e:
        raise _missing("a working mosaicml-streaming", e) from e
    print(f"note: `import streaming` fails here ({type(reason).__name__}: {str(reason)[:100]}); using its MDS modules")
    return types.SimpleNamespace(
        StreamingDataset=StreamingDataset, MDSWriter=MDSWriter, clean=clean_stale_shared_memory
    )


# --- records, digests and the peers' collate_fn -----------------------------------------------------


@dataclass
class Packed:
    """A peer's batch, packed like ours: rows ``cu_seqlens[b]:cu_seqlens[b+1]`` are clip b's."""

    tokens: torch.Tensor  # uint8 [N, D]
    positions: torch.Tensor  # int64 [N, 3]
    lengths: torch.Tensor  # int64 [N]
    cu_seqlens: torch.Tensor  # int32 [B+1]
    labels: torch.Tensor  # int64 [B]


# The field names each peer's samples carry: tokens, positions, lengths, label.
FIELDS = {
    "litdata": ("tokens", "positions", "lengths", "label"),
    "mds": ("tokens", "positions", "lengths", "label"),
    "wds": ("tokens.npy", "positions.npy", "lengths.npy", "cls"),
}


def pack(samples: list[dict[str, Any]], fields: tuple[str, str, str, str]) -> Packed:
    tokens, positions, lengths, label = fields
    counts = [len(s[lengths]) for s in samples]
    cu_seqlens = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(np.cumsum(counts), dtype=torch.int32)
    return Packed(
        tokens=torch.from_numpy(np.concatenate([s[tokens] for s in samples])),
        positions=torch.from_numpy(np.concatenate([s[positions] for s in samples]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([s[lengths] for s in samples]).astype(np.int64)),
        cu_seqlens=cu_seqlens,
        labels=torch.tensor([int(s[label]) for s in samples], dtype=torch.int64),
    )


def digest(label: int, tokens: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.int64(label).tobytes())
    h.update(np.asarray(tokens.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(tokens, np.uint8).tobytes())
    h.update(np.ascontiguousarray(positions, np.int64).tobytes())
    h.update(np.ascontiguousarray(lengths, np.int64).tobytes())
    return h.hexdigest()


def batch_digests(batch: Any) -> Iterator[str]:
    """Each clip of a packed batch (ours or a peer's: only the five common attributes)."""
    cu = batch.cu_seqlens.tolist()
    tokens, positions, lengths = batch.tokens.numpy(), batch.positions.numpy(), batch.lengths.numpy()
    for b, label in enumerate(batch.labels.tolist()):
        lo, hi = cu[b], cu[b + 1]
        yield digest(label, tokens[lo:hi], positions[lo:hi], lengths[lo:hi])


def records(root: Path) -> Iterator[dict[str, Any]]:
    """Every clip of our dataset in its order, as the peers store it."""
    for r in open_dataset(root):
        assert r.label is not None and r.tokens is not None
        yield {
            "key": f"{r.video}#{r.clip}",
            "label": int(r.label),
            "tokens": np.ascontiguousarray(r.tokens),
            "positions": np.ascontiguousarray(r.positions),
            "lengths": np.ascontiguousarray(r.lengths),
        }


_READERS: dict[str, Any] = {}


def _litdata_item(index: int, root: str) -> dict[str, Any]:
    # One reader per worker process of `litdata.optimize`.
    if root not in _READERS:
        _READERS[root] = open_dataset(root, verify=False)
    r = _READERS[root][index]
    return {"key": f"{r.video}#{r.clip}", "label": int(r.label), "tokens": r.tokens, "positions": r.positions,
            "lengths": r.lengths}  # fmt: skip


# --- writing the peers' copies ------------------------------------------------------------------------


def folder_bytes(folder: Path, skip: Callable[[Path], bool] = lambda p: False) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not skip(p))


def write_peers(source: Path, out: Path, clips: int, per_shard: int, mean_bytes: float) -> dict[str, Path]:
    """Writes the records of ``source`` as every peer's format under ``out``; returns their folders."""
    folders: dict[str, Path] = {}
    start = time.perf_counter()
    litdata = import_litdata()
    folders["litdata"] = out / "litdata"
    litdata.optimize(
        fn=functools.partial(_litdata_item, root=str(source)),
        inputs=list(range(clips)),
        output_dir=str(folders["litdata"]),
        chunk_size=per_shard,
        num_workers=1,
        reorder_files=False,
        start_method="fork",
        verbose=False,
    )
    print(f"  litdata   {time.perf_counter() - start:5.1f} s")

    streaming = import_streaming()
    columns = {"key": "str", "label": "int64", "tokens": "ndarray:uint8", "positions": "ndarray:int16",
               "lengths": "ndarray:int16"}  # fmt: skip
    for name, compression in (("mds", None), ("mds-zstd", "zstd")):
        start = time.perf_counter()
        folders[name] = out / name
        # MDS starts a new shard when the next sample would pass size_limit (raw bytes).
        limit = int(per_shard * mean_bytes * 1.05)
        with streaming.MDSWriter(
            out=str(folders[name]), columns=columns, compression=compression, size_limit=limit
        ) as w:
            for record in records(source):
                w.write(record)
        print(f"  {name:9} {time.perf_counter() - start:5.1f} s")

    start = time.perf_counter()
    wds = import_webdataset()
    folders["wds"] = out / "wds"
    folders["wds"].mkdir()
    with wds.ShardWriter(str(folders["wds"] / "shard-%05d.tar"), maxcount=per_shard, maxsize=1 << 40, verbose=0) as w:
        for r in records(source):
            # WebDataset splits a name at its first dot into key and field: no dots in keys.
            key = r["key"].replace(".", "_").replace("#", "_clip")
            w.write({"__key__": key, "cls": r["label"], "tokens.npy": r["tokens"], "positions.npy": r["positions"],
                     "lengths.npy": r["lengths"]})  # fmt: skip
    print(f"  wds       {time.perf_counter() - start:5.1f} s")
    return folders


# --- the loaders under test ---------------------------------------------------------------------------


class Loader:
    """One format and its reader. ``open(workers)`` makes fresh dataset objects and returns a
    function that iterates one epoch of packed batches (epoch numbers from 1)."""

    name: str
    folder: Path
    shards: int
    bytes: int

    def reset(self) -> None:
        """Forgets what this process (and so the workers it forks) carries from earlier epochs."""

    def open(self, workers: int) -> Callable[[int], Iterable[Any]]:
        raise NotImplementedError


class Ours(Loader):
    def __init__(self, root: Path, storage: str, max_tokens: int, forget_checks: bool = True) -> None:
        self.name, self.folder, self.max_tokens = f"ours ({storage})", root, max_tokens
        self.forget_checks = forget_checks
        dataset = open_dataset(root, verify=False)
        self.shards = len(getattr(dataset, "shards", [])) or len(list((root / "shards").iterdir()))
        self.bytes = folder_bytes(root)

    def reset(self) -> None:
        # The reader checks each shard's checksum once per process, and records the check in its
        # cache folder ($RLT_PREP_CACHE, this run's own: see main) for later processes. Forgetting
        # both makes epoch 1 the first read of the dataset on this machine.
        try:
            importlib.import_module("rlt.dataset._reader")._verified.clear()
        except (ImportError, AttributeError):
            warnings.warn("rlt.dataset._reader._verified is gone: epoch 1 of ours may skip checksums", stacklevel=1)
        if self.forget_checks:
            shutil.rmtree(Path(os.environ["RLT_PREP_CACHE"]) / "verified", ignore_errors=True)
        # A Zarr dataset's tokens unpacked in the cache on first use: made again in epoch 1, as
        # MDS's decompressed copies are.
        shutil.rmtree(Path(os.environ["RLT_PREP_CACHE"]) / "remote", ignore_errors=True)

    def open(self, workers: int) -> Callable[[int], Iterable[Any]]:
        stream = TokenStream(self.folder, max_tokens=self.max_tokens, shuffle=True, seed=0)
        loader = TokenLoader(stream, num_workers=workers)
        return lambda epoch: loader

    def clips_per_batch(self) -> float:
        stream = TokenStream(self.folder, max_tokens=self.max_tokens, shuffle=True, seed=0)
        return len(open_dataset(self.folder, verify=False)) / len(stream)


class Peer(Loader):
    def __init__(self, name: str, folder: Path, batch_size: int, shuffle_buffer: int, skip=lambda p: False) -> None:
        self.name, self.folder, self.batch_size, self.shuffle_buffer = name, folder, batch_size, shuffle_buffer
        self.bytes = folder_bytes(folder, skip)
        self.collate = functools.partial(pack, fields=FIELDS[name.split("-")[0]])

    def dataloader(self, dataset: Any, workers: int) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=workers, collate_fn=self.collate, persistent_workers=False
        )


class LitData(Peer):
    def __init__(self, folder: Path, batch_size: int, shuffle_buffer: int) -> None:
        super().__init__("litdata", folder, batch_size, shuffle_buffer)
        self.shards = len(list(folder.glob("*.bin")))
        self.litdata = import_litdata()

    def open(self, workers: int) -> Callable[[int], Iterable[Any]]:
        dataset = self.litdata.StreamingDataset(str(self.folder), shuffle=True, seed=0)
        # What litdata's own StreamingDataLoader tells its dataset.
        dataset.set_batch_size(self.batch_size)
        dataset.set_num_workers(workers)

        def epoch(n: int) -> Iterable[Any]:
            dataset.set_epoch(n)
            return self.dataloader(dataset, workers)

        return epoch


class MDS(Peer):
    def __init__(self, name: str, folder: Path, batch_size: int, shuffle_buffer: int) -> None:
        zstd = name.endswith("zstd")
        super().__init__(name, folder, batch_size, shuffle_buffer, skip=lambda p: zstd and p.suffix == ".mds")
        self.zstd = zstd
        self.shards = len(list(folder.glob("*.mds.zstd" if zstd else "*.mds")))
        self.streaming = import_streaming()

    def reset(self) -> None:
        self.streaming.clean()
        if self.zstd:  # the decompressed copies streaming makes on first use of a shard
            for path in self.folder.glob("*.mds"):
                path.unlink()

    def open(self, workers: int) -> Callable[[int], Iterable[Any]]:
        dataset = self.streaming.StreamingDataset(
            local=str(self.folder), shuffle=True, shuffle_seed=0, batch_size=self.batch_size
        )
        return lambda n: self.dataloader(dataset, workers)


class WDS(Peer):
    def __init__(self, folder: Path, batch_size: int, shuffle_buffer: int) -> None:
        super().__init__("wds", folder, batch_size, shuffle_buffer)
        self.urls = sorted(glob.glob(str(folder / "*.tar")))
        self.shards = len(self.urls)
        self.wds = import_webdataset()

    def open(self, workers: int) -> Callable[[int], Iterable[Any]]:
        dataset = (
            self.wds.WebDataset(self.urls, shardshuffle=len(self.urls), seed=0, empty_check=False)
            .shuffle(self.shuffle_buffer)
            .decode()
        )
        return lambda n: self.dataloader(dataset, workers)


# --- measuring -----------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(task) as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return pids


def _pss_kb(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Anon) of one process in kB; (0, 0) once it is gone."""
    pss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return pss, anon


class PeakMemory:
    """Peak summed PSS (and anonymous PSS) of this process and its descendants while in use."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.base = _pss_kb(os.getpid())
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        sizes = [_pss_kb(p) for p in _tree(os.getpid())]
        total = (sum(s[0] for s in sizes), sum(s[1] for s in sizes))
        self.peak = (max(self.peak[0], total[0]), max(self.peak[1], total[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    @property
    def above_mb(self) -> tuple[float, float]:
        return (self.peak[0] - self.base[0]) / 1024, (self.peak[1] - self.base[1]) / 1024


def run_epoch(iterate: Callable[[], Iterable[Any]], start: float, digests: Counter | None = None) -> dict[str, float]:
    clips = tokens = 0
    first = None
    for batch in iterate():
        if first is None:
            first = time.perf_counter() - start
        clips += int(batch.labels.shape[0])
        tokens += int(batch.tokens.shape[0])
        if digests is not None:
            digests.update(batch_digests(batch))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "clips": clips, "tokens": tokens, "first_batch_s": first or seconds}


def cold(loader: Loader, page_cache: str) -> None:
    gc.collect()
    loader.reset()
    if page_cache == "drop":
        drop_page_cache(loader.folder)


def measure(loader: Loader, workers: int, page_cache: str) -> dict[int, dict[str, float]]:
    """Epoch 1 (cold) and epoch 2 (warm) of one loader with ``workers`` workers."""
    cold(loader, page_cache)
    out = {}
    with PeakMemory() as memory:
        start = time.perf_counter()
        epochs = loader.open(workers)
        out[1] = run_epoch(functools.partial(epochs, 1), start)
    out[1]["peak_mb"], out[1]["peak_anon_mb"] = memory.above_mb
    with PeakMemory() as memory:
        out[2] = run_epoch(functools.partial(epochs, 2), time.perf_counter())
    out[2]["peak_mb"], out[2]["peak_anon_mb"] = memory.above_mb
    return out


def check(loaders: list[Loader], reference: Counter, keys: dict[str, str], page_cache: str) -> dict[str, Any]:
    """One epoch of each loader with each worker count must yield the dataset's clips, no other."""
    seen: dict[str, Any] = {}
    failures = []
    for loader in loaders:
        for workers in WORKERS:
            cold(loader, page_cache)
            digests: Counter = Counter()
            epochs = loader.open(workers)
            result = run_epoch(functools.partial(epochs, 1), time.perf_counter(), digests)
            missing = set(reference) - set(digests)
            foreign = set(digests) - set(reference)
            repeats = sum(digests.values()) - len(digests)
            seen[f"{loader.name} w{workers}"] = {"clips": result["clips"], "repeated": repeats}
            if missing or foreign:
                shown = ", ".join(sorted(keys[d] for d in missing)[:5])
                failures.append(
                    f"{loader.name}, {workers} workers: {len(missing)} clips missing ({shown}), {len(foreign)} clips "
                    f"whose label or arrays differ from every clip of the dataset"
                )
            elif repeats:
                print(f"  note: {loader.name} with {workers} workers yields {repeats} clips twice in an epoch")
    if failures:
        raise SystemExit("loaders disagree with the dataset:\n  " + "\n  ".join(failures))
    return seen


def profile_ours(loader: Ours, page_cache: str, lines: int = 18) -> str:
    cold(loader, page_cache)
    profiler = cProfile.Profile()
    profiler.enable()
    epochs = loader.open(0)
    run_epoch(functools.partial(epochs, 1), time.perf_counter())
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


# --- reporting -------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {}
    for dist in ("rlt-prep", "torch", "numpy", "pyarrow", "zarr", "litdata", "mosaicml-streaming", "webdataset"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "absent"
    return found


def table(title: str, rows: dict[str, list[str]], extra: str = "") -> None:
    heads = [f"e{e} {w}w" for e, w in COLUMNS]
    width = max(len(name) for name in rows) + 2
    print(f"\n{title}")
    print(" " * width + "".join(f"{h:>10}" for h in heads) + (f"{extra:>12}" if extra else ""))
    for name, cells in rows.items():
        print(f"{name:<{width}}" + "".join(f"{c:>10}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256, help="clips in the dataset (2 per video)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", default="arrow", help="ours: arrow, zarr, or both as arrow,zarr")
    parser.add_argument("--max-tokens", type=int, default=16384, help="our token budget per batch")
    parser.add_argument("--shard-videos", type=int, default=16, help="videos per shard of ours (at most)")
    parser.add_argument("--shuffle-buffer", type=int, default=512, help="clips in WebDataset's shuffle buffer")
    parser.add_argument("--page-cache", choices=("drop", "keep"), default="drop", help="before each epoch 1")
    parser.add_argument(
        "--checks",
        choices=("first", "recorded"),
        default="first",
        help="ours' epoch 1: the dataset's first read on this machine (checksums computed), or a later "
        "process's (the checks recorded by the verification pass are kept)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile ours' epoch 1 with 0 workers at the end")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 64 clips, 1 round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.rounds = 64, 1
    storages = args.storage.split(",")
    warnings.filterwarnings("ignore", module=r"(streaming|litdata|webdataset)(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(shardshuffle|num_canonical_nodes|Because `).*")
    # Make sure every peer is there before spending minutes on the data.
    import_litdata(), import_streaming(), import_webdataset()

    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {platform.machine()}, {cores} usable cores, python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Our reader's records of checked shards go here, not to the user's cache folder.
        os.environ["RLT_PREP_CACHE"] = str(folder / "rlt-prep-cache")
        start = time.perf_counter()
        manifest = make_samples(folder / "videos", num_videos=math.ceil(args.clips / 2))
        sampling = ClipSampling(clips_per_video=2)
        roots = {}
        for storage in storages:
            config = TokenizeConfig(storage=storage, shard_size=args.shard_videos, sampling=sampling, backend="decord")
            roots[storage] = folder / f"ours-{storage}"
            # Two threads of this process, never Ray (its start costs more than this job).
            tokenize_dataset(manifest, roots[storage], config, workers=min(cores, 2), ray_after=float("inf"))
        print(f"data: {time.perf_counter() - start:.1f} s for the videos and our dataset(s); the peers' copies:")

        source = roots[storages[0]]
        reference: Counter = Counter()
        keys, sizes = {}, []
        for record in records(source):
            d = digest(record["label"], record["tokens"], record["positions"], record["lengths"])
            reference[d] += 1
            keys[d] = record["key"]
            sizes.append(sum(record[f].nbytes for f in ("tokens", "positions", "lengths")))
        clips = len(sizes)
        ours = [Ours(roots[s], s, args.max_tokens, args.checks == "first") for s in storages]
        per_shard = math.ceil(clips / ours[0].shards)
        folders = write_peers(source, folder / "peers", clips, per_shard, float(np.mean(sizes)))
        ours_batch = ours[0].clips_per_batch()
        batch = max(1, round(ours_batch))
        peers: list[Loader] = [
            LitData(folders["litdata"], batch, args.shuffle_buffer),
            MDS("mds", folders["mds"], batch, args.shuffle_buffer),
            MDS("mds-zstd", folders["mds-zstd"], batch, args.shuffle_buffer),
            WDS(folders["wds"], batch, args.shuffle_buffer),
        ]
        loaders: list[Loader] = [*ours, *peers]
        tokens_total = sum(r.num_tokens or 0 for r in open_dataset(source, columns=["num_tokens"], verify=False))
        print(
            f"{clips} clips, {tokens_total / clips:.0f} tokens per clip on average, {per_shard} clips per shard; "
            f"ours packs up to {args.max_tokens} tokens ({ours_batch:.1f} clips per batch on "
            f"average), the peers take {batch} clips per batch; page cache before epoch 1: {args.page_cache}"
        )

        print("checking that every loader yields the dataset's clips, with 0 and 2 workers ...")
        checked = check(loaders, reference, keys, args.page_cache)
        print(f"  all {len(loaders)} loaders yield the same {clips} clips")

        results: dict[str, dict[tuple[int, int], list[dict[str, float]]]] = {
            loader.name: {c: [] for c in COLUMNS} for loader in loaders
        }
        start = time.perf_counter()
        for turn in range(args.rounds):
            order = loaders[turn % len(loaders) :] + loaders[: turn % len(loaders)]
            for loader in order:
                for workers in WORKERS:
                    for epoch, run in measure(loader, workers, args.page_cache).items():
                        results[loader.name][(epoch, workers)].append(run)
            print(f"  round {turn + 1}/{args.rounds} done, {time.perf_counter() - start:.0f} s")
        profile = profile_ours(ours[0], args.page_cache) if args.profile else None

    def best(name: str, column: tuple[int, int]) -> dict[str, float]:
        runs = results[name][column]
        fastest = min(runs, key=lambda f: f["seconds"])
        return {
            "clips_per_s": fastest["clips"] / fastest["seconds"],
            "clips_per_s_median": statistics.median(f["clips"] / f["seconds"] for f in runs),
            "tokens_per_s": fastest["tokens"] / fastest["seconds"],
            "first_batch_ms": 1e3 * min(f["first_batch_s"] for f in runs),
            "peak_mb": max(f["peak_mb"] for f in runs),
            "peak_anon_mb": max(f["peak_anon_mb"] for f in runs),
            "clips_per_epoch": fastest["clips"],
        }

    figures = {loader.name: {c: best(loader.name, c) for c in COLUMNS} for loader in loaders}
    names = [loader.name for loader in loaders]
    bytes_per_clip = {loader.name: loader.bytes / clips for loader in loaders}
    table(
        f"clips/s (best of {args.rounds}; e1 = cold epoch 1, e2 = warm epoch 2; w = DataLoader workers)",
        {
            n: [f"{figures[n][c]['clips_per_s']:.0f}" for c in COLUMNS] + [f"{bytes_per_clip[n] / 1e3:.0f}"]
            for n in names
        },
        extra="kB/clip",
    )
    table("M tokens/s", {n: [f"{figures[n][c]['tokens_per_s'] / 1e6:.2f}" for c in COLUMNS] for n in names})
    table("first batch, ms", {n: [f"{figures[n][c]['first_batch_ms']:.0f}" for c in COLUMNS] for n in names})
    table(
        "peak memory above this process before the epoch, MB (PSS of it and its workers; anonymous PSS)",
        {n: [f"{figures[n][c]['peak_mb']:.0f}/{figures[n][c]['peak_anon_mb']:.0f}" for c in COLUMNS] for n in names},
    )
    ratios: dict[str, dict[str, list[float]]] = {}
    for mine in ours:
        rows: dict[str, list[float]] = {}
        for peer in peers:
            rows[peer.name] = [
                figures[mine.name][c]["clips_per_s"] / figures[peer.name][c]["clips_per_s"] for c in COLUMNS
            ]
        rows["best peer"] = [
            figures[mine.name][c]["clips_per_s"] / max(figures[p.name][c]["clips_per_s"] for p in peers)
            for c in COLUMNS
        ]
        rows["first batch vs best"] = [
            min(figures[p.name][c]["first_batch_ms"] for p in peers) / figures[mine.name][c]["first_batch_ms"]
            for c in COLUMNS
        ]
        ratios[mine.name] = rows
        table(
            f"{mine.name} over each peer, clips/s (> 1: ours is faster; last row: best peer's first-batch "
            f"latency over ours)",
            {k: [f"{v:.2f}x" for v in vs] for k, vs in rows.items()},
        )
    if profile:
        print(f"\ncProfile of {ours[0].name}, epoch 1, 0 workers (by own time):\n{profile}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "cpu": platform.processor() or platform.machine(),
                    "cores": cores,
                    "python": platform.python_version(),
                    "versions": versions(),
                    "config": {
                        "clips": clips,
                        "tokens_per_clip": tokens_total / clips,
                        "rounds": args.rounds,
                        "max_tokens": args.max_tokens,
                        "peer_batch_clips": batch,
                        "ours_clips_per_batch": ours_batch,
                        "clips_per_shard": per_shard,
                        "shuffle_buffer": args.shuffle_buffer,
                        "page_cache": args.page_cache,
                        "ours_checks": args.checks,
                        "storage": storages,
                    },
                    "check": checked,
                    "loaders": {
                        loader.name: {
                            "bytes_per_clip": bytes_per_clip[loader.name],
                            "shards": loader.shards,
                            **{f"epoch{e}_workers{w}": figures[loader.name][(e, w)] for e, w in COLUMNS},
                        }
                        for loader in loaders
                    },
                    "ratios_clips_per_s": {
                        mine: {
                            peer: dict(zip([f"epoch{e}_workers{w}" for e, w in COLUMNS], vs, strict=True))
                            for peer, vs in rows.items()
                        }
                        for mine, rows in ratios.items()
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
