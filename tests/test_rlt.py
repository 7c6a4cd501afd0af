"""`run_length_tokenize` against the naive loop reference, and its invariants."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlt import PackedTokens, run_length_tokenize
from tests.clips import KINDS, batch, slow_ramp
from tests.conftest import DEVICES
from tests.rlt_reference import naive_rlt, pack_reference

REPO = Path(__file__).resolve().parents[1]


def assert_matches(packed: PackedTokens, expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(packed.keep.cpu().numpy(), expected["keep"])
    np.testing.assert_array_equal(packed.positions.cpu().numpy(), expected["positions"])
    np.testing.assert_array_equal(packed.lengths.cpu().numpy(), expected["lengths"])
    np.testing.assert_array_equal(packed.cu_seqlens.cpu().numpy(), expected["cu_seqlens"])
    np.testing.assert_array_equal(packed.tokens.cpu().numpy(), expected["tokens"])


STRUCTURED = ["static", "moving_square", "noise_patches", "slow_ramp", "jitter"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compare", ["previous", "run_start"])
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.1, 0.3])
def test_structured_clips_match_reference(device: str, compare: str, threshold: float) -> None:
    clips = batch(STRUCTURED, seed=1, t=8, h=16, w=24)
    packed = run_length_tokenize(
        torch.from_numpy(clips).to(device), tubelet_size=2, patch_size=8, threshold=threshold, compare=compare
    )
    assert packed.device.type == device
    assert_matches(packed, naive_rlt(clips, tubelet_size=2, patch_size=8, threshold=threshold, compare=compare))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b", [1, 2, 5, 8])
@pytest.mark.parametrize("compare", ["previous", "run_start"])
def test_random_batches_match_reference(device: str, b: int, compare: str) -> None:
    rng = np.random.default_rng(b)
    kinds = list(rng.choice(list(KINDS), size=b))
    ts, p = int(rng.choice([1, 2, 4])), int(rng.choice([4, 8]))
    clips = batch(kinds, seed=b, t=ts * 4, h=p * 2, w=p * 3)
    threshold = float(rng.uniform(0.02, 0.4))
    packed = run_length_tokenize(
        torch.from_numpy(clips).to(device), tubelet_size=ts, patch_size=p, threshold=threshold, compare=compare
    )
    assert_matches(packed, naive_rlt(clips, tubelet_size=ts, patch_size=p, threshold=threshold, compare=compare))


def test_paper_geometry_matches_reference() -> None:
    """The default 16-pixel patches (the word-sized fast paths) on a small 32x48 frame."""
    clips = batch(["moving_square", "jitter", "slow_ramp"], seed=3, t=16, h=32, w=48)
    packed = run_length_tokenize(torch.from_numpy(clips))
    assert_matches(packed, naive_rlt(clips, tubelet_size=2, patch_size=16, threshold=0.1))


@pytest.mark.parametrize("threshold", [0.0, 4.0, 12.0])
def test_pixel_units_match_reference(threshold: float) -> None:
    clips = batch(["jitter", "moving_square", "noise_patches"], seed=4, t=8, h=16, w=16, c=1)
    packed = run_length_tokenize(
        torch.from_numpy(clips), tubelet_size=2, patch_size=4, threshold=threshold, threshold_units="pixel"
    )
    assert_matches(packed, naive_rlt(clips, tubelet_size=2, patch_size=4, threshold=threshold, units="pixel"))


def test_run_start_catches_slow_drift() -> None:
    # The frame brightens by 1 level a frame: "previous" compares frames 3 apart (3 levels, score
    # ~0.05) and drops everything after tubelet 0, while "run_start" sees the drift add up.
    clips = torch.from_numpy(slow_ramp(np.random.default_rng(5), 16, 16, 16, step=1))[None]
    previous = run_length_tokenize(clips, patch_size=8, threshold=0.1, compare="previous")
    run_start = run_length_tokenize(clips, patch_size=8, threshold=0.1, compare="run_start")
    assert previous.keep[:, 1:].sum() == 0
    assert run_start.keep[:, 1:].sum() > 0
    assert run_start.keep.sum() < run_start.keep.numel()


def test_unbatched_input_is_one_clip() -> None:
    clip = torch.from_numpy(batch(["moving_square"], seed=6, t=4, h=16, w=16))[0]
    one = run_length_tokenize(clip, patch_size=8)
    assert one.num_clips == 1
    assert torch.equal(one.tokens, run_length_tokenize(clip[None], patch_size=8).tokens)


def test_strided_and_offset_inputs() -> None:
    """Slices and permuted views give the same tokens as their contiguous copies."""
    clips = torch.from_numpy(batch(["jitter", "moving_square", "random"], seed=7, t=4, h=16, w=16))
    for view in (clips[1:], clips[:, :, :, 1:9], clips.transpose(2, 3)):
        a = run_length_tokenize(view, patch_size=8)
        b = run_length_tokenize(view.contiguous(), patch_size=8)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.keep, b.keep)


def test_drop_policy_none_keeps_everything() -> None:
    clips = torch.from_numpy(batch(["static", "random"], seed=8, t=8, h=16, w=16))
    packed = run_length_tokenize(clips, patch_size=8, drop_policy="none")
    assert packed.keep.all() and packed.num_tokens == packed.dense_tokens
    assert (packed.lengths == 1).all()
    assert torch.equal(packed.unpack(fill="zeros"), clips)


def test_drop_policy_random_drops_as_many_seeded() -> None:
    clips = torch.from_numpy(batch(["static", "moving_square", "jitter"], seed=9, t=16, h=32, w=32))
    rlt = run_length_tokenize(clips, patch_size=8)
    rand = run_length_tokenize(clips, patch_size=8, drop_policy="random", seed=1)
    assert torch.equal(rand.seqlens(), rlt.seqlens())
    assert rand.keep[:, 0].all()
    assert not torch.equal(rand.keep, rlt.keep)
    assert torch.equal(rand.keep, run_length_tokenize(clips, patch_size=8, drop_policy="random", seed=1).keep)
    assert not torch.equal(rand.keep, run_length_tokenize(clips, patch_size=8, drop_policy="random", seed=2).keep)
    # Its tokens and lengths follow the same packing rules as RLT's.
    expected = pack_reference(clips.numpy(), rand.keep.numpy(), 2, 8)
    assert_matches(rand, expected)


def test_clip_slices_one_clip() -> None:
    clips = torch.from_numpy(batch(["moving_square", "jitter", "static"], seed=10, t=8, h=16, w=16))
    packed = run_length_tokenize(clips, patch_size=8)
    for index in range(3):
        alone = run_length_tokenize(clips[index], patch_size=8)
        one = packed.clip(index)
        assert torch.equal(one.tokens, alone.tokens) and torch.equal(one.lengths, alone.lengths)
    with pytest.raises(IndexError):
        packed.clip(3)


def test_repr_shows_shapes_not_data() -> None:
    packed = run_length_tokenize(torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8), patch_size=8)
    text = repr(packed)
    assert "clips=2" in text and "[8, 384]" in text and "of 16 dense" in text
    assert "tensor(" not in text


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        (torch.zeros(1, 5, 16, 16, 3, dtype=torch.uint8), {}, "multiple of tubelet_size=2"),
        (torch.zeros(1, 4, 20, 16, 3, dtype=torch.uint8), {}, "multiples of patch_size=16"),
        (torch.zeros(1, 4, 16, 16, 3), {}, "must be uint8"),
        (torch.zeros(16, 16, 3, dtype=torch.uint8), {}, r"\[B, T, H, W, C\]"),
        (np.zeros((1, 2, 16, 16, 3), dtype=np.uint8), {}, "torch.Tensor"),
        (torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8), {"compare": "next"}, "'previous', 'run_start'"),
        (torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8), {"drop_policy": "all"}, "'rlt', 'none', 'random'"),
        (torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8), {"threshold": -1.0}, "finite number >= 0"),
        (torch.zeros(1, 2, 16, 16, 1, dtype=torch.uint8), {}, "threshold_units='pixel'"),
        (torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8), {"tubelet_size": 0}, "tubelet_size must be"),
    ],
)
def test_bad_input_says_what_was_expected(frames: object, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_length_tokenize(frames, **kwargs)  # type: ignore[arg-type]


# Properties ---------------------------------------------------------------------------------------

geometry = st.tuples(
    st.integers(1, 3),  # B
    st.sampled_from([1, 2, 4]),  # tubelet size
    st.integers(1, 5),  # tubelets per clip
    st.sampled_from([2, 4, 8, 16]),  # patch size
    st.integers(1, 3),  # patch rows
    st.integers(1, 3),  # patch columns
)


def _clips(seed: int, b: int, t: int, h: int, w: int, kind: str) -> torch.Tensor:
    return torch.from_numpy(batch([kind] * b, seed=seed, t=t, h=h, w=w))


@settings(max_examples=60, deadline=None)
@given(geometry=geometry, seed=st.integers(0, 2**16), compare=st.sampled_from(["previous", "run_start"]))
def test_static_clip_keeps_only_tubelet_zero(geometry: tuple[int, ...], seed: int, compare: str) -> None:
    b, ts, g, p, h, w = geometry
    packed = run_length_tokenize(
        _clips(seed, b, ts * g, h * p, w * p, "static"), tubelet_size=ts, patch_size=p, threshold=0.0, compare=compare
    )
    assert packed.keep[:, 0].all() and not packed.keep[:, 1:].any()
    assert (packed.lengths == g).all()


@settings(max_examples=60, deadline=None)
@given(
    geometry=geometry,
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(sorted(KINDS)),
    threshold=st.floats(0.0, 1.0),
    compare=st.sampled_from(["previous", "run_start"]),
)
def test_lengths_cover_every_tubelet_and_unpack_round_trips(
    geometry: tuple[int, ...], seed: int, kind: str, threshold: float, compare: str
) -> None:
    b, ts, g, p, h, w = geometry
    clips = _clips(seed, b, ts * g, h * p, w * p, kind)
    packed = run_length_tokenize(clips, tubelet_size=ts, patch_size=p, threshold=threshold, compare=compare)

    # Per clip and patch, the run lengths add up to the clip's tubelet count.
    per_patch = torch.zeros(b, h, w, dtype=torch.int64)
    clip_N = torch.repeat_interleave(torch.arange(b), packed.seqlens().long())
    per_patch.index_put_((clip_N, packed.positions[:, 1], packed.positions[:, 2]), packed.lengths, accumulate=True)
    assert (per_patch == g).all()

    # Laid back on the grid, the kept tubelets are the clip's pixels, and dropped ones are zero.
    keep_pixels = packed.keep.repeat_interleave(ts, 1).repeat_interleave(p, 2).repeat_interleave(p, 3)
    restored = packed.unpack(fill="zeros")
    assert torch.equal(restored[keep_pixels], clips[keep_pixels])
    assert not restored[~keep_pixels].any()
    # Repeating each token over its run rebuilds a static clip exactly.
    if kind == "static":
        assert torch.equal(packed.unpack(fill="repeat"), clips)


@pytest.mark.needs_cuda
@settings(max_examples=30, deadline=None)
@given(
    geometry=geometry,
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(sorted(KINDS)),
    threshold=st.floats(0.0, 0.5),
    compare=st.sampled_from(["previous", "run_start"]),
)
def test_cuda_equals_cpu(geometry: tuple[int, ...], seed: int, kind: str, threshold: float, compare: str) -> None:
    b, ts, g, p, h, w = geometry
    clips = _clips(seed, b, ts * g, h * p, w * p, kind)
    options = {"tubelet_size": ts, "patch_size": p, "threshold": threshold, "compare": compare}
    cpu = run_length_tokenize(clips, **options)  # type: ignore[arg-type]
    cuda = run_length_tokenize(clips.cuda(), **options)  # type: ignore[arg-type]
    assert cuda.device.type == "cuda"
    for name in ("tokens", "positions", "lengths", "cu_seqlens", "keep"):
        assert torch.equal(getattr(cuda, name).cpu(), getattr(cpu, name)), name


@settings(max_examples=40, deadline=None)
@given(geometry=geometry, seed=st.integers(0, 2**16), kind=st.sampled_from(sorted(KINDS)), threshold=st.floats(0, 0.5))
def test_all_tubelets_at_once_equals_one_at_a_time(
    geometry: tuple[int, ...], seed: int, kind: str, threshold: float
) -> None:
    """The GPU's one pass over every tubelet pair, run on the CPU, against the CPU's loop."""
    from rlt.pipeline._rlt import _channel_weights, _keep_mask

    b, ts, g, p, h, w = geometry
    clips = _clips(seed, b, ts * g, h * p, w * p, kind)
    weights = _channel_weights(clips, p, "normalized")
    loop = _keep_mask(clips, ts, p, weights, threshold, "previous", at_once=False)
    assert torch.equal(_keep_mask(clips, ts, p, weights, threshold, "previous", at_once=True), loop)


TRITON_CHECK = """
import torch
from rlt.pipeline import _rlt, _rlt_triton
from tests.clips import KINDS, batch

cases = [(2, 2, 4, 8, 2, 3, "normalized", 3), (3, 1, 5, 4, 2, 2, "normalized", 3), (1, 4, 3, 8, 1, 2, "pixel", 1),
         (2, 2, 4, 16, 2, 2, "normalized", 3), (2, 3, 3, 4, 3, 1, "pixel", 4), (1, 1, 2, 2, 1, 1, "normalized", 3)]
for n, (b, ts, g, p, h, w, units, c) in enumerate(cases):
    for kind in sorted(KINDS):
        clips = torch.from_numpy(batch([kind] * b, seed=n, t=ts * g, h=h * p, w=w * p))
        clips = (clips[..., :c] if c <= 3 else torch.cat([clips, clips[..., :1]], -1)).contiguous()
        weights = _rlt._channel_weights(clips, p, units)
        for threshold in (0.0, 5e-324, 0.05, 0.1, 0.3, 2.0):  # 5e-324: the float64 whose bits are 1
            keep = _rlt._keep_mask(clips, ts, p, weights, threshold, "previous", at_once=False)
            assert torch.equal(_rlt_triton.keep_mask(clips, ts, p, weights, threshold), keep), (n, kind, threshold)
            packed = _rlt_triton.pack(clips, keep, ts, p)
            expected = _rlt._pack(clips, keep, ts, p)
            for name, value in zip(("tokens", "positions", "lengths", "cu_seqlens"), packed):
                assert torch.equal(value, getattr(expected, name)), (n, kind, threshold, name)
        # Any mask packs alike (the random drop policy's; here some clips keep nothing at all).
        keep = torch.rand(keep.shape, generator=torch.Generator().manual_seed(n)) < 0.4
        packed = _rlt_triton.pack(clips, keep, ts, p)
        expected = _rlt._pack(clips, keep, ts, p)
        for name, value in zip(("tokens", "positions", "lengths", "cu_seqlens"), packed):
            assert torch.equal(value, getattr(expected, name)), (n, kind, name)
print("triton kernels agree")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_equal_the_cpu_path_in_the_interpreter() -> None:
    """The GPU's Triton kernels, run by Triton's interpreter on CPU tensors, against the CPU path
    (on a GPU, test_cuda_equals_cpu compares them compiled)."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "triton kernels agree" in done.stdout, done.stderr[-3000:]
