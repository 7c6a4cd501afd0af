"""Fault injection in the style of SQLite's crash tests: a full disk, an I/O error or a kill -9 at
the N-th write, for every N of a small job, and then the same command again.

`tests/fault_shim.c` (compiled here, loaded with LD_PRELOAD) fails the N-th write under the run's
folder; `tests/fault_driver.py` forks one warm process per run. After each fault the command must
have said `error: ...` naming a file under its folder (exit 2), or died of the kill; run again,
`tokenize` must give the reference dataset byte for byte and `train --resume` the reference losses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the shim is an LD_PRELOAD library for glibc")


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs a C compiler for the fault-injection shim")
        pytest.skip("no C compiler for the fault-injection shim")
    library = tmp_path_factory.mktemp("shim") / "fault_shim.so"
    source = ROOT / "tests" / "fault_shim.c"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", library, source, "-ldl"], check=True)
    return library


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 16-frame videos and one that is not a video: four one-video shards, one failure."""
    folder = tmp_path_factory.mktemp("fault-videos")
    manifest = make_samples(folder, num_videos=3, num_frames=16, height=64, width=96, seed=3)
    (folder / "broken.mp4").write_bytes(b"not a video")
    with manifest.open("a") as f:
        f.write("broken.mp4,1\n")
    return manifest


def sweep(shim: Path, work: Path, args: list[str], again: list[str], keep: list[str] = []) -> dict[str, Any]:  # noqa: B006
    spec = {
        "root": str(work / "runs"),
        "logs": str(work / "logs"),
        "warm_up": args,
        "args": args,
        "again": again,
        "kinds": ["enospc", "eio", "kill"],
        "keep": keep,
        "report": str(work / "report.json"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    # On the CPU on a GPU machine too: the runs are forks of a process whose warm-up ran the command,
    # and CUDA cannot be used again in a forked child.
    env = child_env(LD_PRELOAD=str(shim), RLT_PREP_CACHE=str(work / "cache"), CUDA_VISIBLE_DEVICES="")
    subprocess.run(
        [sys.executable, "-m", "tests.fault_driver", str(work / "spec.json")], env=env, check=True, timeout=600
    )
    report: dict[str, Any] = json.loads((work / "report.json").read_text())
    return report


def check_fault(run: dict[str, Any], root: str) -> None:
    """The faulted run failed as the user should see it: killed, or one `error:` line naming a file."""
    faulted, where = run["faulted"], f"{run['kind']} at write {run['at']}"
    if run["kind"] == "kill":
        assert faulted["status"] == -9, where
        return
    assert faulted["status"] == 2, f"{where}: exit {faulted['status']}\n{faulted['output']}"
    assert "Traceback" not in faulted["output"], where
    last = faulted["output"].strip().splitlines()[-1]
    reason = "No space left on device" if run["kind"] == "enospc" else "Input/output error"
    assert last.startswith("error: ") and reason in last and f"{root}/{run['kind']}-{run['at']}/" in last, where


# Zarr writes a file per array and its metadata (about 30 writes a shard, against 3 for Arrow):
# its sweep takes the first video and the broken one.
@pytest.mark.parametrize(("storage", "videos", "least"), [("arrow", 4, 16), ("zarr", 2, 40)])
def test_tokenize_after_a_fault_at_every_write_gives_the_same_dataset(
    tmp_path: Path, shim: Path, small: Path, storage: str, videos: int, least: int
) -> None:
    rows = small.read_text().splitlines()
    manifest = small.with_name(f"manifest-{videos}.csv")
    manifest.write_text("\n".join([*rows[:videos], rows[-1]]) + "\n")
    command = ["tokenize", str(manifest), "{root}", "--workers", "1", "--shard-size", "1", "--format", storage]
    report = sweep(shim, tmp_path, command, command)
    reference = report["reference"]
    assert reference["status"] == 3, reference["output"]  # the broken video failed; the rest is written
    assert "errors.jsonl" in reference["files"] and "index.json" in reference["files"]
    writes = reference["writes"]
    assert writes >= least  # Arrow: lock, plan, 4 shards of 3 files, errors, index
    assert len(report["runs"]) == 3 * writes
    for run in report["runs"]:
        check_fault(run, str(tmp_path / "runs"))
        assert run["again"]["status"] == 3, run["again"]["output"]
        assert run["files"] == reference["files"], f"{run['kind']} at write {run['at']}"


def test_training_after_a_fault_at_every_write_resumes_to_the_same_losses(
    tmp_path: Path, shim: Path, small: Path
) -> None:
    dataset = tmp_path / "dataset"
    tokenize_dataset(small, dataset, TokenizeConfig(shard_size=1), workers=1)
    command = ["train", str(dataset), "--out", "{root}", "--max-steps", "4", "--checkpoint-every", "2"]
    command += ["--max-tokens", "512"]
    report = sweep(shim, tmp_path, command, [*command, "--resume"], keep=["metrics.jsonl"])

    def losses(text: str | None) -> list[float]:
        return [json.loads(line)["loss"] for line in (text or "").splitlines()]

    reference = report["reference"]
    assert reference["status"] == 0, reference["output"]
    expected = losses(reference["kept"]["metrics.jsonl"])
    assert len(expected) == 4
    assert reference["writes"] >= 8  # lock, config, 4 metrics lines, 2 checkpoints
    for run in report["runs"]:
        check_fault(run, str(tmp_path / "runs"))
        assert run["again"]["status"] == 0, run["again"]["output"]
        assert losses(run["kept"]["metrics.jsonl"]) == expected, f"{run['kind']} at write {run['at']}"
        assert sorted(run["files"]) == sorted(reference["files"])  # no temporary file left behind
