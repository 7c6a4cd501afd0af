"""The machine: GPU and NVDEC utilisation sampled in the background, and what the report says it was."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu._context import REPO

NVDEC_ENGINES = {"H100": 7, "H200": 7, "GH200": 7, "B200": 7, "A100": 5, "A30": 4, "L40": 3, "L4": 4}


class UtilSampler:
    """Samples the GPU's decoder (NVDEC) and SM utilisation in the background, with timestamps.

    NVML through pynvml when it imports; else ``nvidia-smi --query-gpu=timestamp,... -lms 100``,
    whose own timestamps survive any buffering of its output. `window` keeps the samples inside a
    timed region, so set-up and warm-up never count.
    """

    def __init__(self, sample: bool) -> None:
        self.samples: list[tuple[float, float | None, float | None]] = []  # (unix time, decoder %, gpu %)
        self.source = "none: no CUDA device, or a section that does not sample"
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        if sample:
            self._start(_gpu_uuid())

    def _start(self, uuid: str | None) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml (pynvml), every 100 ms"
            self._thread = threading.Thread(target=self._poll_nvml, args=(pynvml, handle), daemon=True)
        except Exception as e:  # ImportError or an NVMLError: nvidia-smi reads the same counters
            why = f"{type(e).__name__}: {e}"
            if shutil.which("nvidia-smi") is None:
                self.source = f"none: no pynvml ({why}) and no nvidia-smi"
                return
            if uuid and _run(["nvidia-smi", "--id", uuid, "--query-gpu=name", "--format=csv,noheader"]) is None:
                uuid = None  # an id nvidia-smi does not take: all GPUs' lines would mix, so take GPU 0
            query = "--query-gpu=timestamp,utilization.decoder,utilization.gpu"
            cmd = [
                "nvidia-smi",
                "--id",
                uuid or "0",
                query,
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
            ]
            if shutil.which("stdbuf"):
                cmd = ["stdbuf", "-oL", *cmd]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = f"nvidia-smi -lms 100 (no pynvml: {why})"
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        self._thread.start()

    def _poll_nvml(self, pynvml: Any, handle: Any) -> None:
        while not self._stop.wait(0.1):
            try:
                decoder = float(pynvml.nvmlDeviceGetDecoderUtilization(handle)[0])
                gpu = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                continue
            self.samples.append((time.time(), decoder, gpu))

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None  # set before the thread starts
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 3:
                continue
            self.samples.append((_smi_time(parts[0]), _number(parts[1]), _number(parts[2])))

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Mean and p90 of decoder and GPU utilisation (%) over samples taken in [start, end] (unix time)."""
        if self._thread is not None:
            # Until a sample past the window arrives: nvidia-smi's lines may come in blocks (~10 s of
            # them in 4 KB) where stdbuf cannot make its output line-buffered.
            deadline = time.time() + 12
            while time.time() < deadline and not any(s[0] >= end for s in self.samples[-5:]):
                time.sleep(0.1)
        inside = [s for s in list(self.samples) if start <= s[0] <= end]
        summary: dict[str, Any] = {"source": self.source, "samples": len(inside), "window_s": round(end - start, 2)}
        for column, name in ((1, "decoder"), (2, "gpu")):
            values: list[float] = sorted(v for s in inside if (v := s[column]) is not None)
            summary[f"{name}_mean_pct"] = round(statistics.fmean(values), 1) if values else None
            summary[f"{name}_p90_pct"] = round(float(np.percentile(values, 90)), 1) if values else None
        return summary

    def close(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


def _smi_time(text: str) -> float:
    """nvidia-smi's local timestamp as unix time; the time of reading where it has another form."""
    for form in ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S"):
        with suppress(ValueError):
            return datetime.datetime.strptime(text, form).timestamp()
    return time.time()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def _gpu_uuid() -> str | None:
    # By UUID, because nvidia-smi's numbering need not follow CUDA's (CUDA_DEVICE_ORDER, CUDA_VISIBLE_DEVICES).
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


# Run in a child: a native library that crashes on import (a DALI or decord wheel built for another
# system) must not take the parent, and its report, with it. av before decord, as rlt does.
_VERSIONS = """
import importlib, json, platform
found = {"python": platform.python_version()}
for name, module in (("torch", "torch"), ("av", "av"), ("decord", "decord"), ("dali", "nvidia.dali"),
                     ("torchcodec", "torchcodec"), ("ray", "ray"), ("numpy", "numpy"), ("rlt", "rlt")):
    try:
        found[name] = str(getattr(importlib.import_module(module), "__version__", "importable, no __version__"))
    except Exception as e:
        found[name] = f"not importable ({type(e).__name__}: {str(e)[:120]})"
print(json.dumps(found))
"""


def versions() -> dict[str, str]:
    out = _run([sys.executable, "-c", _VERSIONS], timeout=180) or ""
    try:
        return json.loads(out.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"the version probe failed (it printed {out[-200:]!r})"}


def machine_info(cuda: bool) -> dict[str, Any]:
    cpu_model = ""
    if Path("/proc/cpuinfo").is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = match.group(1) if match else ""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "versions": versions(),
        "git_commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        # The code itself, for a copy of the tree whose git metadata may be stale (the GPU box's was):
        # `python -c "from benchmarks.gpu._sampling import source_digest; print(source_digest())"` at a
        # commit tells whether it is the code that ran.
        "source_digest": source_digest(),
        "torch_cuda": torch.version.cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"]),
            "driver_cuda": (re.findall(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]) or "") or [None])[0],
        }
    return info


def nvdec_engines(name: str) -> int | None:
    for model, engines in sorted(NVDEC_ENGINES.items(), key=lambda kv: -len(kv[0])):  # "GH200" before "H200"
        if model in name:
            return engines
    return None


def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of rlt/'s and benchmarks/'s Python files, paths and bytes."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("rlt/**/*.py"), *REPO.glob("benchmarks/**/*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
