"""Sample videos with known content, written with PyAV: for the demo job and the tests.

Each frame carries its own index as a barcode along its top edge (white or black cells, one bit
each, robust to lossy codecs), over a static textured background with squares moving across it, so
a test can tell which frame a decoder returned and RLT has both static and moving patches to find.
Labels are the direction the squares move: 0 right, 1 left.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from rlt._checks import check_choice

Codec = Literal["h264", "vp9", "mjpeg"]
_CONTAINER = {"h264": ".mp4", "vp9": ".webm", "mjpeg": ".avi"}
_ENCODER = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}

BARCODE_BITS = 12
BARCODE_CELL = 8
LABELS = ("right", "left")


def draw_frame_index(frame_HWC: np.ndarray, index: int) -> None:
    """Draws ``index`` in place as a barcode of ``BARCODE_BITS`` cells along the top-left edge."""
    if not 0 <= index < 2**BARCODE_BITS:
        raise ValueError(f"frame index {index} does not fit in {BARCODE_BITS} bits")
    cell = BARCODE_CELL
    for bit in range(BARCODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame_HWC[:cell, bit * cell : (bit + 1) * cell] = value


def read_frame_index(frame_HWC: np.ndarray) -> int:
    """Reads the barcode written by `draw_frame_index` from the centre of each cell."""
    cell = BARCODE_CELL
    index = 0
    for bit in range(BARCODE_BITS):
        centre = frame_HWC[cell // 4 : 3 * cell // 4, bit * cell + cell // 4 : bit * cell + 3 * cell // 4]
        if centre.mean() > 127:
            index |= 1 << bit
    return index


def synthetic_clip(
    num_frames: int,
    height: int,
    width: int,
    *,
    seed: int,
    direction: int = 0,
    squares: int = 2,
    speed: int = 3,
    gray: bool = False,
) -> np.ndarray:
    """A uint8 ``[T, H, W, 3]`` clip: static texture, moving squares, the frame index drawn in."""
    rng = np.random.default_rng(seed)
    # A smooth texture compresses well, so the static background stays static after encoding.
    ys, xs = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    background = np.stack(
        [96 + 64 * np.sin(xs / (17 + 9 * c) + ys / (23 + 7 * c) + phase[c]) for c in range(3)], axis=-1
    ).astype(np.uint8)
    size = max(8, min(height, width) // 6)
    starts = [
        (int(rng.integers(BARCODE_CELL, max(BARCODE_CELL + 1, height - size))), int(rng.integers(0, width)))
        for _ in range(squares)
    ]
    colours = rng.integers(0, 256, (squares, 3), dtype=np.uint8)
    step = speed if direction == 0 else -speed
    clip = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        frame = clip[f]
        frame[:] = background
        for (y, x0), colour in zip(starts, colours, strict=True):
            x = (x0 + f * step) % max(width - size, 1)
            frame[y : y + size, x : x + size] = colour
        if width >= BARCODE_BITS * BARCODE_CELL and height >= BARCODE_CELL:
            draw_frame_index(frame, f)
    if gray:
        clip[:] = clip.mean(axis=-1, keepdims=True).astype(np.uint8)
    return clip


def write_video(
    path: str | Path,
    frames_THWC: np.ndarray | Iterable[np.ndarray],
    *,
    fps: float = 30,
    codec: Codec = "h264",
    pts: list[int] | None = None,
) -> Path:
    """Encodes RGB uint8 frames into ``path`` with PyAV.

    Args:
        path: output file; its container follows its suffix.
        frames_THWC: frames, each ``[H, W, 3]`` uint8.
        fps: nominal frame rate.
        codec: ``"h264"`` (libx264), ``"vp9"`` (libvpx) or ``"mjpeg"``.
        pts: optional presentation times in 1/fps ticks, one per frame, for a variable frame rate.
    """
    import av

    check_choice("codec", codec, _ENCODER)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames_THWC)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    height, width = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(_ENCODER[codec], rate=rate)
        stream.width, stream.height = width, height
        # 4:2:0 needs even sizes; odd-sized samples keep full chroma instead.
        even = width % 2 == 0 and height % 2 == 0
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else ("yuv420p" if even else "yuv444p")
        if codec == "h264":
            stream.options = {"crf": "18", "preset": "veryfast", "g": "48"}
        elif codec == "vp9":
            stream.options = {"crf": "24", "deadline": "realtime", "cpu-used": "8", "g": "48"}
        if pts is not None:
            # The encoder's own time base, not the stream's: the muxer rescales from it.
            stream.codec_context.time_base = 1 / rate
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_samples(
    folder: str | Path,
    *,
    num_videos: int = 8,
    num_frames: int = 96,
    height: int = 240,
    width: int = 320,
    codec: Codec = "h264",
    fps: float = 30,
    seed: int = 0,
) -> Path:
    """Writes ``num_videos`` sample videos and a ``manifest.csv`` (``path,label``) into ``folder``.

    Videos already there are kept, so a second call is cheap. Returns the manifest's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_videos):
        direction = i % 2
        name = f"sample_{i:03d}_{LABELS[direction]}{_CONTAINER[codec]}"
        if not (folder / name).exists():
            clip = synthetic_clip(num_frames, height, width, seed=seed + i, direction=direction)
            tmp = folder / f".{name}.tmp{_CONTAINER[codec]}"
            write_video(tmp, clip, fps=fps, codec=codec)
            tmp.replace(folder / name)
        rows.append((name, direction))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest
