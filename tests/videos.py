"""Generated test videos, written once per test session."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from rlt.samples import synthetic_clip, write_video

FRAMES = 40
# Presentation times (in 1/30 s ticks) with uneven gaps: a variable frame rate.
VFR_PTS = [int(t) for t in np.cumsum([0] + [1 + (i % 3 == 0) + (i % 7 == 0) for i in range(FRAMES - 1)])]


def write_faststart(src: Path, dst: Path) -> Path:
    """Remuxes an MP4 with its index (moov) in front, so a truncated copy still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = copy
            out.mux(packet)
    return dst


def make_test_videos(folder: Path) -> dict[str, Path]:
    """Good videos of every kind the decoders must handle, and broken ones."""
    clip = synthetic_clip(FRAMES, 96, 128, seed=1)
    v = {
        "h264": write_video(folder / "cfr.mp4", clip, codec="h264"),
        "vp9": write_video(folder / "cfr.webm", clip, codec="vp9"),
        "mjpeg": write_video(folder / "cfr.avi", clip, codec="mjpeg"),
        "h264_vfr": write_video(folder / "vfr.mp4", clip, codec="h264", pts=VFR_PTS),
        "vp9_vfr": write_video(folder / "vfr.webm", clip, codec="vp9", pts=VFR_PTS),
        "one_frame": write_video(folder / "one.mp4", clip[:1], codec="h264"),
        "one_frame_vp9": write_video(folder / "one.webm", clip[:1], codec="vp9"),
        "odd_size": write_video(folder / "odd.mp4", synthetic_clip(12, 97, 131, seed=2), codec="h264"),
        "odd_size_vp9": write_video(folder / "odd.webm", synthetic_clip(12, 97, 131, seed=2), codec="vp9"),
        "gray": write_video(folder / "gray.mp4", synthetic_clip(12, 96, 128, seed=3, gray=True), codec="h264"),
        "small": write_video(folder / "small.mp4", synthetic_clip(12, 64, 96, seed=4), codec="h264"),
        "width48": write_video(folder / "width48.mp4", synthetic_clip(12, 32, 48, seed=5), codec="h264"),
    }
    data = v["h264"].read_bytes()
    faststart = write_faststart(v["h264"], folder / "faststart.mp4").read_bytes()
    webm = v["vp9"].read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "truncated_faststart.mp4").write_bytes(faststart[: len(faststart) // 2])
    (folder / "truncated.webm").write_bytes(webm[: len(webm) // 2])
    (folder / "a_directory.mp4").mkdir()
    _write_audio_only(folder / "audio.m4a")
    for name in ("empty", "random", "text", "truncated", "truncated_faststart", "a_directory"):
        v[name] = folder / f"{name}.mp4"
    v["truncated_vp9"] = folder / "truncated.webm"
    v["audio_only"] = folder / "audio.m4a"
    v["missing"] = folder / "no_such_video.mp4"
    return v


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
