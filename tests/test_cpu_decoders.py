"""The CPU decoders called directly: torchcodec frame-exact and equal to PyAV, decord without copies."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from rlt import VideoDecodeError
from rlt.pipeline import VideoInfo, probe
from rlt.pipeline._decord import decode_decord
from rlt.pipeline._torchcodec import decode_torchcodec, import_torchcodec
from rlt.samples import read_frame_index
from tests.test_decode import BROKEN
from tests.videos import FRAMES

GOOD = ["h264", "vp9", "mjpeg", "h264_vfr", "vp9_vfr"]
# Out of order, repeated, first and last.
WANTED = [0, 1, 5, 17, 16, 39, 39, 2, FRAMES - 1]


@pytest.fixture(scope="module")
def torchcodec_loads() -> None:
    """Skips this file's torchcodec tests where torchcodec cannot load; CI must have it."""
    try:
        import_torchcodec()
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install torchcodec and FFmpeg's libraries (see .ci/run): {e}")
        pytest.skip(f"torchcodec cannot be imported: {e}")


needs_torchcodec = pytest.mark.usefixtures("torchcodec_loads")


def decode(path: Path, indices: list[int]) -> torch.Tensor:
    """What the pipeline's 'torchcodec' backend does: probe with PyAV, then decode."""
    return decode_torchcodec(probe(path), np.asarray(indices, dtype=np.int64))


def indices_read(frames_THWC: torch.Tensor) -> list[int]:
    return [read_frame_index(frame) for frame in frames_THWC.numpy()]


def pyav_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@needs_torchcodec
@pytest.mark.parametrize("kind", GOOD)
def test_torchcodec_gives_the_indices_asked_for(videos: dict[str, Path], kind: str) -> None:
    frames = decode(videos[kind], WANTED)
    assert frames.dtype == torch.uint8 and frames.device.type == "cpu"
    assert frames.shape == (len(WANTED), 96, 128, 3)
    assert indices_read(frames) == WANTED
    assert indices_read(decode(videos[kind], list(range(FRAMES)))) == list(range(FRAMES))


@needs_torchcodec
@pytest.mark.parametrize("kind", [*GOOD, "odd_size", "odd_size_vp9", "gray", "small", "width48", "one_frame"])
def test_torchcodec_pixels_equal_pyav(videos: dict[str, Path], kind: str) -> None:
    # Both convert YUV to RGB with libswscale at native size, so they agree to the bit.
    reference = pyav_frames(videos[kind])
    wanted = [len(reference) - 1, 0, len(reference) // 2, 0]
    np.testing.assert_array_equal(decode(videos[kind], wanted).numpy(), reference[wanted])


@needs_torchcodec
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_torchcodec_broken_files_raise_a_named_error(videos: dict[str, Path], kind: str) -> None:
    reason = "torchcodec" if kind == "truncated_faststart" else BROKEN[kind]
    with pytest.raises(VideoDecodeError) as raised:
        decode(videos[kind], [0, 1, 30])
    assert raised.value.path == str(videos[kind])
    assert reason in raised.value.reason


@needs_torchcodec
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_torchcodec_names_the_file_without_a_probe(videos: dict[str, Path], kind: str) -> None:
    # torchcodec's own errors, for a caller whose metadata came from elsewhere (a manifest).
    info = VideoInfo(path=str(videos[kind]), codec="h264", num_frames=FRAMES, fps=30.0, height=96, width=128)
    with pytest.raises(VideoDecodeError, match="torchcodec") as raised:
        decode_torchcodec(info, np.array([0, 1, 30]))
    assert raised.value.path == str(videos[kind])


@needs_torchcodec
def test_torchcodec_indices_past_the_end_or_negative(videos: dict[str, Path]) -> None:
    info = probe(videos["truncated_vp9"])
    assert 0 < info.num_frames < FRAMES
    assert indices_read(decode_torchcodec(info, np.arange(info.num_frames))) == list(range(info.num_frames))
    # The header of a truncated MP4 promises all frames; torchcodec's scan finds the real count.
    with pytest.raises(VideoDecodeError, match=r"frame 30 asked for, but torchcodec finds \d+ frames"):
        decode(videos["truncated_faststart"], [0, 30])
    with pytest.raises(VideoDecodeError, match=f"frame {FRAMES} asked for, but torchcodec finds {FRAMES} frames"):
        decode_torchcodec(probe(videos["vp9"]), np.array([0, FRAMES]))
    with pytest.raises(VideoDecodeError, match="negative"):
        decode_torchcodec(probe(videos["vp9"]), np.array([-1]))


# decord: increasing indices come back in decord's own array; any other order is gathered. ----------


def decord_peak_bytes(path: Path, indices: np.ndarray) -> tuple[torch.Tensor, int]:
    """decode_decord's frames and the most memory it held at once (numpy reports to tracemalloc)."""
    info = probe(path)
    # Once untraced, so that importing decord and its first reader count for nothing.
    decode_decord(info, indices[:1])
    tracemalloc.start()
    try:
        frames = decode_decord(info, indices)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return frames, peak


@pytest.mark.parametrize("kind", ["h264", "vp9"])
def test_decord_does_not_copy_increasing_indices(videos: dict[str, Path], kind: str) -> None:
    wanted = np.arange(0, FRAMES, 2)
    frames, peak = decord_peak_bytes(videos[kind], wanted)
    assert indices_read(frames) == wanted.tolist()
    # One frame array in all: a gather would have held a second, as large, beside it.
    assert peak < 1.25 * frames.numpy().nbytes


@pytest.mark.parametrize("kind", ["h264", "vp9"])
def test_decord_gathers_repeated_and_unordered_indices(videos: dict[str, Path], kind: str) -> None:
    frames, _ = decord_peak_bytes(videos[kind], np.array(WANTED))
    assert indices_read(frames) == WANTED
    assert frames.is_contiguous() and frames.shape == (len(WANTED), 96, 128, 3)


def test_decord_width48_repair_keeps_both_paths(videos: dict[str, Path]) -> None:
    reference = pyav_frames(videos["width48"])
    for wanted in ([0, 5, 11], [11, 0, 5, 5]):
        frames = decode_decord(probe(videos["width48"]), np.array(wanted))
        np.testing.assert_array_equal(frames.numpy(), reference[wanted])
