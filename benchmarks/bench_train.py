"""How much faster does a training step run on RLT tokens than on every token of the same clips?

Generated 320x240 H.264 sample videos (static background, moving squares), 2 clips of 16x4 at 224
each, decoded and tokenized twice by the online pipeline: with RLT (threshold 0.1) and with
``drop_policy="none"`` (every token kept). The same model then takes alternating timed steps on the
two packings of the same batch of clips, in one run:

  train   forward + backward + AdamW step (bf16 autocast on CUDA)
  infer   forward only, no gradients

and prints step time, clips/s, tokens/s, the speed-up, the token ratio (dense / kept), and the
speed-up as a share of the token ratio (the issue's CPU goal: at least 0.8).

    python benchmarks/bench_train.py [--preset tiny] [--videos 8] [--steps 10] [--device cpu|cuda]

On a GPU, ``--preset vit_b --videos 16`` measures ViT-B (the paper reports +35% inference
throughput and 30% shorter fine-tuning with RLT on Kinetics-400; these clips are more static).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from rlt.pipeline import ClipSampling, OnlinePipeline, PackedTokens, RLTConfig
from rlt.samples import make_samples
from rlt.train import PRESETS, VideoViT, param_groups


def tokenize(manifest: Path, drop_policy: str) -> tuple[PackedTokens, torch.Tensor]:
    pipeline = OnlinePipeline(
        manifest,
        sampling=ClipSampling(clips_per_video=2),
        rlt=RLTConfig(drop_policy=drop_policy),  # type: ignore[arg-type]
        backend="decord",
        videos_per_batch=1000,
    )
    (batch,) = list(pipeline)
    return batch.tokens, batch.labels


def step_functions(
    model: VideoViT, batches: dict[str, tuple[PackedTokens, torch.Tensor]], device: torch.device
) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """``train_step(name)`` and ``infer_step(name)`` of ``model`` on ``batches[name]`` (tokens, labels).

    The batches are already on ``device``. A train step is forward, cross-entropy, backward and an
    AdamW step with layer-decay parameter groups; an infer step is forward only. Both run under bf16
    autocast on CUDA and in float32 on the CPU. benchmarks/gpu/rlt_train.py times the same steps.
    """
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05, layer_decay=0.75), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def train_step(name: str) -> None:
        tokens, labels = batches[name]
        with autocast:
            logits = model(tokens.tokens, tokens.positions, tokens.lengths, tokens.cu_seqlens)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step(name: str) -> None:
        tokens, _ = batches[name]
        with autocast:
            model(tokens.tokens, tokens.positions, tokens.lengths, tokens.cu_seqlens)

    return train_step, infer_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as folder:
        manifest = make_samples(Path(folder) / "videos", num_videos=args.videos)
        batches = {"rlt": tokenize(manifest, "rlt"), "dense": tokenize(manifest, "none")}
    clips = batches["rlt"][0].num_clips

    torch.manual_seed(0)
    model = VideoViT(PRESETS[args.preset](2)).to(device)
    on_device = {name: (tokens.to(device), labels.to(device)) for name, (tokens, labels) in batches.items()}
    train_step, infer_step = step_functions(model, on_device, device)

    results: dict[tuple[str, str], list[float]] = {}
    for mode, step in (("train", train_step), ("infer", infer_step)):
        for name in on_device:  # warm-up
            step(name)
        sync(device)
        for _ in range(args.steps):
            for name in on_device:  # alternating, so drift in the machine's speed hits both alike
                start = time.perf_counter()
                step(name)
                sync(device)
                results.setdefault((mode, name), []).append(time.perf_counter() - start)

    kept, dense = batches["rlt"][0].num_tokens, batches["dense"][0].num_tokens
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    threads = torch.get_num_threads()
    print(f"{args.preset}, {clips} clips of 16x224x224, {where}, {threads} threads, torch {torch.__version__}")
    print(f"tokens per batch: RLT {kept}, dense {dense}; token ratio {dense / kept:.2f}x")
    print(f"{'':6} {'':6} {'step ms':>9} {'clips/s':>9} {'tokens/s':>10}")
    for mode in ("train", "infer"):
        median = {name: statistics.median(results[(mode, name)]) for name in on_device}
        for name, seconds in median.items():
            n = kept if name == "rlt" else dense
            print(f"{mode:6} {name:6} {1000 * seconds:9.1f} {clips / seconds:9.1f} {n / seconds:10.0f}")
        speedup = median["dense"] / median["rlt"]
        print(
            f"{mode:6} speed-up {speedup:.2f}x = {speedup / (dense / kept):.2f} of the token ratio "
            f"({100 * (speedup - 1):.0f}% more clips/s, {100 * (1 - 1 / speedup):.0f}% less time per clip)"
        )


if __name__ == "__main__":
    main()
