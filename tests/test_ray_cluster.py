"""`rlt-prep tokenize --ray-address` on a multi-node Ray cluster, losing a node mid-job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlt import open_dataset
from rlt.samples import make_samples


def checksums(out: Path) -> dict[str, str]:
    return {s["name"]: s["checksum"] for s in json.loads((out / "index.json").read_text())["shards"]}


def tokenize(manifest: Path, out: Path, address: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "rlt", "tokenize", str(manifest), str(out), "--ray-address", address,
               "--shard-size", "1", "--num-frames", "8", "--frame-interval", "2", "--clips-per-video", "2",
               "--size", "64", "--backend", "decord"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_job_on_a_two_node_cluster_survives_losing_a_node(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    manifest = make_samples(tmp_path / "videos", num_videos=10, num_frames=24, height=64, width=96)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()

        reference = tokenize(manifest, tmp_path / "reference", cluster.address)
        output, _ = reference.communicate(timeout=300)
        assert reference.returncode == 0, output.decode()[-3000:]

        out = tmp_path / "out"
        job = tokenize(manifest, out, cluster.address)
        deadline = time.monotonic() + 240
        while not (out / "shards").is_dir() or len(os.listdir(out / "shards")) < 3:
            assert job.poll() is None, "the job finished before a node could be removed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # Kills the node's raylet and workers; Ray re-runs the tasks that were running there.
        cluster.remove_node(worker, allow_graceful=False)
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output.decode()[-3000:]
    finally:
        cluster.shutdown()

    assert checksums(out) == checksums(tmp_path / "reference")
    keys = [(r.video, r.clip) for r in open_dataset(out, columns=["video", "clip"])]
    assert len(keys) == len(set(keys)) == 20
