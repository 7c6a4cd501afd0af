"""How fast is the RLT stage, against the authors' formulation, a copy, and decoding?

8 clips of 16x224x224x3, the top half of each clip static and the bottom half noise, timed best of
5 in one run, on one thread by default:

  ours     `run_length_tokenize` (mask, lengths, packed tokens)
  authors  a faithful vectorised re-implementation of the RLT authors' formulation: float32
           ImageNet normalisation of the clip, frame differences, avg_pool3d, channel mean, their
           run-length computation, and a per-clip gather of the kept tubelets
  copy     one copy of the input batch: the memory-bandwidth floor
  decode   decord decoding one 16-frame clip at 224 from a generated H.264 video

    python benchmarks/bench_rlt.py [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rlt import run_length_tokenize
from rlt.pipeline import IMAGENET_MEAN, IMAGENET_STD, ClipSampling, decode_frames, resize_and_crop, sample_clips
from rlt.samples import make_samples


def authors_formulation(x_BTHWC: torch.Tensor, threshold: float = 0.1, ts: int = 2, p: int = 16) -> list:
    b, t, h, w, c = x_BTHWC.shape
    mean = torch.tensor(IMAGENET_MEAN, device=x_BTHWC.device).view(1, c, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x_BTHWC.device).view(1, c, 1, 1, 1)
    x = (x_BTHWC.permute(0, 4, 1, 2, 3).float() / 255.0 - mean) / std  # [B, C, T, H, W] float32
    diffs = (x[:, :, 2 * ts - 1 :: ts] - x[:, :, :-ts:ts]).abs()
    pooled = F.avg_pool3d(diffs, (1, p, p)).mean(dim=1, keepdim=True)
    first = torch.full_like(pooled[:, :, :1], 255.0)
    keep = torch.cat([first, pooled], dim=2).squeeze(1) > threshold  # [B, G, h, w]
    # Their run lengths: per (b, h, w) the gaps between kept tubelets.
    keep_bhwt = keep.permute(0, 2, 3, 1)
    ends = torch.cat([keep_bhwt, torch.ones_like(keep_bhwt[..., :1])], dim=-1)
    steps = torch.arange(ends.shape[-1], device=x.device).expand_as(ends)
    gaps = steps[ends].diff()
    lengths = gaps[gaps > 0]
    # Tubelets as rows (t, h, w order), then one gather per clip.
    g = t // ts
    tubelets = (
        x.view(b, c, g, ts, h // p, p, w // p, p)
        .permute(0, 2, 4, 6, 1, 3, 5, 7)
        .reshape(b, g * (h // p) * (w // p), -1)
    )
    flat_keep = keep.flatten(1)
    return [tubelets[i][flat_keep[i]] for i in range(b)] + [lengths]


def best_of(fn: Callable[[], object], repeats: int = 5, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    generator = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (8, 16, 224, 224, 3), dtype=torch.uint8, generator=generator)
    clips[:, :, :112] = clips[:, :1, :112]  # the top half of each clip is static
    clips = clips.to(device)
    out = torch.empty_like(clips)

    ours = best_of(lambda: run_length_tokenize(clips), args.repeats, sync)
    authors = best_of(lambda: authors_formulation(clips), args.repeats, sync)
    copy = best_of(lambda: out.copy_(clips), args.repeats, sync)
    packed = run_length_tokenize(clips)
    kept = packed.num_tokens / packed.dense_tokens

    with tempfile.TemporaryDirectory() as folder:
        manifest = make_samples(folder, num_videos=1, num_frames=96)
        video = str(manifest.parent / "sample_000_right.mp4")
        (clip,) = sample_clips(96, ClipSampling())
        decode = best_of(
            lambda: resize_and_crop(decode_frames(video, clip.frame_indices, backend="decord"), size=224, crop=224),
            args.repeats,
        )

    per_clip = ours / clips.shape[0]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{args.threads} thread(s), device {device}"
    )
    print(f"batch: 8 x 16x224x224x3 uint8, half static; kept {kept:.1%} of tokens at threshold 0.1")
    print(f"{'':8} {'ms/batch':>10} {'x copy':>8}")
    for name, seconds in (("ours", ours), ("authors", authors), ("copy", copy)):
        print(f"{name:8} {seconds * 1e3:10.2f} {seconds / copy:8.1f}")
    print(f"speed-up over the authors' formulation: {authors / ours:.1f}x (goal >= 3x)")
    print(f"ours against one copy of the batch: {ours / copy:.1f}x (goal <= 10x)")
    print(
        f"per clip: RLT {per_clip * 1e3:.2f} ms, decord decode+resize of a 240p clip {decode * 1e3:.2f} ms "
        f"-> RLT is {per_clip / decode:.1%} of decoding"
    )


if __name__ == "__main__":
    main()
