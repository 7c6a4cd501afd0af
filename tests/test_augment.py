"""Augmentation of stored tokens: flip, crop and CutMix equal RLT on the augmented frames, bit for bit.

Each test tokenizes clips, transforms the tokens, and compares with `run_length_tokenize` on the
frames transformed the plain way (a flipped tensor, a slice, a composite), in both compare modes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlt import PackedTokens, run_length_tokenize
from rlt.pipeline import FrameAugment, augment_frames
from rlt.train import (
    AugmentConfig,
    augment,
    crop_tokens,
    cutmix_tokens,
    draw_augmentation,
    erase_tokens,
    flip_tokens,
    one_clip_per_video,
    soft_targets,
)
from tests.clips import KINDS
from tests.conftest import DEVICES

COMPARES = ["previous", "run_start"]
NO_ERASE = AugmentConfig(erase_prob=0.0)


def repeated_noise(rng: np.random.Generator, t: int, h: int, w: int, p: int) -> np.ndarray:
    """Random frames in which each patch repeats its previous frame three times in four, so runs of
    every length exist and differ from patch to patch."""
    clip = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    for f in range(1, t):
        same = rng.random((h // p, w // p)) < 0.75
        same_px = same.repeat(p, 0).repeat(p, 1)
        clip[f][same_px] = clip[f - 1][same_px]
    return clip


def make_clips(kinds: list[str], *, seed: int, t: int, h: int, w: int, p: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    clips = [repeated_noise(rng, t, h, w, p) if k == "repeats" else KINDS[k](rng, t, h, w) for k in kinds]
    return torch.from_numpy(np.stack(clips))


STRUCTURED = ["moving_square", "static", "slow_ramp", "jitter"]
RANDOM = ["repeats", "noise_patches", "random", "repeats"]


def tokenize(frames: torch.Tensor, p: int, compare: str, threshold: float, ts: int = 2) -> PackedTokens:
    packed = run_length_tokenize(frames, tubelet_size=ts, patch_size=p, threshold=threshold, compare=compare)  # type: ignore[arg-type]
    b = packed.num_clips
    return packed.with_clips(
        labels=torch.arange(b) % 3,
        videos=[f"v{i}" for i in range(b)],
        clip_ids=list(range(b)),
        frame_indices=torch.arange(frames.shape[1]).repeat(b, 1),
        padded=torch.zeros(b, packed.keep.shape[1], dtype=torch.bool),
    )


def assert_same(got: PackedTokens, expected: PackedTokens) -> None:
    for name in ("tokens", "positions", "lengths", "cu_seqlens", "keep"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.device == b.device, name
        assert torch.equal(a, b), name


# Frame-space references: what the augmentation means on pixels.


def flip_frames(frames_BTHWC: torch.Tensor, flip_B: torch.Tensor) -> torch.Tensor:
    return torch.where(flip_B[:, None, None, None, None].to(frames_BTHWC.device), frames_BTHWC.flip(3), frames_BTHWC)


def crop_frames(frames_BTHWC: torch.Tensor, top_B: torch.Tensor, left_B: torch.Tensor, size: tuple[int, int], p: int):
    rows, cols = size
    return torch.stack(
        [
            frames_BTHWC[b, :, t * p : (t + rows) * p, left * p : (left + cols) * p]
            for b, (t, left) in enumerate(zip(top_B.tolist(), left_B.tolist(), strict=True))
        ]
    )


def cutmix_frames(frames_BTHWC: torch.Tensor, partner_B: torch.Tensor, box_B4: torch.Tensor, p: int) -> torch.Tensor:
    out = frames_BTHWC.clone()
    for b, (top, left, rows, cols) in enumerate(box_B4.tolist()):
        window = (slice(None), slice(top * p, (top + rows) * p), slice(left * p, (left + cols) * p))
        out[b][window] = frames_BTHWC[int(partner_B[b])][window]
    return out


# The exact transforms ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compare", COMPARES)
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("kinds", [STRUCTURED, RANDOM], ids=["structured", "random"])
def test_flip_equals_rlt_on_flipped_frames(device: str, compare: str, threshold: float, kinds: list[str]) -> None:
    frames = make_clips(kinds, seed=1, t=16, h=20, w=24, p=4).to(device)
    packed = tokenize(frames, 4, compare, threshold)
    for flip_B in (torch.tensor([True, False, True, True]), torch.ones(4, dtype=torch.bool)):
        expected = tokenize(flip_frames(frames, flip_B), 4, compare, threshold)
        assert_same(flip_tokens(packed, flip_B), expected)
    assert_same(flip_tokens(packed), tokenize(frames.flip(3), 4, compare, threshold))
    # Flipping twice is the identity.
    assert_same(flip_tokens(flip_tokens(packed)), packed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compare", COMPARES)
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("kinds", [STRUCTURED, RANDOM], ids=["structured", "random"])
def test_crop_equals_rlt_on_cropped_frames(device: str, compare: str, threshold: float, kinds: list[str]) -> None:
    frames = make_clips(kinds, seed=2, t=16, h=20, w=24, p=4).to(device)
    packed = tokenize(frames, 4, compare, threshold)
    top_B, left_B = torch.tensor([0, 2, 1, 2]), torch.tensor([3, 0, 1, 3])
    expected = tokenize(crop_frames(frames, top_B, left_B, (3, 3), 4), 4, compare, threshold)
    assert_same(crop_tokens(packed, top_B=top_B, left_B=left_B, size=(3, 3)), expected)
    # A window of the whole grid changes nothing.
    zeros = torch.zeros(4, dtype=torch.int64)
    assert_same(crop_tokens(packed, top_B=zeros, left_B=zeros, size=(5, 6)), packed)


@pytest.mark.parametrize("compare", COMPARES)
def test_crop_of_sixteen_pixel_patches(compare: str) -> None:
    """The issue's recipe in small: tokens stored at 64 x 64, 48 x 48 windows at 16-pixel steps."""
    frames = make_clips(["moving_square", "repeats", "jitter"], seed=3, t=8, h=64, w=64, p=16)
    packed = tokenize(frames, 16, compare, 0.1)
    top_B, left_B = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 1])
    expected = tokenize(crop_frames(frames, top_B, left_B, (3, 3), 16), 16, compare, 0.1)
    assert_same(crop_tokens(packed, top_B=top_B, left_B=left_B, size=(3, 3)), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compare", COMPARES)
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("kinds", [STRUCTURED, RANDOM], ids=["structured", "random"])
def test_cutmix_equals_rlt_on_composited_frames(device: str, compare: str, threshold: float, kinds: list[str]) -> None:
    frames = make_clips(kinds, seed=4, t=16, h=20, w=24, p=4).to(device)
    packed = tokenize(frames, 4, compare, threshold)
    partner_B = torch.tensor([3, 2, 1, 0])
    box_B4 = torch.tensor([[1, 2, 3, 3], [0, 0, 5, 2], [0, 0, 0, 0], [4, 5, 1, 1]])
    mixed = cutmix_tokens(packed, partner_B=partner_B, box_B4=box_B4)
    assert_same(mixed, tokenize(cutmix_frames(frames, partner_B, box_B4, 4), 4, compare, threshold))
    # The clips keep their own labels and identity; `soft_targets` carries the mix.
    assert torch.equal(mixed.require_labels(), packed.require_labels()) and mixed.videos == packed.videos
    # A box of the whole grid is the partner itself.
    whole = cutmix_tokens(packed, partner_B=partner_B, box_B4=torch.tensor([[0, 0, 5, 6]] * 4))
    assert_same(whole, tokenize(frames[partner_B.to(device)], 4, compare, threshold))


@settings(max_examples=150, deadline=None)
@given(
    b=st.integers(1, 4),
    ts=st.sampled_from([1, 2]),
    g=st.integers(1, 4),
    p=st.sampled_from([2, 4, 8]),
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    crop=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    random_kinds=st.booleans(),
    threshold=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    compare=st.sampled_from(COMPARES),
)
def test_drawn_augmentation_equals_rlt_on_augmented_frames(
    b: int,
    ts: int,
    g: int,
    p: int,
    hw: tuple[int, int],
    crop: int,
    seed: int,
    random_kinds: bool,
    threshold: float,
    compare: str,
) -> None:
    """Crop, flip and CutMix drawn together for random geometries, against RLT on the frames the
    same draw makes."""
    h, w = hw
    crop = min(crop, h, w)
    rng = np.random.default_rng(seed)
    kinds = list(rng.choice(["repeats", "random"] if random_kinds else STRUCTURED, size=b))
    frames = make_clips(kinds, seed=seed, t=ts * g, h=h * p, w=w * p, p=p)
    packed = tokenize(frames, p, compare, threshold, ts=ts)
    config = replace(NO_ERASE, crop=crop * p, cutmix_prob=0.8)
    drawn = draw_augmentation(config, clips=b, grid=(h, w), patch_size=p, rng=(seed, 1))
    assert drawn.crop_size is not None and drawn.crop_top is not None and drawn.crop_left is not None
    out = crop_frames(frames, drawn.crop_top, drawn.crop_left, drawn.crop_size, p)
    out = cutmix_frames(flip_frames(out, drawn.flip), drawn.partner, drawn.cutmix_box, p)
    assert_same(drawn.apply(packed), tokenize(out, p, compare, threshold, ts=ts))


# The regulariser and the targets -------------------------------------------------------------------


def test_erasing_replaces_the_pixels_of_the_tokens_in_the_box_only() -> None:
    frames = make_clips(RANDOM, seed=5, t=8, h=20, w=24, p=4)
    packed = tokenize(frames, 4, "previous", 0.1)
    box_B4 = torch.tensor([[1, 1, 3, 4], [0, 0, 0, 0], [0, 0, 5, 6], [2, 3, 1, 1]])

    def erase(seed: int) -> PackedTokens:
        return erase_tokens(packed, box_B4=box_B4, generator=torch.Generator().manual_seed(seed))

    erased = erase(0)
    for name in ("positions", "lengths", "cu_seqlens", "keep", "labels"):
        assert torch.equal(getattr(erased, name), getattr(packed, name)), name
    clip_N = torch.repeat_interleave(torch.arange(4), packed.seqlens().long())
    i_N, j_N = packed.positions[:, 1], packed.positions[:, 2]
    top, left, rows, cols = box_B4[clip_N].unbind(1)
    inside_N = (i_N >= top) & (i_N < top + rows) & (j_N >= left) & (j_N < left + cols)
    changed_N = (erased.tokens != packed.tokens).any(1)
    assert torch.equal(changed_N, inside_N)
    assert torch.equal(erase(0).tokens, erased.tokens) and not torch.equal(erase(1).tokens, erased.tokens)
    # VideoMAE's "pixel" noise: ImageNet's mean and spread, in every channel.
    noise = erased.tokens[inside_N].view(-1, 3).double()
    np.testing.assert_allclose(noise.mean(0) / 255, [0.485, 0.456, 0.406], atol=0.02)
    nothing = erase_tokens(packed, box_B4=torch.zeros(4, 4, dtype=torch.int64), generator=torch.Generator())
    assert nothing is packed


def test_soft_targets_smooth_and_mix_by_area() -> None:
    labels = torch.tensor([0, 2, 1])
    plain = soft_targets(labels, 4)
    assert torch.equal(plain, torch.nn.functional.one_hot(labels, 4).float())
    smooth = soft_targets(labels, 4, smoothing=0.1)
    torch.testing.assert_close(smooth[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    mixed = soft_targets(labels, 4, partner_B=torch.tensor([2, 1, 0]), lam_B=torch.tensor([0.75, 1.0, 0.5]))
    torch.testing.assert_close(mixed[0], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(mixed[1], plain[1])
    torch.testing.assert_close(mixed.sum(1), torch.ones(3))


def test_augment_is_a_pure_function_of_the_seed_and_mixes_labels_by_box_area() -> None:
    frames = make_clips(STRUCTURED * 2, seed=6, t=8, h=24, w=24, p=4)
    packed = tokenize(frames, 4, "previous", 0.1)
    config = AugmentConfig(crop=16, cutmix=1.0, label_smoothing=0.0, erase_prob=0.5)
    out, targets = augment(packed, config, num_classes=3, rng=(0, 1, 7))
    again, targets_again = augment(packed, config, num_classes=3, rng=(0, 1, 7))
    assert_same(out, again)
    assert torch.equal(targets, targets_again)
    other, _ = augment(packed, config, num_classes=3, rng=(0, 2, 7))  # the next epoch draws anew
    assert not torch.equal(other.positions, out.positions) or not torch.equal(other.tokens, out.tokens)
    assert out.keep.shape[2:] == (4, 4) and out.positions[:, 1:].max() < 4
    drawn = draw_augmentation(config, clips=8, grid=(6, 6), patch_size=4, rng=(0, 1, 7))
    assert drawn.crop_top is not None and drawn.crop_left is not None and drawn.crop_size is not None
    assert drawn.flip.any() and (drawn.cutmix_box[:, 2:] > 0).all(1).any() and (drawn.erase_box[:, 2:] > 0).any()
    # `apply` copies the tokens once; it is the four functions one after the other.
    steps = crop_tokens(packed, top_B=drawn.crop_top, left_B=drawn.crop_left, size=drawn.crop_size)
    steps = cutmix_tokens(flip_tokens(steps, drawn.flip), partner_B=drawn.partner, box_B4=drawn.cutmix_box)
    steps = erase_tokens(steps, box_B4=drawn.erase_box, generator=torch.Generator().manual_seed(drawn.erase_seed))
    assert_same(steps, out)
    lam = 1 - drawn.cutmix_box[:, 2:].prod(1) / 16
    for b in range(8):
        own, partner = int(packed.require_labels()[b]), int(packed.require_labels()[7 - b])
        expected = torch.zeros(3)
        expected[own] += lam[b]
        expected[partner] += 1 - lam[b]
        torch.testing.assert_close(targets[b], expected.float())
    assert "Augmentation(clips=8" in repr(drawn) and "tensor(" not in repr(drawn)


def test_augment_off_is_the_identity() -> None:
    packed = tokenize(make_clips(STRUCTURED, seed=7, t=8, h=16, w=16, p=4), 4, "previous", 0.1)
    off = AugmentConfig(flip=False, cutmix=0.0, label_smoothing=0.0, erase_prob=0.0)
    out, targets = augment(packed, off, num_classes=3, rng=0)
    assert out is packed
    assert torch.equal(targets, torch.nn.functional.one_hot(packed.require_labels(), 3).float())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop": 0}, "crop must be None or a side"),
        ({"cutmix": -1.0}, "cutmix must be a finite alpha"),
        ({"cutmix_prob": 1.5}, "cutmix_prob must be a probability"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"erase_area": (0.5, 0.1)}, "erase_area must be"),
        ({"erase_aspect": (0.0, 1.0)}, "erase_aspect must be"),
    ],
)
def test_bad_config_says_what_was_expected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**options)  # type: ignore[arg-type]


def test_bad_arguments_say_what_was_expected() -> None:
    packed = tokenize(make_clips(STRUCTURED, seed=8, t=4, h=16, w=16, p=4), 4, "previous", 0.1)
    zeros = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="does not fit the grid of 4 x 4"):
        crop_tokens(packed, top_B=zeros, left_B=zeros, size=(5, 2))
    with pytest.raises(ValueError, match=r"crop corners must lie in \[0, 1\]"):
        crop_tokens(packed, top_B=zeros + 2, left_B=zeros, size=(3, 3))
    with pytest.raises(ValueError, match=r"flip_B must be bool \[4\]"):
        flip_tokens(packed, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="partner_B must index"):
        cutmix_tokens(packed, partner_B=zeros + 4, box_B4=torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="must lie inside the 4 x 4 patch grid"):
        cutmix_tokens(packed, partner_B=zeros, box_B4=torch.tensor([[3, 0, 2, 1]] * 4))
    with pytest.raises(ValueError, match="multiple of patch_size=4"):
        draw_augmentation(AugmentConfig(crop=10), clips=4, grid=(4, 4), patch_size=4, rng=0)
    with pytest.raises(ValueError, match="has no labels"):
        augment(replace(packed, labels=None), AugmentConfig(), num_classes=3, rng=0)


# One clip per video --------------------------------------------------------------------------------


def test_one_clip_per_video_picks_each_video_once_and_anew_each_epoch() -> None:
    videos = ["a", "b", "a", "c", "b", "a", "d", "c", "a"]
    picks = [one_clip_per_video(videos, seed=3, epoch=e) for e in range(40)]
    for rows in picks:
        assert rows.dtype == np.int64 and list(rows) == sorted(rows)
        assert sorted(videos[r] for r in rows) == ["a", "b", "c", "d"]
    assert np.array_equal(one_clip_per_video(videos, seed=3, epoch=5), picks[5])
    # Over epochs, every stored clip of a video is drawn.
    assert {int(r) for rows in picks for r in rows} == set(range(len(videos)))
    assert not np.array_equal(one_clip_per_video(videos, seed=4, epoch=5), picks[5]) or not np.array_equal(
        one_clip_per_video(videos, seed=4, epoch=6), picks[6]
    )
    assert len(one_clip_per_video([], seed=0, epoch=0)) == 0


# The online path: pixels before RLT ----------------------------------------------------------------


def test_frame_augment_crops_one_box_per_clip_and_resizes() -> None:
    rng = np.random.default_rng(9)
    still = np.broadcast_to(rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8), (4, 48, 64, 3))
    frames = torch.from_numpy(np.stack([still, rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)]))
    out = augment_frames(frames, FrameAugment(size=32), rng=(0, 1))
    assert out.shape == (2, 4, 32, 32, 3) and out.dtype == torch.uint8
    # One box for all of a clip's frames: a still clip stays still.
    assert (out[0] == out[0, :1]).all()
    assert torch.equal(augment_frames(frames, FrameAugment(size=32), rng=(0, 1)), out)
    assert not torch.equal(augment_frames(frames, FrameAugment(size=32), rng=(0, 2)), out)


def test_frame_augment_of_the_whole_frame_is_the_frame_or_its_mirror() -> None:
    frames = torch.from_numpy(np.random.default_rng(10).integers(0, 256, (6, 2, 16, 16, 3), dtype=np.uint8))
    whole = FrameAugment(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(augment_frames(frames, replace(whole, flip=False), rng=0), frames)
    out = augment_frames(frames, whole, rng=0)
    flipped = [torch.equal(o, f.flip(2)) for o, f in zip(out, frames, strict=True)]
    assert all(f or torch.equal(o, c) for f, o, c in zip(flipped, out, frames, strict=True))
    assert 0 < sum(flipped) < 6
    with pytest.raises(ValueError, match="scale must be"):
        FrameAugment(scale=(0.5, 2.0))


def test_spatial_views_spread_along_the_longer_side_and_equal_rlt_on_those_crops() -> None:
    from rlt.train._augment import view_crop_tokens

    frames = torch.randint(0, 256, (2, 4, 64, 96, 3), dtype=torch.uint8)
    frames[:, 2:] = frames[:, :2]  # runs to drop
    packed = run_length_tokenize(frames, tubelet_size=2, patch_size=16)
    for view, left in enumerate((0, 16, 32)):  # 4 x 6 patches: a 4 x 4 window at columns 0, 1, 2
        got = view_crop_tokens(packed, 64, view=view, views=3)
        want = run_length_tokenize(frames[:, :, :, left : left + 64].contiguous(), tubelet_size=2, patch_size=16)
        for name in ("tokens", "positions", "lengths", "cu_seqlens"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (view, name)
    tall = run_length_tokenize(frames.transpose(2, 3).contiguous(), tubelet_size=2, patch_size=16)
    assert view_crop_tokens(tall, 64, view=2, views=3).positions[:, 1].max() <= 3  # rows of its own window
    assert view_crop_tokens(packed, 64, view=0, views=1).keep.shape[-2:] == (4, 4)  # the centre
    # Raw videos get the same views in pixels, before RLT (rlt.pipeline.spatial_views).
    from rlt.pipeline._transforms import spatial_views

    pixels = run_length_tokenize(spatial_views(frames, 3), tubelet_size=2, patch_size=16)
    for view in range(3):
        clips = torch.tensor([2 * clip + view for clip in range(2)])  # each clip's views together
        want = view_crop_tokens(packed, 64, view=view, views=3)
        got_keep = pixels.keep[clips]
        assert torch.equal(got_keep, want.keep), view
