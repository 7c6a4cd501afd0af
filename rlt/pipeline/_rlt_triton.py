"""The RLT stage on a GPU in two Triton kernels: the keep mask of every tubelet of a batch in one
launch, then the kept tokens with their positions, run lengths and the clips' ``cu_seqlens`` in
another. Between them one scan numbers the kept tokens, and the host reads their count: the one
wait of the stage, needed to size its outputs.

`_rlt`'s eager PyTorch ops do the same work in ~40 launches, and on a GPU it is the host issuing
them, not the memory traffic, that bounds the stage (`benchmarks/bench_gpu.py`, section rlt). The
kernels compute exactly what `_rlt` does on the CPU: integer sums of ``|a - b|`` per patch and
channel, scaled and added in float64 in the same order, with no fused multiply-add, so a score on
the threshold falls on the same side on both devices.

Both kernels run one program per patch row of a tubelet (clip b, tubelet k, patch row i): its
pixel rows are W * C contiguous bytes, so every load is a coalesced run across the row's w patches
(one program per patch read 16 runs of p * C = 48 bytes, and ``nonzero`` numbered the kept tokens
with a wait of its own: 0.496 ms for 32 clips of 16x224x224 on an H100, 9x one copy of the batch).

`ENABLED` is False where Triton does not import (PyTorch's CUDA wheels bring it), where
``RLT_PREP_TRITON=0``, or once a kernel failed to compile (with a warning saying why); `_rlt` then
uses its eager ops on the GPU too, and the functions here return None. Shape legend as in `_rlt`.
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU build of PyTorch, or Triton removed
    triton = None

ENABLED = triton is not None and os.environ.get("RLT_PREP_TRITON", "1") != "0"


def _bits(value: float) -> int:
    """A float64 as the int64 with its bits: Triton passes Python floats as float32."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _launch(kernel: Any, frames_BTHWC: torch.Tensor, ts: int, p: int, *args: Any, **options: Any) -> bool:
    """Runs ``kernel`` (frames, ``args``, then the geometry both kernels take) with a program per
    patch row of a tubelet; False, and the kernels off for good, where Triton cannot compile it here
    (a Triton or a GPU the kernels were not tried with)."""
    global ENABLED
    b, t, height, width, c = frames_BTHWC.shape
    g, h, w = t // ts, height // p, width // p
    try:
        kernel[(b * g * h,)](
            frames_BTHWC,
            *args,
            t,
            height,
            width,
            g,
            h,
            w,
            TS=ts,
            P=p,
            C=c,
            BLOCK_J=_pow2(w),
            BLOCK_E=_pow2(p * c),
            **options,
        )
    except triton.CompilationError as e:
        ENABLED = False
        warnings.warn(f"rlt: the RLT stage's Triton kernels do not compile here, using torch ops: {e}", stacklevel=3)
        return False
    return True


def keep_mask(
    frames_BTHWC: torch.Tensor, ts: int, p: int, weight_C: tuple[float, ...], threshold: float
) -> torch.Tensor | None:
    """`_rlt._keep_mask` with ``compare="previous"``: bool ``[B, G, h, w]``, tubelet 0 kept."""
    b, t, height, width, _ = frames_BTHWC.shape
    keep_BGhw = torch.empty((b, t // ts, height // p, width // p), dtype=torch.bool, device=frames_BTHWC.device)
    w0, w1, w2 = (weight_C + (weight_C[-1],) * 2)[:3]
    launched = not keep_BGhw.numel() or _launch(
        _keep_kernel,
        frames_BTHWC,
        ts,
        p,
        keep_BGhw.view(torch.uint8),
        _bits(threshold),
        _bits(w0),
        _bits(w1),
        _bits(w2),
        enable_fp_fusion=False,
    )
    return keep_BGhw if launched else None


def pack(
    frames_BTHWC: torch.Tensor, keep_BGhw: torch.Tensor, ts: int, p: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The kept tokens in (clip, t, h, w) order: uint8 ``[N, ts*p*p*C]`` laid out (t, y, x, c),
    their positions, int64 ``[N, 3]``, run lengths, int64 ``[N]``, and ``cu_seqlens``, int32
    ``[B+1]``. Waits for the GPU once, to learn N."""
    b, c = frames_BTHWC.shape[0], frames_BTHWC.shape[-1]
    if not keep_BGhw.numel():
        return None  # no clips: the eager path makes the empty batch
    # Kept token (b, k, i, j) is row ends[((b * G + k) * h + i) * w + j] - 1 of the output.
    ends = torch.cumsum(keep_BGhw.view(-1), 0, dtype=torch.int32)
    n = int(ends[-1])
    device = frames_BTHWC.device
    tokens_ND = torch.empty((n, ts * p * p * c), dtype=torch.uint8, device=device)
    positions_N3 = torch.empty((n, 3), dtype=torch.int64, device=device)
    lengths_N = torch.empty(n, dtype=torch.int64, device=device)
    cu_seqlens = torch.empty(b + 1, dtype=torch.int32, device=device)
    launched = _launch(
        _pack_kernel,
        frames_BTHWC,
        ts,
        p,
        keep_BGhw.view(torch.uint8),
        ends,
        tokens_ND,
        positions_N3,
        lengths_N,
        cu_seqlens,
        BLOCK_G=_pow2(keep_BGhw.shape[1]),
    )
    return (tokens_ND, positions_N3, lengths_N, cu_seqlens) if launched else None


if triton is not None:

    @triton.jit
    def _as_float64(bits):
        # tl.cast: an argument Triton specialised to a constant (the bits 1) is a Python int here.
        return tl.cast(bits, tl.int64).to(tl.float64, bitcast=True)

    # Floats travel as their bits; never specialised, a threshold of 5e-324 (bits 1) is no constant.
    @triton.jit(do_not_specialize=["threshold_bits", "w0_bits", "w1_bits", "w2_bits"])
    def _keep_kernel(
        frames_ptr,
        keep_ptr,
        threshold_bits,
        w0_bits,
        w1_bits,
        w2_bits,
        T,
        H,
        W,
        G,
        h,
        w,
        TS: tl.constexpr,
        P: tl.constexpr,
        C: tl.constexpr,
        BLOCK_J: tl.constexpr,
        BLOCK_E: tl.constexpr,
    ):
        # One program per patch row (clip b, tubelet k, patch row i), in keep's row-major order.
        pid = tl.program_id(0)
        i = pid % h
        k = (pid // h) % G
        b = (pid // (h * G)).to(tl.int64)
        patch = tl.arange(0, BLOCK_J)[:, None]  # j
        within = tl.arange(0, BLOCK_E)[None, :]  # x * C + c within the patch's pixel row
        # Nothing is read for tubelet 0, which is kept (a bound, not a scalar and-ed into the mask:
        # Triton 3.9's interpreter takes no scalar in a block's mask).
        mask = (patch < tl.where(k > 0, w, 0)) & (within < P * C)
        columns = patch * (P * C) + within
        last = (((b * T + k * TS + TS - 1) * H + i * P) * W) * C
        ref = (((b * T + (k - 1) * TS) * H + i * P) * W) * C
        sums = tl.zeros((BLOCK_J, BLOCK_E), dtype=tl.int32)
        for dy in range(P):  # the patch row's pixel rows, each W * C contiguous bytes
            a = tl.load(frames_ptr + last + dy * (W * C) + columns, mask=mask, other=0).to(tl.int32)
            r = tl.load(frames_ptr + ref + dy * (W * C) + columns, mask=mask, other=0).to(tl.int32)
            sums += tl.abs(a - r)
        channel = within % C
        # The score as `_rlt._patch_scores` adds it: channel 0 times its weight, then each next one.
        score = tl.sum(tl.where(channel == 0, sums, 0), axis=1).to(tl.float64) * _as_float64(w0_bits)
        for ch in tl.static_range(1, C):
            part = tl.sum(tl.where(channel == ch, sums, 0), axis=1).to(tl.float64)
            if ch == 1:
                score += part * _as_float64(w1_bits)
            else:
                score += part * _as_float64(w2_bits)
        j = tl.arange(0, BLOCK_J)
        kept = (j < tl.where(k > 0, 0, w)) | (score > _as_float64(threshold_bits))
        tl.store(keep_ptr + pid * w + j, kept.to(tl.uint8), mask=j < w)

    @triton.jit
    def _pack_kernel(
        frames_ptr,
        keep_ptr,
        ends_ptr,
        tokens_ptr,
        positions_ptr,
        lengths_ptr,
        cu_seqlens_ptr,
        T,
        H,
        W,
        G,
        h,
        w,
        TS: tl.constexpr,
        P: tl.constexpr,
        C: tl.constexpr,
        BLOCK_J: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_G: tl.constexpr,
    ):
        # One program per patch row (clip b, tubelet k, patch row i): its kept tokens' ts * p pixel
        # rows, positions and run lengths.
        pid = tl.program_id(0)
        i = pid % h
        k = (pid // h) % G
        b = (pid // (h * G)).to(tl.int64)
        j = tl.arange(0, BLOCK_J)
        kept = tl.load(keep_ptr + pid * w + j, mask=j < w, other=0) != 0
        row = tl.load(ends_ptr + pid * w + j, mask=kept, other=1).to(tl.int64) - 1  # each token's row
        within = tl.arange(0, BLOCK_E)[None, :]
        mask = kept[:, None] & (within < P * C)
        source = (((b * T + k * TS) * H + i * P) * W) * C + j[:, None] * (P * C) + within
        target = row[:, None] * (TS * P * P * C) + within
        for dt in range(TS):
            for dy in range(P):  # a pixel row of every kept patch: W * C contiguous bytes read
                values = tl.load(frames_ptr + source + (dt * H + dy) * (W * C), mask=mask)
                tl.store(tokens_ptr + target + (dt * P + dy) * (P * C), values, mask=mask)
        tl.store(positions_ptr + row * 3, (j * 0 + k).to(tl.int64), mask=kept)
        tl.store(positions_ptr + row * 3 + 1, (j * 0 + i).to(tl.int64), mask=kept)
        tl.store(positions_ptr + row * 3 + 2, j.to(tl.int64), mask=kept)
        # Each token's run: to the next kept tubelet at its patch, or the clip's end.
        later = tl.arange(0, BLOCK_G)[:, None]
        ahead = ((b * G + later) * h + i) * w + j[None, :]
        found = tl.load(keep_ptr + ahead, mask=(later > k) & (later < G) & (j[None, :] < w), other=0)
        following = tl.min(tl.where(found != 0, later, G), axis=0)
        tl.store(lengths_ptr + row, (following - k).to(tl.int64), mask=kept)
        # The clip's last patch row writes where the clip ends; the first program, the start.
        end = tl.load(ends_ptr + pid * w + w - 1)
        tl.store(cu_seqlens_ptr + b + 1, end, mask=(k == G - 1) & (i == h - 1))
        tl.store(cu_seqlens_ptr, end * 0, mask=pid == 0)
