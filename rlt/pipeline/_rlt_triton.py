"""The RLT stage on a GPU in two Triton kernels: the keep mask of every tubelet of a batch in one
launch, then the kept tokens with their run lengths and the clips' ``cu_seqlens`` in another.

`_rlt`'s eager PyTorch ops do the same work in ~40 launches, and on a GPU it is the host issuing
them, not the memory traffic, that bounds the stage (`benchmarks/bench_gpu.py`, section rlt). The
kernels compute exactly what `_rlt` does on the CPU: integer sums of ``|a - b|`` per patch and
channel, scaled and added in float64 in the same order, with no fused multiply-add, so a score on
the threshold falls on the same side on both devices.

`ENABLED` is False where Triton does not import (PyTorch's CUDA wheels bring it), where
``RLT_PREP_TRITON=0``, or once a kernel failed to compile (with a warning saying why); `_rlt` then
uses its eager ops on the GPU too, and the functions here return None.
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


def _launch(kernel: Any, programs: int, *args: Any, **options: Any) -> bool:
    """Runs ``kernel`` over ``programs`` programs; False, and the kernels off for good, where
    Triton cannot compile it here (a Triton or a GPU the kernels were not tried with)."""
    global ENABLED
    try:
        kernel[(programs,)](*args, **options)
    except triton.CompilationError as e:
        ENABLED = False
        warnings.warn(f"rlt: the RLT stage's Triton kernels do not compile here, using torch ops: {e}", stacklevel=3)
        return False
    return True


def keep_mask(
    frames_BTHWC: torch.Tensor, ts: int, p: int, weight_C: tuple[float, ...], threshold: float
) -> torch.Tensor | None:
    """`_rlt._keep_mask` with ``compare="previous"``: bool ``[B, G, h, w]``, tubelet 0 kept."""
    b, t, height, width, c = frames_BTHWC.shape
    g, h, w = t // ts, height // p, width // p
    keep_BGhw = torch.empty((b, g, h, w), dtype=torch.bool, device=frames_BTHWC.device)
    w0, w1, w2 = (weight_C + (weight_C[-1],) * 2)[:3]
    launched = not keep_BGhw.numel() or _launch(
        _keep_kernel,
        keep_BGhw.numel(),
        frames_BTHWC,
        keep_BGhw.view(torch.uint8),
        _bits(threshold),
        _bits(w0),
        _bits(w1),
        _bits(w2),
        t,
        height,
        width,
        g,
        h,
        w,
        TS=ts,
        P=p,
        C=c,
        BLOCK_R=_pow2(p),
        BLOCK_X=_pow2(p * c),
        enable_fp_fusion=False,
    )
    return keep_BGhw if launched else None


def pack(
    frames_BTHWC: torch.Tensor, keep_BGhw: torch.Tensor, index_N4: torch.Tensor, ts: int, p: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The tokens at ``index_N4`` (``keep_BGhw.nonzero()``), uint8 ``[N, ts*p*p*C]`` laid out
    (t, y, x, c), their run lengths, int64 ``[N]``, and ``cu_seqlens``, int32 ``[B+1]``: every clip
    keeps its tubelet 0, so each clip's last token writes where the clip ends."""
    b, t, height, width, c = frames_BTHWC.shape
    g, h, w = keep_BGhw.shape[1:]
    n = index_N4.shape[0]
    tokens_ND = torch.empty((n, ts * p * p * c), dtype=torch.uint8, device=frames_BTHWC.device)
    lengths_N = torch.empty(n, dtype=torch.int64, device=frames_BTHWC.device)
    cu_seqlens = torch.empty(b + 1, dtype=torch.int32, device=frames_BTHWC.device)
    if not n:
        return None  # no clips: the eager path makes the empty batch
    launched = _launch(
        _pack_kernel,
        n,
        frames_BTHWC,
        keep_BGhw.view(torch.uint8),
        index_N4.contiguous(),
        tokens_ND,
        lengths_N,
        cu_seqlens,
        n,
        t,
        height,
        width,
        g,
        h,
        w,
        TS=ts,
        P=p,
        C=c,
        BLOCK_R=_pow2(ts * p),
        BLOCK_X=_pow2(p * c),
        BLOCK_G=_pow2(g),
    )
    return (tokens_ND, lengths_N, cu_seqlens) if launched else None


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
        BLOCK_R: tl.constexpr,
        BLOCK_X: tl.constexpr,
    ):
        # One program per (clip, tubelet, patch row, patch column), in keep's row-major order.
        pid = tl.program_id(0)
        j = pid % w
        i = (pid // w) % h
        k = (pid // (w * h)) % G
        b = (pid // (w * h * G)).to(tl.int64)
        rows = tl.arange(0, BLOCK_R)[:, None]
        cols = tl.arange(0, BLOCK_X)[None, :]  # x * C + c within the patch row
        # No rows for tubelet 0, which is kept (a bound on the rows: Triton 3.9's interpreter takes no
        # scalar in a block's mask).
        mask = (rows < tl.where(k > 0, P, 0)) & (cols < P * C)
        within = rows * (W * C) + cols
        last = (((b * T + k * TS + TS - 1) * H + i * P) * W + j * P) * C
        ref = (((b * T + (k - 1) * TS) * H + i * P) * W + j * P) * C
        a = tl.load(frames_ptr + last + within, mask=mask, other=0).to(tl.int32)
        r = tl.load(frames_ptr + ref + within, mask=mask, other=0).to(tl.int32)
        diff = tl.abs(a - r)
        channel = cols % C
        # The score as `_rlt._patch_scores` adds it: channel 0 times its weight, then each next one.
        score = tl.sum(tl.sum(tl.where(channel == 0, diff, 0), axis=1), axis=0).to(tl.float64) * _as_float64(w0_bits)
        for ch in tl.static_range(1, C):
            part = tl.sum(tl.sum(tl.where(channel == ch, diff, 0), axis=1), axis=0).to(tl.float64)
            if ch == 1:
                score += part * _as_float64(w1_bits)
            else:
                score += part * _as_float64(w2_bits)
        kept = (k == 0) | (score > _as_float64(threshold_bits))
        tl.store(keep_ptr + pid, kept.to(tl.uint8))

    @triton.jit
    def _pack_kernel(
        frames_ptr,
        keep_ptr,
        index_ptr,
        tokens_ptr,
        lengths_ptr,
        cu_seqlens_ptr,
        N,
        T,
        H,
        W,
        G,
        h,
        w,
        TS: tl.constexpr,
        P: tl.constexpr,
        C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_X: tl.constexpr,
        BLOCK_G: tl.constexpr,
    ):
        # One program per kept token: its ts * p rows of p * C bytes, then its run length.
        n = tl.program_id(0).to(tl.int64)
        b = tl.load(index_ptr + n * 4)
        t = tl.load(index_ptr + n * 4 + 1)
        i = tl.load(index_ptr + n * 4 + 2)
        j = tl.load(index_ptr + n * 4 + 3)
        rows = tl.arange(0, BLOCK_R)[:, None]  # dt * P + dy
        cols = tl.arange(0, BLOCK_X)[None, :]
        mask = (rows < TS * P) & (cols < P * C)
        source = (((b * T + t * TS + rows // P) * H + i * P + rows % P) * W + j * P) * C + cols
        values = tl.load(frames_ptr + source, mask=mask)
        tl.store(tokens_ptr + n * (TS * P * P * C) + rows * (P * C) + cols, values, mask=mask)
        # The next kept tubelet at this patch, or the clip's end.
        later = tl.arange(0, BLOCK_G)
        kept = tl.load(keep_ptr + ((b * G + later) * h + i) * w + j, mask=(later > t) & (later < G), other=0)
        following = tl.min(tl.where(kept != 0, later, G), axis=0)
        tl.store(lengths_ptr + n, following - t)
        # A clip's last token (the next one is another clip's, or there is none) writes its end.
        next_clip = tl.load(index_ptr + (n + 1) * 4, mask=n + 1 < N, other=-1)
        tl.store(cu_seqlens_ptr + b + 1, (n + 1).to(tl.int32), mask=next_clip != b)
        tl.store(cu_seqlens_ptr, (n * 0).to(tl.int32), mask=n == 0)  # and the first token, the start
