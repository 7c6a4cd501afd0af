"""`rlt-prep tokenize`: offline equals online, failures recorded, safe to kill and re-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlt import open_dataset
from rlt.dataset import CorruptShardError, read_index
from rlt.pipeline import ClipSampling, RLTConfig, tokenize_video
from rlt.samples import make_samples
from rlt.tokenize_offline import ConfigMismatchError, TokenizeConfig, tokenize_dataset

SMALL = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
CONFIG = TokenizeConfig(shard_size=2, sampling=SMALL, backend="decord")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> object:
    """One embedded Ray for the module: the job uses it instead of starting its own each time."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short sample videos and their manifest (relative paths)."""
    return make_samples(tmp_path_factory.mktemp("samples"), num_videos=8, num_frames=24, height=64, width=96)


def manifest_with(folder: Path, rows: list[tuple[str, int]]) -> Path:
    path = folder / "manifest.csv"
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def checksums(out: Path) -> dict[str, str]:
    return {s["name"]: s["checksum"] for s in json.loads((out / "index.json").read_text())["shards"]}


@pytest.mark.parametrize(("storage", "ray_after"), [("zarr", 0.0), ("arrow", 0.0), ("arrow", 60.0)])
def test_offline_rows_equal_online_and_failures_are_listed(
    tmp_path: Path, samples: Path, videos: dict[str, Path], storage: str, ray_after: float
) -> None:
    # ray_after 0: Ray tasks and this process's threads share the shards; 60: threads alone.
    good = [f"sample_00{i}_{'right' if i % 2 == 0 else 'left'}.mp4" for i in range(4)]
    rows = [(str(samples.parent / v), i % 2) for i, v in enumerate(good)]
    rows.insert(1, (str(videos["random"]), 0))
    rows.append((str(videos["text"]), 1))
    config = TokenizeConfig(storage=storage, shard_size=2, sampling=SMALL, backend="decord")  # type: ignore[arg-type]
    summary = tokenize_dataset(manifest_with(tmp_path, rows), tmp_path / "out", config, ray_after=ray_after)

    assert (summary.videos, summary.failed, summary.clips) == (6, 2, 8)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["video"] for e in errors] == [str(videos["random"]), str(videos["text"])]
    assert all("not a readable video" in e["reason"] for e in errors)

    dataset = open_dataset(tmp_path / "out")
    assert len(dataset) == 8
    for k, record in enumerate(dataset):
        online = tokenize_video(record.video, sampling=SMALL, backend="decord")
        clip = online.clip(record.clip)
        assert record.label == next(label for p, label in rows if p == record.video)
        assert np.array_equal(record.frame_indices, online.frame_indices[record.clip].numpy())
        assert np.array_equal(record.padded, online.padded[record.clip].numpy())
        assert record.num_tokens == clip.num_tokens
        assert np.array_equal(record.tokens, clip.tokens.numpy()), k
        assert np.array_equal(record.positions, clip.positions.numpy())
        assert np.array_equal(record.lengths, clip.lengths.numpy())


def test_columns_read_only_what_is_asked(tmp_path: Path, samples: Path) -> None:
    tokenize_dataset(samples, tmp_path / "out", CONFIG)
    record = open_dataset(tmp_path / "out", columns=["video", "num_tokens", "lengths"])[3]
    assert record.tokens is None and record.positions is None and record.label is None
    assert record.lengths is not None and len(record.lengths) == record.num_tokens


def test_rerun_is_a_no_op_and_extra_rows_are_incremental(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = samples.read_text().splitlines()
    first = tmp_path / "first.csv"
    # Header and 5 videos. Two workers want 4 tasks each, so the asked 2 videos per shard becomes 1.
    first.write_text("\n".join(lines[:6]) + "\n")
    shutil.copy(samples.parent / lines[1].split(",")[0], tmp_path)  # relative paths resolve here
    for line in lines[1:]:
        name = line.split(",")[0]
        if not (tmp_path / name).exists():
            shutil.copy(samples.parent / name, tmp_path)
    out = tmp_path / "out"
    summary = tokenize_dataset(first, out, CONFIG)
    assert (summary.videos, summary.shards, summary.shards_written) == (5, 5, 5)
    before = checksums(out)

    import ray

    with monkeypatch.context() as patch:  # a finished dataset needs no Ray at all
        patch.setattr(ray, "remote", lambda *a, **k: pytest.fail("a no-op re-run must not start Ray tasks"))
        again = tokenize_dataset(first, out, CONFIG)
    assert again.shards_written == 0 and checksums(out) == before

    full = tmp_path / "full.csv"
    full.write_text("\n".join(lines) + "\n")  # 3 more videos
    grown = tokenize_dataset(full, out, CONFIG)
    assert (grown.videos, grown.shards_written) == (8, 3)
    after = checksums(out)
    assert {k: after[k] for k in before} == before  # old shards untouched
    assert sorted({r.video for r in open_dataset(out, columns=["video"])}) == sorted(
        line.split(",")[0] for line in lines[1:]
    )
    # Each run that wrote the index published the next generation; the no-op run none.
    assert read_index(out).generation == 2
    # A damaged index.json is written again by the next run, as the next generation.
    (out / "index.json").write_text("{not json")
    tokenize_dataset(full, out, CONFIG)
    assert read_index(out).generation == 3 and checksums(out) == after


def test_other_configuration_refuses_unless_overwrite(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "out"
    tokenize_dataset(samples, out, CONFIG)
    other = TokenizeConfig(shard_size=2, sampling=SMALL, rlt=RLTConfig(threshold=0.2), backend="decord")
    with pytest.raises(ConfigMismatchError, match=r"rlt\.threshold: 0\.1 in the dataset, 0\.2 now"):
        tokenize_dataset(samples, out, other)
    summary = tokenize_dataset(samples, out, other, overwrite=True)
    assert summary.shards_written == summary.shards == 8
    assert open_dataset(out).config["rlt"]["threshold"] == 0.2


def test_nothing_is_written_next_to_the_videos(tmp_path: Path, samples: Path) -> None:
    before = sorted(p.name for p in samples.parent.iterdir())
    cwd_before = sorted(os.listdir())
    tokenize_dataset(samples, tmp_path / "out", CONFIG)
    assert sorted(p.name for p in samples.parent.iterdir()) == before
    assert sorted(os.listdir()) == cwd_before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["errors.jsonl", "index.json", "plan.json", "shards"]


def largest_data_file(shard: Path) -> Path:
    return max((p for p in shard.rglob("*") if p.is_file() and p.name != "meta.json"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("storage", ["zarr", "arrow"])
@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_a_damaged_shard_is_detected_and_named(tmp_path: Path, samples: Path, damage: str, storage: str) -> None:
    out = tmp_path / "out"
    tokenize_dataset(samples, out, TokenizeConfig(storage=storage, shard_size=2, sampling=SMALL, backend="decord"))  # type: ignore[arg-type]
    victim = largest_data_file(out / "shards" / "shard-00001")
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "alter":
        victim.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        victim.unlink()
    dataset = open_dataset(out)
    assert dataset[0].tokens is not None  # shard 0 is fine
    with pytest.raises(CorruptShardError, match="shard-00001") as raised:
        dataset[2]  # two workers want 4 tasks each: one video per shard, so shard 0 holds rows 0-1
    expected = {"truncate": "truncated", "alter": "altered", "delete": "missing"}[damage]
    assert expected in raised.value.reason


def test_missing_or_unknown_index(tmp_path: Path, samples: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a finished rlt-prep dataset"):
        open_dataset(tmp_path)
    out = tmp_path / "out"
    tokenize_dataset(samples, out, CONFIG)
    index = json.loads((out / "index.json").read_text())
    index["version"] = 99
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        open_dataset(out)


# Kill -9 and resume --------------------------------------------------------------------------------


def run_cli(manifest: Path, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "rlt", "tokenize", str(manifest), str(out), "--shard-size", "1",
               "--num-frames", "8", "--frame-interval", "2", "--clips-per-video", "2", "--size", "64",
               "--backend", "decord", "--workers", "2", "--ray-after", "0"]  # fmt: skip
    # A session of its own, so that kill -9 takes the job's embedded Ray down with it.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def committed(out: Path) -> int:
    shards = out / "shards"
    return sum(1 for p in shards.iterdir() if not p.name.startswith(".")) if shards.is_dir() else 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_nine_at_several_points_then_resume_gives_the_same_dataset(tmp_path: Path, samples: Path) -> None:
    reference = tmp_path / "reference"
    process = run_cli(samples, reference)
    assert process.wait(timeout=300) == 0
    expected = checksums(reference)
    assert len(expected) == 8

    out = tmp_path / "out"
    for kill_after in (0, 2, 4):  # before any shard (plan only), then mid-job twice
        process = run_cli(samples, out)
        deadline = time.monotonic() + 240
        while committed(out) < kill_after or not (out / "plan.json").exists():
            assert process.poll() is None, "the job finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert not (out / "index.json").exists()  # a killed job never looks complete
    summary = tokenize_dataset(samples, out, TokenizeConfig(shard_size=1, sampling=SMALL, backend="decord"))
    assert summary.shards_written < 8  # finished shards were kept
    assert checksums(out) == expected
    dataset = open_dataset(out, columns=["video", "clip"])
    keys = [(r.video, r.clip) for r in dataset]
    assert len(keys) == len(set(keys)) == 16


@pytest.mark.parametrize("storage", ["zarr", "arrow"])
def test_format_md_examples_read_the_dataset_with_plain_libraries(tmp_path: Path, samples: Path, storage: str) -> None:
    import re

    out = tmp_path / "out"
    tokenize_dataset(samples, out, TokenizeConfig(storage=storage, shard_size=2, sampling=SMALL, backend="decord"))  # type: ignore[arg-type]
    spec = (Path(__file__).resolve().parents[1] / "rlt" / "dataset" / "FORMAT.md").read_text()
    zarr_example, arrow_example = re.findall(r"```python\n(.*?)```", spec, re.S)
    scope: dict[str, object] = {}
    exec((zarr_example if storage == "zarr" else arrow_example).replace("OUT", str(out)), scope)
    pixels = scope["tokens"] if storage == "zarr" else scope["pixels"]
    assert np.array_equal(pixels, open_dataset(out)[0].tokens)  # type: ignore[arg-type]


# Batches, per-video decoders, planning ------------------------------------------------------------


def test_shards_give_every_worker_tasks_and_the_asked_size_is_an_upper_bound() -> None:
    from rlt.tokenize_offline._job import shard_size

    assert shard_size(48, 64, 2) == 6  # 8 tasks for 2 workers, not one task of 48
    assert shard_size(48, 4, 2) == 4  # the asked size stays an upper bound
    assert shard_size(10_000, 64, 16) == 64
    assert shard_size(3, 64, 16) == 1


def test_one_embedded_worker_runs_in_process_and_writes_the_same_bytes(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    reference = tmp_path / "ray"
    tokenize_dataset(samples, reference, CONFIG, workers=2, videos_per_batch=3)
    # No Ray in this run: a Ray task would fail. Batches of another size give the same bytes.
    monkeypatch.setattr(ray, "remote", lambda *a, **k: pytest.fail("one worker must not start Ray tasks"))
    summary = tokenize_dataset(samples, tmp_path / "one", CONFIG, workers=1, videos_per_batch=1)
    assert summary.shards == 4  # one worker gets 4 tasks: 8 videos, 2 per shard (Ray's 2 workers got 8 shards)
    ray_shards = json.loads((reference / "plan.json").read_text())["shards"]
    one_shards = json.loads((tmp_path / "one" / "plan.json").read_text())["shards"]
    assert [v for s in ray_shards for v in s["videos"]] == [v for s in one_shards for v in s["videos"]]
    ray_rows = [(r.video, r.clip, r.tokens.tobytes()) for r in open_dataset(reference)]  # type: ignore[union-attr]
    one_rows = [(r.video, r.clip, r.tokens.tobytes()) for r in open_dataset(tmp_path / "one")]  # type: ignore[union-attr]
    assert ray_rows == one_rows


def test_a_chain_decides_per_video_in_the_job(tmp_path: Path, videos: dict[str, Path]) -> None:
    # dali-cpu stands in for NVDEC here: VP9 and MJPEG go to DALI, H.264 to decord.
    kinds = ["h264", "vp9", "mjpeg", "vp9_vfr", "odd_size", "random"]
    manifest = manifest_with(tmp_path, [(str(videos[k]), 0) for k in kinds])
    config = TokenizeConfig(shard_size=3, sampling=SMALL, backend="dali-cpu,decord")
    summary = tokenize_dataset(manifest, tmp_path / "out", config, videos_per_batch=3)
    assert (summary.videos, summary.failed, summary.clips) == (6, 1, 10)
    assert open_dataset(tmp_path / "out").index.decoders == ("dali-cpu,decord",)
    for record in open_dataset(tmp_path / "out"):
        kind = next(k for k in kinds if str(videos[k]) == record.video)
        alone = "decord" if kind in ("h264", "odd_size") else "dali-cpu"
        online = tokenize_video(record.video, sampling=SMALL, backend=alone).clip(record.clip)
        assert np.array_equal(record.tokens, online.tokens.numpy()), kind


def test_threads_alone_finish_a_small_job_and_ray_takes_over_when_asked(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    real_remote = ray.remote
    with monkeypatch.context() as patch:
        patch.setattr(ray, "remote", lambda *a, **k: pytest.fail("a job done within ray_after needs no Ray"))
        threads = tokenize_dataset(samples, tmp_path / "threads", CONFIG, workers=2, ray_after=60)
    calls: list[object] = []

    def counting_remote(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real_remote(*args, **kwargs)

    monkeypatch.setattr(ray, "remote", counting_remote)
    on_ray = tokenize_dataset(samples, tmp_path / "ray", CONFIG, workers=2, ray_after=0)
    assert calls  # Ray took shards
    assert threads.shards == on_ray.shards == 8 and checksums(tmp_path / "threads") == checksums(tmp_path / "ray")


def test_a_failing_shard_in_a_thread_stops_the_job_with_its_error(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlt.tokenize_offline import _executor

    real = _executor.run_shard

    def failing(out: Path, spec: object, config: object, **kwargs: object) -> object:
        if spec.name == "shard-00003":  # type: ignore[attr-defined]
            raise OSError(28, "No space left on device")
        return real(out, spec, config, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_executor, "run_shard", failing)
    with pytest.raises(OSError, match="No space left"):
        tokenize_dataset(samples, tmp_path / "out", CONFIG, workers=2, ray_after=60)
    assert not (tmp_path / "out" / "index.json").exists()
    assert not [t for t in threading_names() if t.startswith("rlt-shards")]  # every thread has stopped
    monkeypatch.setattr(_executor, "run_shard", real)
    assert tokenize_dataset(samples, tmp_path / "out", CONFIG, workers=2, ray_after=60).shards == 8


def threading_names() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate()]


# One writer per OUT ----------------------------------------------------------------------------------


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path: Path, samples: Path) -> None:
    from rlt._lock import OutputLockedError, lock_output

    out = tmp_path / "out"
    out.mkdir()
    with lock_output(out):  # this process is "the first run"
        with pytest.raises(OutputLockedError, match=rf"being written by another run \(pid {os.getpid()} on "):
            tokenize_dataset(samples, out, CONFIG, workers=1, overwrite=True)
        # The CLI says it in a sentence, exit 2, and touches nothing.
        command = [sys.executable, "-m", "rlt", "tokenize", str(samples), str(out), "--workers", "1"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "being written by another run" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        assert sorted(p.name for p in out.iterdir()) == [".rlt-lock"]
    assert not (out / ".rlt-lock").exists()  # released and removed


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # A run killed with -9 leaves its lock file; the kernel has released its flock.
    (out / ".rlt-lock").write_text('{"host": "gone", "pid": 999999, "started": "2026-01-01T00:00:00+00:00"}')
    assert tokenize_dataset(samples, out, CONFIG, workers=1).shards_written == 4
    assert not (out / ".rlt-lock").exists()


def test_overwrite_fails_loudly_and_shards_must_not_be_a_link(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "shards").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"shards is a symbolic link; the job writes only inside"):
        tokenize_dataset(samples, out, CONFIG, workers=1, overwrite=True)
    assert list(elsewhere.iterdir()) == []

    out2 = tmp_path / "out2"
    tokenize_dataset(samples, out2, CONFIG, workers=1)
    before = checksums(out2)

    def cannot_remove(path: Path) -> None:  # as a read-only disk would (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(Path(path) / "shard-00000"))

    from rlt.tokenize_offline import _job

    monkeypatch.setattr(_job.shutil, "rmtree", cannot_remove)
    with pytest.raises(PermissionError, match="shard-00000"):
        tokenize_dataset(samples, out2, CONFIG, workers=1, overwrite=True)
    assert (out2 / "shards" / "shard-00000").is_dir() and not (out2 / "index.json").exists()
    assert len(before) == 4


@pytest.mark.parametrize("cache", ["short", "long"])
def test_the_embedded_ray_leaves_nothing_outside_out(tmp_path: Path, samples: Path, cache: str) -> None:
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    # A short cache path holds Ray's sockets; a long one (over Unix sockets' 107 bytes) falls back
    # to the temp folder. Either way the session is gone when the run ends.
    home = Path(tempfile.mkdtemp(prefix="c", dir="/tmp")) if cache == "short" else tmp_path / ("c" * 60)
    try:
        env = {**os.environ, "XDG_CACHE_HOME": str(home), "TMPDIR": str(temp)}
        command = [sys.executable, "-m", "rlt", "tokenize", str(samples), str(tmp_path / "out"), "--num-frames",
                   "8", "--size", "64", "--backend", "decord", "--workers", "2", "--ray-after", "0"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        ray_folder = home / "rlt-prep" / "ray"
        if cache == "short":
            assert ray_folder.is_dir() and list(ray_folder.iterdir()) == []
        else:
            assert not ray_folder.exists()
        assert list(temp.iterdir()) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


# No hangs ---------------------------------------------------------------------------------------------


def test_an_unreachable_ray_address_fails_at_once_saying_what_to_change(tmp_path: Path, samples: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address, says in ((f"127.0.0.1:{port}", "cannot reach a Ray cluster at"), ("no-port", "is not host:port")):
        # A fresh process: this module's own Ray would be used whatever the address.
        command = [
            sys.executable,
            "-m",
            "rlt",
            "tokenize",
            str(samples),
            str(tmp_path / "out"),
            "--ray-address",
            address,
        ]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert time.monotonic() - started < 30
        assert result.returncode == 2 and says in " ".join(result.stdout.split()), result.stdout + result.stderr
        assert "--ray-address" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_gpus_the_cluster_does_not_have_are_refused_not_waited_for(tmp_path: Path, samples: Path) -> None:
    # One GPU more than the module's Ray has (none without CUDA): Ray would queue these tasks for ever.
    import ray

    more = int(ray.cluster_resources().get("GPU", 0)) + 1
    with pytest.raises(ValueError, match=rf"--gpus-per-task {more} asks each task for more GPU than the Ray cluster"):
        tokenize_dataset(samples, tmp_path / "out", CONFIG, gpus_per_task=more, ray_after=0)


def test_when_the_embedded_ray_cannot_start_the_threads_finish_the_job(
    tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlt.tokenize_offline import _executor

    def broken(self: object) -> None:
        raise RuntimeError("Failed to start the GCS server")

    monkeypatch.setattr(_executor.Executor, "_start_ray", broken)
    summary = tokenize_dataset(samples, tmp_path / "out", CONFIG, workers=2, ray_after=0)
    assert summary.shards == summary.shards_written == 8 and summary.clips == 16


# Re-runs follow the manifest -------------------------------------------------------------------------


def copy_samples(samples: Path, folder: Path) -> Path:
    folder.mkdir()
    for video in samples.parent.glob("sample_*"):
        shutil.copy2(video, folder)
    shutil.copy2(samples, folder / "manifest.csv")
    return folder / "manifest.csv"


def test_a_rerun_refuses_a_manifest_that_changed_what_was_tokenized(tmp_path: Path, samples: Path) -> None:
    from rlt.tokenize_offline import ManifestChangedError

    out = tmp_path / "out"
    tokenize_dataset(samples, out, CONFIG, workers=1)
    lines = samples.read_text().splitlines()
    cases = {
        "labels changed": [lines[0], lines[1].replace(",0", ",1"), *lines[2:]],  # sample_000 is label 0
        "rows no longer in the manifest": lines[:-1],
    }
    for what, changed in cases.items():
        edited = samples.parent / "edited.csv"
        edited.write_text("\n".join(changed) + "\n")
        with pytest.raises(ManifestChangedError, match=rf"1 {what}:\n    sample_00[07]_\w+\.mp4.*\nuse --overwrite"):
            tokenize_dataset(edited, out, CONFIG, workers=1)
    # Another folder's videos with the same names are not the ones tokenized.
    other = copy_samples(samples, tmp_path / "other")
    with pytest.raises(ManifestChangedError, match=r"8 other or changed files:\n    sample_000_right.mp4: .*other"):
        tokenize_dataset(other, out, CONFIG, workers=1)
    # Nor is a file changed in place.
    video = samples.parent / "sample_003_left.mp4"
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        with pytest.raises(ManifestChangedError, match=r"sample_003_left.mp4 changed since it was tokenized"):
            tokenize_dataset(samples, out, CONFIG, workers=1)
        assert tokenize_dataset(samples, out, CONFIG, workers=1, overwrite=True).shards_written == 4
    finally:
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_retry_failed_decodes_the_failed_videos_again_and_keeps_the_rest(tmp_path: Path, samples: Path) -> None:
    folder = tmp_path / "videos"
    manifest = copy_samples(samples, folder)
    late = folder / "sample_005_left.mp4"
    data = late.read_bytes()
    late.write_bytes(b"not yet a video")  # fails now, and is fixed before the retry
    out = tmp_path / "out"
    assert tokenize_dataset(manifest, out, CONFIG, workers=1).failed == 1
    before = checksums(out)
    late.write_bytes(data)
    # Without the flag a fixed file spoils nothing (it left no rows) and is not decoded.
    assert tokenize_dataset(manifest, out, CONFIG, workers=1).failed == 1 and checksums(out) == before
    again = tokenize_dataset(manifest, out, CONFIG, workers=1, retry_failed=True)
    assert (again.failed, again.shards_written, again.clips) == (0, 1, 16)
    after = checksums(out)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["shard-00002"]  # the failed video's shard, and no other
    assert not (out / "errors.jsonl").read_text()
