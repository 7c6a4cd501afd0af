"""benchmarks/bench_gpu.py refuses to run without a GPU, and runs a section end to end with --allow-cpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def run(*args: str | Path, cpu: bool = False) -> subprocess.CompletedProcess[str]:
    """The script's run; with ``cpu``, on the CPU on a GPU machine too (the GPUs hidden from torch)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if cpu else None
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only without CUDA does the script refuse to run")
def test_without_cuda_it_says_so_and_exits_2(tmp_path: Path) -> None:
    result = run("--out", tmp_path)
    assert result.returncode == 2, result.stderr
    assert "error: bench_gpu needs a CUDA GPU (torch sees none)" in result.stderr
    assert not (tmp_path / "bench_gpu.json").exists()


def test_unknown_section_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--out", tmp_path, "--allow-cpu", "--sections", "rlt,nope")
    assert result.returncode == 2
    assert "unknown section(s) nope" in result.stderr


def test_rlt_section_on_the_cpu_writes_its_figures(tmp_path: Path) -> None:
    result = run("--out", tmp_path, "--quick", "--allow-cpu", "--sections", "rlt", cpu=True)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert report["machine"]["hostname"] and report["machine"]["cpu_count"] >= 1
    assert "torch" in report["machine"]["versions"]
    assert list(report["sections"]) == ["rlt"]  # no videos step: the rlt section needs none
    section = report["sections"]["rlt"]
    assert section["status"] == "ok", section.get("error")
    figures = section["figures"]
    assert figures["batch"] == [4, 16, 224, 224, 3]
    assert figures["rlt_ms"] > 0 and figures["copy_ms"] > 0 and figures["vit_forward_ms"] > 0
    assert 0 < figures["kept_ratio"] < 1
    assert [g["figure"] for g in section["goals"]] == [
        "rlt: RLT / one device copy of the batch",
        "rlt: RLT as a share of a tiny bf16 forward on its tokens",
    ]
    assert all(g["value"] is not None for g in section["goals"])
    assert "## rlt: ok" in (tmp_path / "bench_gpu.md").read_text()
