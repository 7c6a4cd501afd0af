"""Does the pipeline reach its GPU goals on this machine? Five sections, one command.

Each section runs in its own process, so a crash, a hang or a CUDA error in one loses none of the
others; OUT/bench_gpu.json and OUT/bench_gpu.md are rewritten after every section (and a section
saves its figures as it goes, so a killed run still leaves them). Every goal is a ratio of two
things measured side by side in the same section, printed next to the goal:

  decode    clips/s of VideoMAE 16x4 clips at 224 from 720p and 1080p H.264 (10 s, 30 fps, GOP 48):
            DALI (NVDEC), batches of several videos, one or several batches at once, against decord
            and torchcodec on all CPU cores (os.cpu_count() workers, one decoder thread each; decord
            in threads and in processes, the faster kept). Goals: DALI >= 5x decord; NVDEC busy
            >= 80% while DALI decodes. Frames/s decoded, against NVIDIA's ~770 fps of 1080p H.264 per NVDEC engine.
  rlt       run_length_tokenize on a uint8 [B,16,224,224,3] CUDA batch, half static, against one
            device copy of it (goal <= 5x) and against a ViT-B bf16 forward pass on its tokens
            (goal < 1%). CUDA events, median of many.
  train     ViT-B bf16 training step and inference on RLT tokens against every token of the same
            decoded clips: the speed-up against the token ratio (goal >= 0.9 of it).
  online    rlt.train.train on raw 720p videos (OnlinePipeline, DALI) against training on the same
            videos tokenized beforehand: clips/s, and how busy the GPU is (goal >= 80% online).
  tokenize  tokenize_dataset (embedded Ray) with DALI against decord on all cores, same manifest.

    python benchmarks/bench_gpu.py --out DIR [--quick] [--sections decode,rlt,train,online,tokenize]
        [--budget 300] [--total-budget S] [--preset vit_b] [--videos DIR] [--nvdec-engines N] [--allow-cpu]

``--budget`` is each section's soft time budget (it starts no new measurement past it; its process is
killed at 1.5x, at least +60 s); ``--total-budget`` fits the whole run into S seconds, shrinking the
later sections' budgets and skipping those that would not fit.
A report already in DIR keeps the sections this run does not redo, each marked with its run.

Test videos (a static textured background with grain, textured objects moving across it) are
written first with PyAV into DIR/videos and reused by later runs. GPU and NVDEC utilisation come
from NVML (pynvml) when it imports, else from ``nvidia-smi -lms 100``, sampled every 100 ms in the
background; only the samples inside a timed window count. ``--allow-cpu`` runs every section on the
CPU at --quick sizes (DALI as "dali-cpu", on MJPEG videos, which it can decode; the tiny model) to
test this script; its figures say nothing about a GPU. Exit status: 0, 1 when a section failed (its
error is in the report), 2 for bad arguments or no GPU.

The code is in benchmarks/gpu/, one module per concern; this script sets up the import path and runs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The tree this script sits in is what it measures, installed or not; children and Ray workers too.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

if __name__ == "__main__":
    from benchmarks.gpu import main

    sys.exit(main(sys.argv[1:], description=__doc__))
