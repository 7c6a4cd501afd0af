"""Clip sampling: VideoMAE windows, seeded training offsets, padding of short videos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlt.pipeline import ClipSampling, sample_clips


def test_default_is_16_frames_at_interval_4_centred() -> None:
    (clip,) = sample_clips(300, ClipSampling())
    # The window spans 15 * 4 + 1 = 61 frames; centred, it starts at (300 - 61) // 2 = 119.
    assert clip.frame_indices.tolist() == list(range(119, 119 + 64, 4))
    assert not clip.padded.any()


def test_eval_clips_are_spread_evenly_and_reach_both_ends() -> None:
    clips = sample_clips(161, ClipSampling(clips_per_video=5))
    starts = [int(c.frame_indices[0]) for c in clips]
    assert starts == [0, 25, 50, 75, 100]
    assert clips[-1].frame_indices[-1] == 160
    assert [c.clip for c in clips] == [0, 1, 2, 3, 4]


def test_train_offsets_are_a_pure_function_of_seed_epoch_video() -> None:
    train = ClipSampling(mode="train", seed=7)

    def start(video: str, epoch: int, sampling: ClipSampling = train) -> int:
        return int(sample_clips(1000, sampling, video_key=video, epoch=epoch)[0].frame_indices[0])

    assert start("a.mp4", 0) == start("a.mp4", 0)
    starts = {start("a.mp4", epoch) for epoch in range(20)}
    assert len(starts) > 10  # different epochs, different offsets
    assert start("a.mp4", 3) != start("b.mp4", 3) or start("a.mp4", 4) != start("b.mp4", 4)
    other_seed = ClipSampling(mode="train", seed=8)
    assert [start("a.mp4", e) for e in range(5)] != [start("a.mp4", e, other_seed) for e in range(5)]


def test_short_video_repeats_its_last_frame_and_marks_padding() -> None:
    (clip,) = sample_clips(23, ClipSampling())
    assert clip.frame_indices.tolist() == [0, 4, 8, 12, 16, 20] + [22] * 10
    assert clip.padded.tolist() == [False] * 6 + [True] * 10
    # Tubelets of two frames: (0,4) (8,12) (16,20) are real; (22,22)... are padding.
    assert clip.padded_tubelets(2).tolist() == [False, False, False] + [True] * 5


def test_one_frame_video() -> None:
    (clip,) = sample_clips(1, ClipSampling(num_frames=4, frame_interval=2))
    assert clip.frame_indices.tolist() == [0, 0, 0, 0]
    assert clip.padded.tolist() == [False, True, True, True]


def test_fps_resampling_maps_to_source_frames() -> None:
    # 60 fps source, sampled at 30 fps: resampled frame j is source frame 2j.
    (clip,) = sample_clips(600, ClipSampling(num_frames=4, frame_interval=1, fps=30), source_fps=60)
    steps = np.diff(clip.frame_indices)
    assert (steps == 2).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames must be"),
        ({"frame_interval": 1.5}, "frame_interval must be"),
        ({"mode": "test"}, "'eval', 'train'"),
        ({"size": 128, "crop": 224}, "crop=224 is larger"),
        ({"fps": 0}, "fps must be"),
    ],
)
def test_bad_sampling_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipSampling(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    num_frames=st.integers(1, 500),
    t=st.sampled_from([2, 4, 8, 16]),
    interval=st.integers(1, 8),
    k=st.integers(1, 5),
    mode=st.sampled_from(["eval", "train"]),
)
def test_clips_stay_inside_the_video(num_frames: int, t: int, interval: int, k: int, mode: str) -> None:
    sampling = ClipSampling(num_frames=t, frame_interval=interval, clips_per_video=k, mode=mode)  # type: ignore[arg-type]
    clips = sample_clips(num_frames, sampling, video_key="v")
    assert len(clips) == (k if mode == "eval" else 1)
    for clip in clips:
        assert clip.frame_indices.shape == (t,)
        assert clip.frame_indices.min() >= 0 and clip.frame_indices.max() < num_frames
        assert (np.diff(clip.frame_indices) >= 0).all()
        # Padding only at the end, and only when the window does not fit.
        assert clip.padded.any() == (sampling.window > num_frames)
        assert (np.diff(clip.padded.astype(int)) >= 0).all()
