"""`rlt-prep tokenize` into and from an object store (a real S3 API on loopback, see tests/s3.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlt.pipeline import ClipSampling, read_manifest
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from tests.conftest import child_env
from tests.s3 import S3

SMALL = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
CONFIG = TokenizeConfig(shard_size=2, sampling=SMALL, backend="decord")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_samples(tmp_path_factory.mktemp("samples"), num_videos=6, num_frames=24, height=64, width=96)


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_dataset_written_to_s3_holds_the_bytes_of_one_written_locally(tmp_path: Path, samples: Path, s3: S3) -> None:
    url = f"{s3.bucket()}/datasets/one"
    summary = tokenize_dataset(samples, url, CONFIG, workers=1)
    assert (summary.out, summary.videos, summary.shards_written) == (url, 6, 3)
    local = tokenize_dataset(samples, tmp_path / "local", CONFIG, workers=1)
    expected = {k: v for k, v in local_files(local.out).items() if k != ".rlt-lock"}  # type: ignore[arg-type]
    assert s3.objects(url) == expected
    # Nothing is kept in the staging folder once published, and a re-run writes nothing.
    assert not list((Path(os.environ["RLT_PREP_CACHE"])).rglob("shards/shard-*/*.arrow"))
    assert tokenize_dataset(samples, url, CONFIG, workers=1).shards_written == 0


def test_a_manifest_and_videos_at_urls(tmp_path: Path, samples: Path, s3: S3) -> None:
    bucket = s3.bucket()
    for path in samples.parent.iterdir():  # the manifest and its videos, relative paths kept
        s3.put(f"{bucket}/videos/{path.name}", path.read_bytes())
    manifest = read_manifest(f"{bucket}/videos/{samples.name}")
    assert all(str(row.path).startswith(f"{bucket}/videos/") for row in manifest.rows)
    remote = tokenize_dataset(f"{bucket}/videos/{samples.name}", tmp_path / "from-s3", CONFIG, workers=1)
    local = tokenize_dataset(samples, tmp_path / "local", CONFIG, workers=1)
    assert (remote.videos, remote.failed, remote.clips, remote.tokens) == (6, 0, local.clips, local.tokens)
    shards = tmp_path / "from-s3" / "shards"
    assert len(list(shards.glob("*/*.arrow"))) == 6
    for data in shards.glob("*/*.arrow"):
        assert data.read_bytes() == (tmp_path / "local" / "shards" / data.parent.name / data.name).read_bytes()


def test_a_missing_video_at_a_url_is_a_failed_video_not_a_crash(tmp_path: Path, samples: Path, s3: S3) -> None:
    bucket = s3.bucket()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label\n{samples.parent / 'sample_000_right.mp4'},0\n{bucket}/nowhere.mp4,1\n")
    summary = tokenize_dataset(manifest, tmp_path / "out", CONFIG, workers=1)
    assert (summary.videos, summary.failed) == (2, 1)
    assert "nowhere.mp4" in (tmp_path / "out" / "errors.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_killed_while_publishing_resumes_to_the_same_objects(tmp_path: Path, samples: Path, s3: S3) -> None:
    bucket = s3.bucket()
    reference = tokenize_dataset(samples, f"{bucket}/reference", TokenizeConfig(shard_size=1, sampling=SMALL,
                                 backend="decord"), workers=1)  # fmt: skip
    expected = s3.objects(str(reference.out))
    url = f"{bucket}/killed"
    command = [sys.executable, "-m", "rlt", "tokenize", str(samples), url, "--shard-size", "1",
               "--num-frames", "8", "--frame-interval", "2", "--clips-per-video", "2", "--size", "64",
               "--backend", "decord", "--workers", "1"]  # fmt: skip
    env = child_env()
    for kill_after in (1, 3):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while sum(k.endswith("meta.json") for k in s3.objects(url)) < kill_after:
            assert process.poll() is None, "the job finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert "index.json" not in s3.objects(url)  # a killed job never looks complete
    summary = tokenize_dataset(samples, url, TokenizeConfig(shard_size=1, sampling=SMALL, backend="decord"), workers=1)
    assert summary.shards_written < 6  # published shards were kept
    assert s3.objects(url) == expected
