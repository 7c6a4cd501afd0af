"""The RLT stage: find repeated tubelets, drop them, and tell each kept token its run length.

The rule is the one in the RLT authors' code (`static_token_utils.batched_find_idxs_to_keep`):
tubelet 0 is always kept; tubelet k >= 1 at patch (i, j) is dropped when

    mean over the patch's pixels and channels of |x[k*ts + ts - 1] - x[(k-1)*ts]| <= threshold

with x the frame normalised by ImageNet mean/std, ``(x/255 - mean_c) / std_c``. The mean cancels in
the difference, so the score is ``sum_c S_c / (255 * std_c * p*p * C)`` with ``S_c`` the exact
integer sum of |a - b| over the patch in channel c. We compute S in integers straight from the
uint8 frames and scale once per patch, instead of normalising every pixel to float32 as the
authors do (that copy is most of their cost).

Shape legend:
    B  clips        T  frames per clip     H, W  frame size     C  channels
    G  tubelets per clip (T / ts)
    h, w  patch grid (H / p, W / p)        N  kept tokens over all clips
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from rlt._checks import check_choice
from rlt.pipeline._packed import PackedTokens

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Compare = Literal["previous", "run_start"]
DropPolicy = Literal["rlt", "none", "random"]
ThresholdUnits = Literal["normalized", "pixel"]

_COMPARE = ("previous", "run_start")
_DROP_POLICY = ("rlt", "none", "random")
_UNITS = ("normalized", "pixel")


def run_length_tokenize(
    frames: torch.Tensor,
    *,
    tubelet_size: int = 2,
    patch_size: int = 16,
    threshold: float = 0.1,
    threshold_units: ThresholdUnits = "normalized",
    compare: Compare = "previous",
    drop_policy: DropPolicy = "rlt",
    seed: int = 0,
) -> PackedTokens:
    """Tokenizes clips into tubelets and drops the ones that repeat their predecessor.

    The work stays on the device of ``frames``: CUDA frames are tokenized on the GPU.

    Args:
        frames: uint8 ``[B, T, H, W, C]`` or ``[T, H, W, C]`` (one clip), RGB.
        tubelet_size: frames per token (ts); T must be a multiple of it.
        patch_size: pixels per patch side (p); H and W must be multiples of it.
        threshold: a tubelet is dropped when its score is ``<=`` this. In ``"normalized"`` units
            (the paper's, default 0.1) the score is the mean absolute difference of
            ImageNet-normalised values; in ``"pixel"`` units it is the mean absolute difference of
            raw 0-255 values over pixels and channels. A grey change of ``d`` pixel levels scores
            ``d / 255 * mean_c(1 / std_c)`` = ``d / 57.6`` normalised, so the paper's 0.1 is about
            5.8 pixel levels.
        threshold_units: ``"normalized"`` or ``"pixel"``, see ``threshold``.
        compare: ``"previous"`` compares tubelet k's last frame with tubelet k-1's first frame (the
            paper). ``"run_start"`` compares it with the first frame of the kept tubelet that
            starts the current run at that patch, so slow drift cannot stay below the threshold
            for ever.
        drop_policy: ``"rlt"`` drops as above; ``"none"`` keeps every token; ``"random"`` drops,
            in each clip, as many tokens as ``"rlt"`` would, chosen at random among tubelets
            1..G-1 (the paper's random-drop baseline), seeded by ``seed``.
        seed: seed of the ``"random"`` policy; the draw depends on the device's generator.

    Returns:
        The kept tokens, clip by clip, each clip in (t, h, w) order.

    Raises:
        ValueError: a wrong type, dtype or rank, sizes that do not divide, or an unknown option.
    """
    frames_BTHWC = _check_frames(frames, tubelet_size, patch_size)
    check_choice("compare", compare, _COMPARE)
    check_choice("drop_policy", drop_policy, _DROP_POLICY)
    check_choice("threshold_units", threshold_units, _UNITS)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if threshold_units == "normalized" and frames_BTHWC.shape[-1] != 3:
        raise ValueError(
            f"threshold_units='normalized' uses ImageNet's 3-channel statistics, but frames have "
            f"{frames_BTHWC.shape[-1]} channels; use threshold_units='pixel'"
        )

    if drop_policy == "none":
        b, t, height, width, _ = frames_BTHWC.shape
        keep_BGhw = torch.ones(
            (b, t // tubelet_size, height // patch_size, width // patch_size),
            dtype=torch.bool,
            device=frames_BTHWC.device,
        )
    else:
        weight_C = _channel_weights(frames_BTHWC, patch_size, threshold_units)
        keep_BGhw = _keep_mask(frames_BTHWC, tubelet_size, patch_size, weight_C, threshold, compare)
        if drop_policy == "random":
            keep_BGhw = _random_like(keep_BGhw, seed)
    return _pack(frames_BTHWC, keep_BGhw, tubelet_size, patch_size)


def _check_frames(frames: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (0-255 RGB), got {frames.dtype}")
    if frames.dim() == 4:
        frames = frames.unsqueeze(0)
    if frames.dim() != 5:
        raise ValueError(f"frames must be [B, T, H, W, C] or [T, H, W, C], got shape {list(frames.shape)}")
    if not (isinstance(tubelet_size, int) and tubelet_size >= 1):
        raise ValueError(f"tubelet_size must be an int >= 1, got {tubelet_size!r}")
    if not (isinstance(patch_size, int) and patch_size >= 1):
        raise ValueError(f"patch_size must be an int >= 1, got {patch_size!r}")
    _, t, height, width, c = frames.shape
    if t == 0 or t % tubelet_size:
        raise ValueError(f"T={t} frames must be a positive multiple of tubelet_size={tubelet_size}")
    if height == 0 or width == 0 or height % patch_size or width % patch_size:
        raise ValueError(f"H x W = {height} x {width} must be positive multiples of patch_size={patch_size}")
    if c == 0:
        raise ValueError("frames have 0 channels")
    # The views below need plain strides; decoders hand over contiguous frames, so this is free.
    return frames.contiguous()


def _channel_weights(frames_BTHWC: torch.Tensor, patch_size: int, units: ThresholdUnits) -> tuple[float, ...]:
    """Per-channel factors turning an integer patch sum of |a - b| into the mean score.

    Python floats, not a device tensor: copying one to the GPU would wait for it, and the stage
    must not.
    """
    c = frames_BTHWC.shape[-1]
    pixels = patch_size * patch_size * c
    if units == "normalized":
        return tuple(1.0 / (255.0 * std * pixels) for std in IMAGENET_STD)
    return (1.0 / pixels,) * c


def _absdiff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # max - min stays in uint8 and never wraps; it beats widening both sides to int16.
    return torch.maximum(a, b) - torch.minimum(a, b)


def _patch_scores(diff_BHWC: torch.Tensor, patch_size: int, weight_C: tuple[float, ...]) -> torch.Tensor:
    """Mean score per patch, float64 ``[B, h, w]``, from the uint8 absolute differences."""
    sums_BhwC = _patch_sums(diff_BHWC, patch_size).to(torch.float64)
    scores_Bhw = sums_BhwC[..., 0] * weight_C[0]
    for channel in range(1, len(weight_C)):
        scores_Bhw += sums_BhwC[..., channel] * weight_C[channel]
    return scores_Bhw


def _patch_sums(diff_BHWC: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Exact per-channel sums over each patch, int32 ``[B, h, w, C]``."""
    b, height, width, c = diff_BHWC.shape
    p, h, w = patch_size, height // patch_size, width // patch_size
    if diff_BHWC.is_cuda:
        # One reduction kernel: the CPU's tricks below would only add launches on a GPU.
        return diff_BHWC.view(b, h, p, w, p, c).sum((2, 4), dtype=torch.int32)
    # Summing the p rows of a patch first adds contiguous runs of W*C bytes, which vectorises; the
    # p columns and C channels of each patch are then a small reduction.
    rows_RpX = diff_BHWC.view(b * h, p, width * c)
    if p * 255 < 2**15 and rows_RpX.shape[-1] % 8 == 0:
        row_sums_RX = _sum_rows_swar(rows_RpX)
    else:
        row_sums_RX = rows_RpX.sum(1, dtype=torch.int32)
    return row_sums_RX.view(b, h, w, p, c).sum(3, dtype=torch.int32)


_LANES = 0x00FF00FF00FF00FF


def _sum_rows_swar(rows_RpX: torch.Tensor) -> torch.Tensor:
    """``rows_RpX.sum(1)`` for uint8 with p * 255 < 2**15, as int16 ``[R, X]``.

    Each int64 word carries 8 bytes; masking the even and the odd bytes into 16-bit lanes lets one
    int64 addition add four bytes at once, with no lane overflowing. This is ~4x faster on the CPU
    than widening every byte to int32 before the sum.
    """
    words_RpW = rows_RpX.view(torch.int64)
    even_RW = (words_RpW & _LANES).sum(1)
    odd_RW = ((words_RpW >> 8) & _LANES).sum(1)
    # Little-endian: 16-bit lane i of `even` holds byte 2i of the word, of `odd` byte 2i + 1.
    return torch.stack([even_RW.view(torch.int16), odd_RW.view(torch.int16)], dim=-1).flatten(1)


def _keep_mask(
    frames_BTHWC: torch.Tensor,
    ts: int,
    p: int,
    weight_C: tuple[float, ...],
    threshold: float,
    compare: Compare,
    at_once: bool | None = None,
) -> torch.Tensor:
    b, t, height, width, c = frames_BTHWC.shape
    g, h, w = t // ts, height // p, width // p
    at_once = (frames_BTHWC.is_cuda if at_once is None else at_once) and compare == "previous" and g > 1
    if at_once:
        kernels = _kernels(frames_BTHWC)
        on_gpu = kernels.keep_mask(frames_BTHWC, ts, p, weight_C, threshold) if kernels is not None else None
        if on_gpu is not None:
            return on_gpu
    keep_BGhw = torch.ones((b, g, h, w), dtype=torch.bool, device=frames_BTHWC.device)
    if at_once:
        # All tubelets at once, on a GPU: a few kernels over the whole batch instead of G - 1 steps
        # of a dozen small launches each (there, the host's launches bound the loop below).
        last_BGHWC = frames_BTHWC[:, 2 * ts - 1 :: ts]  # tubelet k's last frame, k = 1 .. G-1
        ref_BGHWC = frames_BTHWC[:, : (g - 1) * ts : ts]  # tubelet k-1's first frame
        diff_XHWC = _absdiff(last_BGHWC, ref_BGHWC).view(b * (g - 1), height, width, c)
        keep_BGhw[:, 1:] = (_patch_scores(diff_XHWC, p, weight_C) > threshold).view(b, g - 1, h, w)
        return keep_BGhw
    # The frame each patch is compared against. For "run_start" it is the first frame of the kept
    # tubelet that started the patch's current run; tubelet 0 starts every run.
    ref_BHWC = frames_BTHWC[:, 0]
    # One tubelet at a time: each step's bytes stay in cache, which is ~2x faster on the CPU than
    # one pass over the whole clip, and "run_start" is sequential over tubelets by nature.
    for k in range(1, g):
        if compare == "previous":
            ref_BHWC = frames_BTHWC[:, (k - 1) * ts]
        last_BHWC = frames_BTHWC[:, k * ts + ts - 1]
        keep_Bhw = _patch_scores(_absdiff(last_BHWC, ref_BHWC), p, weight_C) > threshold
        keep_BGhw[:, k] = keep_Bhw
        if compare == "run_start":
            first_BhpwpC = frames_BTHWC[:, k * ts].view(b, h, p, w, p, c)
            ref_BhpwpC = ref_BHWC.reshape(b, h, p, w, p, c)
            ref_BHWC = torch.where(keep_Bhw[:, :, None, :, None, None], first_BhpwpC, ref_BhpwpC).view(
                b, height, width, c
            )
    return keep_BGhw


def _kernels(frames: torch.Tensor) -> Any:
    """The Triton kernels (`_rlt_triton`) for CUDA frames where they can run, else None. Imported
    here, on first use, so the CPU path never loads Triton."""
    if not frames.is_cuda:
        return None
    from rlt.pipeline import _rlt_triton

    return _rlt_triton if _rlt_triton.ENABLED else None


def _random_like(keep_BGhw: torch.Tensor, seed: int) -> torch.Tensor:
    """A mask dropping as many tubelets per clip as ``keep_BGhw`` does, chosen at random."""
    b = keep_BGhw.shape[0]
    drop_B = (~keep_BGhw).flatten(1).sum(1)
    generator = torch.Generator(device=keep_BGhw.device).manual_seed(seed)
    # Tubelet 0 is kept as in RLT, so every patch's first run starts at the clip's start.
    candidates = keep_BGhw[:, 1:].flatten(1).shape[1]
    noise_BM = torch.rand((b, candidates), generator=generator, device=keep_BGhw.device)
    rank_BM = noise_BM.argsort(1).argsort(1)
    keep = torch.ones_like(keep_BGhw)
    keep[:, 1:] = (rank_BM >= drop_B[:, None]).view_as(keep_BGhw[:, 1:])
    return keep


def run_lengths(keep_BGhw: torch.Tensor) -> torch.Tensor:
    """Each tubelet's distance to the next kept tubelet at its patch (or the clip's end).

    Returns int64 ``[B, G, h, w]``; read it where ``keep_BGhw`` is True.
    """
    b, g, h, w = keep_BGhw.shape
    t_G = torch.arange(g, device=keep_BGhw.device).view(1, g, 1, 1)
    kept_at_BGhw = torch.where(keep_BGhw, t_G, g)
    # next_kept[t] = min over t' > t of kept_at[t']: a reversed running minimum, shifted by one.
    after_BGhw = torch.cat([kept_at_BGhw[:, 1:], torch.full_like(kept_at_BGhw[:, :1], g)], dim=1)
    next_kept_BGhw = after_BGhw.flip(1).cummin(1).values.flip(1)
    return next_kept_BGhw - t_G


def _as_words(runs_RX: torch.Tensor) -> torch.Tensor:
    """uint8 rows ``runs_RX`` viewed as the widest integers that tile a row, for faster copies."""
    for dtype in (torch.int64, torch.int32, torch.int16):
        size = dtype.itemsize
        if runs_RX.shape[-1] % size == 0 and runs_RX.storage_offset() % size == 0:
            return runs_RX.view(dtype)
    return runs_RX


def _pack(frames_BTHWC: torch.Tensor, keep_BGhw: torch.Tensor, ts: int, p: int) -> PackedTokens:
    kernels = _kernels(frames_BTHWC)
    packed = kernels.pack(frames_BTHWC, keep_BGhw, ts, p) if kernels is not None else None
    if packed is not None:
        tokens_ND, positions_N3, lengths_N, cu_seqlens = packed
    else:
        index_N4 = keep_BGhw.nonzero()  # row-major: clip, then (t, h, w)
        tokens_ND, lengths_N = _gather(frames_BTHWC, keep_BGhw, index_N4, ts, p)
        positions_N3 = index_N4[:, 1:]
        counts_B = keep_BGhw.flatten(1).sum(1)
        cu_seqlens = torch.zeros(frames_BTHWC.shape[0] + 1, dtype=torch.int32, device=keep_BGhw.device)
        cu_seqlens[1:] = torch.cumsum(counts_B, 0)
    return PackedTokens(
        tokens=tokens_ND,
        positions=positions_N3,
        lengths=lengths_N,
        cu_seqlens=cu_seqlens,
        keep=keep_BGhw,
        tubelet_size=ts,
        patch_size=p,
    )


def _gather(
    frames_BTHWC: torch.Tensor, keep_BGhw: torch.Tensor, index_N4: torch.Tensor, ts: int, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept tokens, uint8 ``[N, ts*p*p*C]``, and their run lengths, int64 ``[N]``."""
    b, t, height, width, c = frames_BTHWC.shape
    w = keep_BGhw.shape[3]
    clip_N, t_N, i_N, j_N = index_N4.unbind(1)
    # One gather of the kept bytes; the permuted clip is never materialised. A token is ts * p runs
    # of p*C contiguous bytes (one patch row of one frame); index_select copies whole runs, as
    # 8-byte words where they tile, which is far faster than advanced indexing byte by byte.
    runs_RX = _as_words(frames_BTHWC.view(b * t * height * w, p * c))
    dt_1T1 = torch.arange(ts, device=index_N4.device).view(1, ts, 1)
    dy_11P = torch.arange(p, device=index_N4.device).view(1, 1, p)
    frame_NT1 = (clip_N * t + t_N * ts).view(-1, 1, 1) + dt_1T1
    run_NTP = ((frame_NT1 * height + (i_N * p).view(-1, 1, 1) + dy_11P) * w) + j_N.view(-1, 1, 1)
    tokens_ND = runs_RX.index_select(0, run_NTP.flatten()).view(torch.uint8).view(-1, ts * p * p * c)
    # Indexed by the kept positions already found: a boolean mask would wait on the GPU again.
    return tokens_ND, run_lengths(keep_BGhw)[clip_N, t_N, i_N, j_N]
