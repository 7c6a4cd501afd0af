"""What a section sees: its sizes, its device, and a recorder that saves after every figure."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from benchmarks.gpu._sampling import UtilSampler

REPO = Path(__file__).resolve().parents[2]
CROP = 224
FRAMES_PER_CLIP = 16
DENSE_PER_CLIP = (FRAMES_PER_CLIP // 2) * (CROP // 16) ** 2  # tubelets of 2x16x16: 1568


@dataclasses.dataclass(frozen=True)
class Sizes:
    videos: int  # per resolution
    frames: int  # per video, at 30 fps
    min_timed_s: float  # shortest timed window of a decoder
    dali_runs: tuple[tuple[int, int], ...]  # (videos per batch, threads decoding batches at once)
    rlt_batch: int
    repeats: int
    train_clips: int
    train_steps: int
    online_steps: int
    online_videos_per_batch: int
    warm_steps: int


FULL = Sizes(32, 300, 4.0, ((16, 1), (16, 2), (8, 4)), 32, 50, 32, 10, 30, 16, 3)
QUICK = Sizes(6, 72, 0.5, ((2, 1), (3, 2)), 4, 5, 4, 2, 4, 2, 1)


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class Context:
    out: Path
    videos: Path
    sizes: Sizes
    device: torch.device
    dali: str  # "dali", or "dali-cpu" with --allow-cpu
    preset: str
    codec: str
    nvdec_engines: int | None
    sampler: UtilSampler

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self) -> torch.autocast:
        """bf16 on the GPU; on the CPU a no-op, so --allow-cpu runs the model as it is."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """OUT/work/NAME, empty, and removed afterwards: checkpoints of a ViT-B and datasets are not figures."""
        work = self.out / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


class Recorder:
    """One section's figures and goals, written atomically to its JSON file after every change."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.budget_s = path, budget_s
        self.started = time.monotonic()
        self.data: dict[str, Any] = {"status": "running", "figures": {}, "goals": [], "notes": []}

    @property
    def figures(self) -> dict[str, Any]:
        return self.data["figures"]

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.budget_s

    def skip(self, what: str) -> None:
        self.note(f"skipped {what}: the section's time budget ({self.budget_s:.0f} s) ran out")
        self.data["truncated"] = True

    def note(self, text: str) -> None:
        log(f"  note: {text}")
        self.data["notes"].append(text)
        self.save()

    def goal(self, figure: str, value: float | None, op: str, target: float, unit: str = "x") -> None:
        compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}[op]
        met = None if value is None else compare(float(value), float(target))
        self.data["goals"].append({"figure": figure, "value": value, "goal": f"{op} {target}{unit}", "met": met})
        shown = "n/a" if value is None else f"{value:.3g}{unit}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[met]
        log(f"  GOAL {figure}: {shown} (goal {op} {target}{unit}) -> {verdict}")
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.started, 1)
        write_json(self.path, self.data)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str))


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def spawn() -> Any:
    # Not fork: this process may hold a CUDA context and DALI's threads.
    return multiprocessing.get_context("spawn")
