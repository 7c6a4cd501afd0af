"""Test videos: generated once per (codec, length), reused by every section and later runs."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.gpu._context import Context, Recorder, log, spawn

RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920)}


def scene_frames(height: int, width: int, frames: int, seed: int) -> Iterator[np.ndarray]:
    """RGB uint8 frames: a static textured background with a 5-frame cycle of grain (so the encoder
    codes residuals everywhere, as on camera footage, while RLT still finds it static) and eight
    striped objects crossing it at different speeds. Geometry is relative to the frame, so 720p and
    1080p videos of one seed show the same scene."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / height
    phase = rng.uniform(0, 2 * np.pi, (3, 2))
    texture = rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    background = np.stack(
        [100 + 45 * np.sin(xs * (9 + 4 * c) + phase[c, 0]) * np.cos(ys * (7 + 3 * c) + phase[c, 1]) for c in range(3)],
        axis=-1,
    ).astype(np.int16)
    background += texture
    grainy = [
        np.clip(background + rng.integers(-3, 4, (height, width, 1), dtype=np.int16), 0, 255).astype(np.uint8)
        for _ in range(5)
    ]
    objects = []
    for _ in range(8):
        h, w = int(rng.uniform(0.12, 0.3) * height), int(rng.uniform(0.12, 0.3) * height)
        stripes = (np.sin(np.arange(w) / max(2.0, rng.uniform(0.01, 0.03) * height)) > 0)[None, :, None]
        colour_a, colour_b = rng.integers(0, 256, (2, 3))
        sprite = np.where(stripes, colour_a, colour_b).astype(np.uint8).repeat(h, axis=0)
        velocity = rng.uniform(0.002, 0.01, 2) * np.array([height, width]) * rng.choice([-1, 1], 2)
        objects.append((sprite, rng.uniform(0, 1, 2) * np.array([height - h, width - w]), velocity))
    for f in range(frames):
        frame = grainy[f % len(grainy)].copy()
        for sprite, start, velocity in objects:
            room = np.array([height - sprite.shape[0], width - sprite.shape[1]])
            # A triangle wave: the object bounces off the edges.
            y, x = (room - np.abs((start + f * velocity) % (2 * room) - room)).astype(int)
            frame[y : y + sprite.shape[0], x : x + sprite.shape[1]] = sprite
        yield frame


def _write_video(item: tuple[str, int, int, int, int, str]) -> None:
    path, height, width, frames, seed, codec = item
    import av

    tmp = Path(path).with_name(f".{Path(path).name}.tmp{Path(path).suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream({"h264": "libx264", "mjpeg": "mjpeg"}[codec], rate=30)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec == "h264" else "yuvj420p"
        stream.thread_count = 1  # the pool runs one video per core
        if codec == "h264":
            stream.options = {"crf": "23", "preset": "veryfast", "g": "48", "keyint_min": "48"}
        for array in scene_frames(height, width, frames, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def video_manifest(ctx: Context, resolution: str) -> tuple[Path, list[str]]:
    manifest = ctx.videos / f"manifest_{resolution}.csv"
    if not manifest.is_file():
        raise RuntimeError(f"{manifest} is missing: the videos step did not finish (see its entry)")
    with open(manifest) as f:
        paths = [str(ctx.videos / row["path"]) for row in csv.DictReader(f)]
    return manifest, paths[: ctx.sizes.videos]


def section_videos(rec: Recorder, ctx: Context) -> None:
    suffix = {"h264": ".mp4", "mjpeg": ".avi"}[ctx.codec]
    for resolution, (height, width) in RESOLUTIONS.items():
        names = [f"{resolution}_{i:03d}{suffix}" for i in range(ctx.sizes.videos)]
        todo = [
            (str(ctx.videos / n), height, width, ctx.sizes.frames, i, ctx.codec)
            for i, n in enumerate(names)
            if not (ctx.videos / n).exists()
        ]
        started = time.perf_counter()
        if todo:
            log(f"writing {len(todo)} {resolution} {ctx.codec} videos of {ctx.sizes.frames} frames")
            ctx.videos.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(os.cpu_count(), mp_context=spawn()) as pool:
                list(pool.map(_write_video, todo))
        with open(ctx.videos / f"manifest_{resolution}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((n, i % 2) for i, n in enumerate(names))
        size = sum((ctx.videos / n).stat().st_size for n in names)
        rec.figures[resolution] = {
            "videos": len(names),
            "written_now": len(todo),
            "seconds": round(time.perf_counter() - started, 1),
            "frames": ctx.sizes.frames,
            "codec": ctx.codec,
            "mbit_per_s": round(8 * size / len(names) / (ctx.sizes.frames / 30) / 1e6, 2),
        }
        rec.save()
