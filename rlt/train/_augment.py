"""Augmenting stored run-length tokens, exactly where RLT allows it.

RLT decides each patch's keep flags and run lengths from that patch's own pixels alone, and the
score of a patch is a sum over its pixels, which any order of them gives alike. So a transform that
moves whole patches of the frame, mirroring the pixels inside each, commutes with RLT: applied to a
batch of stored tokens, each of these gives, bit for bit, what `run_length_tokenize` gives on the
transformed frames, in either compare mode (tests/test_augment.py checks it):

- `flip_tokens`: horizontal flip;
- `crop_tokens`: windows on the patch grid, from a dataset tokenized on a larger grid;
- `cutmix_tokens`: the partner clip's tokens inside a patch-aligned box held over the whole clip,
  the clip's own outside; `soft_targets` mixes the labels by area.

`erase_tokens` (random erasing) is a regulariser applied after RLT: it replaces the pixels of the
kept tokens in a box, not the frames' pixels before RLT, so it is not claimed to be exact.

`augment` draws all of them for a batch from an `AugmentConfig` and a seed (`draw_augmentation`,
then `Augmentation.apply`); `one_clip_per_video` is the sampling rule that keeps one of a video's
stored clips per epoch.

Shape legend:
    B  clips        G  tubelets per clip     h, w  patch grid     N  kept tokens over all clips
    D  values per token (ts*p*p*C)            K  classes           V  rows of a dataset
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from rlt.pipeline import IMAGENET_MEAN, IMAGENET_STD, PackedTokens

Seed = int | Sequence[int] | np.random.Generator


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation of stored tokens; the defaults are VideoMAE's fine-tuning recipe for
    what exists on tokens (its pixel Mixup does not: a blend of two clips is not RLT's output).

    Attributes:
        flip: flip each clip horizontally with probability 1/2. Turn it off where direction matters
            (VideoMAE's Something-Something recipe does).
        crop: side in pixels of a square window cut from each clip at a random place on the patch
            grid (for example 224 from a dataset stored at 256); None keeps the stored frame whole.
        cutmix: CutMix's alpha (box area drawn from Beta(alpha, alpha)); 0 turns CutMix off.
        cutmix_prob: probability that a clip is mixed with its partner.
        label_smoothing: smoothing of the targets `augment` returns (VideoMAE: 0.1).
        erase_prob: probability of random erasing per clip (VideoMAE's ``reprob``, 0.25).
        erase_area: range of the erased box's share of the grid (VideoMAE: 0.02 to 1/3).
        erase_aspect: range of the box's height / width, drawn log-uniformly (VideoMAE: 0.3 to 1/0.3).
        one_clip_per_video: train on one of each video's stored clips per epoch, drawn anew every
            epoch. The loader applies it, with `one_clip_per_video`; `augment` does not read it.
    """

    flip: bool = True
    crop: int | None = None
    cutmix: float = 1.0
    cutmix_prob: float = 1.0
    label_smoothing: float = 0.1
    erase_prob: float = 0.25
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    erase_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    one_clip_per_video: bool = False

    def __post_init__(self) -> None:
        if self.crop is not None and not (isinstance(self.crop, int) and self.crop >= 1):
            raise ValueError(f"crop must be None or a side in pixels >= 1, got {self.crop!r}")
        if not (math.isfinite(self.cutmix) and self.cutmix >= 0):
            raise ValueError(f"cutmix must be a finite alpha >= 0 (0 turns it off), got {self.cutmix!r}")
        for name in ("cutmix_prob", "erase_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        low, high = self.erase_area
        if not 0 < low <= high <= 1:
            raise ValueError(f"erase_area must be (low, high) with 0 < low <= high <= 1, got {self.erase_area!r}")
        low, high = self.erase_aspect
        if not 0 < low <= high:
            raise ValueError(f"erase_aspect must be (low, high) with 0 < low <= high, got {self.erase_aspect!r}")


# No augmentation at all: what `rlt-prep train` starts from without ``--recipe videomae``.
NO_AUGMENT = AugmentConfig(flip=False, cutmix=0.0, label_smoothing=0.0, erase_prob=0.0)


# The exact transforms ------------------------------------------------------------------------------


def flip_tokens(batch: PackedTokens, flip_B: torch.Tensor | None = None) -> PackedTokens:
    """Mirrors clips left to right: positions, and the pixels inside each token.

    Args:
        batch: the tokens.
        flip_B: bool ``[B]``, the clips to flip; all of them when None.

    Returns:
        What `run_length_tokenize` gives on the frames flipped along their width.
    """
    b = batch.num_clips
    flip_B = _clip_values(
        "flip_B", torch.ones(b, dtype=torch.bool) if flip_B is None else flip_B, b, batch.device, flags=True
    )
    return _gather(batch, _flip_rows(_token_rows(batch), flip_B), mirror_B=flip_B)


def crop_tokens(
    batch: PackedTokens, *, top_B: torch.Tensor, left_B: torch.Tensor, size: tuple[int, int]
) -> PackedTokens:
    """Cuts each clip to a window of the patch grid; positions become the window's own.

    Args:
        batch: the tokens.
        top_B, left_B: int ``[B]``, each clip's window corner, in patches.
        size: the window's (rows, columns), in patches, the same for every clip.

    Returns:
        What `run_length_tokenize` gives on the frames cut to the windows.

    Raises:
        ValueError: a window that leaves the grid.
    """
    top_B, left_B = _crop_corners(batch, top_B, left_B, size)
    return _gather(batch, _crop_rows(_token_rows(batch), top_B, left_B, size))


def cutmix_tokens(batch: PackedTokens, *, partner_B: torch.Tensor, box_B4: torch.Tensor) -> PackedTokens:
    """Pastes into each clip its partner's tokens inside a box held over the whole clip.

    Clip ``b`` takes clip ``partner_B[b]``'s tokens at the patches inside ``box_B4[b]`` and keeps its
    own outside. Labels and what each clip is stay clip ``b``'s; `soft_targets` mixes the labels.

    Args:
        batch: the tokens.
        partner_B: int ``[B]``, each clip's partner in the batch.
        box_B4: int ``[B, 4]``, each clip's box as (top, left, rows, columns) in patches; a box of no
            rows or no columns leaves the clip as it is.

    Returns:
        What `run_length_tokenize` gives on the frames made of the partner's pixels inside the box
        and the clip's own outside.
    """
    b, _, h, w = batch.keep.shape
    partner_B = _clip_values("partner_B", partner_B, b, batch.device)
    if bool(((partner_B < 0) | (partner_B >= b)).any()):
        raise ValueError(f"partner_B must index the batch's {b} clips")
    box_B4 = _boxes("box_B4", box_B4, b, h, w, batch.device)
    return _gather(batch, _paste_rows(_token_rows(batch), partner_B, box_B4))


# Each transform moves token rows on the grid; `_gather` copies the tokens once, after all of them.


def _crop_corners(
    batch: PackedTokens, top_B: torch.Tensor, left_B: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corners on the batch's device, checked to put ``size`` windows inside the grid."""
    b, _, h, w = batch.keep.shape
    rows, cols = size
    top_B = _clip_values("top_B", top_B, b, batch.device)
    left_B = _clip_values("left_B", left_B, b, batch.device)
    if not (0 < rows <= h and 0 < cols <= w):
        raise ValueError(f"a crop of {rows} x {cols} patches does not fit the grid of {h} x {w}")
    if bool((top_B < 0).any() | (top_B > h - rows).any() | (left_B < 0).any() | (left_B > w - cols).any()):
        raise ValueError(f"crop corners must lie in [0, {h - rows}] x [0, {w - cols}] for {rows} x {cols} windows")
    return top_B, left_B


def _flip_rows(rows_BGhw: torch.Tensor, flip_B: torch.Tensor) -> torch.Tensor:
    return torch.where(flip_B[:, None, None, None], rows_BGhw.flip(3), rows_BGhw)


def _crop_rows(
    rows_BGhw: torch.Tensor, top_B: torch.Tensor, left_B: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    b, g, _, _ = rows_BGhw.shape
    device = rows_BGhw.device
    i_Bh = top_B[:, None] + torch.arange(size[0], device=device)
    j_Bw = left_B[:, None] + torch.arange(size[1], device=device)
    b_B111 = torch.arange(b, device=device)[:, None, None, None]
    g_1G11 = torch.arange(g, device=device)[None, :, None, None]
    return rows_BGhw[b_B111, g_1G11, i_Bh[:, None, :, None], j_Bw[:, None, None, :]]


def _paste_rows(rows_BGhw: torch.Tensor, partner_B: torch.Tensor, box_B4: torch.Tensor) -> torch.Tensor:
    inside_Bhw = _box_mask(box_B4, *rows_BGhw.shape[2:])
    return torch.where(inside_Bhw[:, None], rows_BGhw[partner_B], rows_BGhw)


def _token_rows(batch: PackedTokens) -> torch.Tensor:
    """int64 ``[B, G, h, w]``: the token row of each kept tubelet, -1 where it was dropped."""
    rows_BGhw = torch.full(batch.keep.shape, -1, dtype=torch.int64, device=batch.device)
    t_N, i_N, j_N = batch.positions.unbind(1)
    rows_BGhw[_row_clips(batch), t_N, i_N, j_N] = torch.arange(batch.num_tokens, device=batch.device)
    return rows_BGhw


def _row_clips(batch: PackedTokens) -> torch.Tensor:
    """int64 ``[N]``: the clip of each token."""
    clips = torch.arange(batch.num_clips, device=batch.device)
    return torch.repeat_interleave(clips, batch.seqlens().to(torch.int64), output_size=batch.num_tokens)


def _gather(batch: PackedTokens, rows_BGhw: torch.Tensor, *, mirror_B: torch.Tensor | None = None) -> PackedTokens:
    """The batch whose grid holds token ``rows_BGhw[b, t, i, j]`` at each place (none where -1),
    packed as `run_length_tokenize` packs: clip by clip, each in (t, h, w) order.

    A run length belongs to a patch's column of tubelets, which every transform here moves whole,
    so each token keeps its own. ``mirror_B`` mirrors the pixels of the tokens that come from those
    clips of ``batch`` (after CutMix, a clip holds tokens of two).
    """
    keep_BGhw = rows_BGhw >= 0
    index_N4 = keep_BGhw.nonzero()  # row-major, as `run_length_tokenize` packs
    clip_N, t_N, i_N, j_N = index_N4.unbind(1)
    row_N = rows_BGhw[clip_N, t_N, i_N, j_N]
    tokens_ND = batch.tokens.index_select(0, row_N)
    if mirror_B is not None:
        ts, p, c = batch.tubelet_size, batch.patch_size, batch.channels
        mirrored = mirror_B[_row_clips(batch)[row_N]].nonzero().squeeze(1)
        # Tokens are laid out (t, y, x, c): mirroring a patch reverses x.
        m = len(mirrored)
        tokens_ND[mirrored] = tokens_ND[mirrored].view(m, ts, p, p, c).flip(3).reshape(m, tokens_ND.shape[1])
    cu_seqlens = torch.zeros(batch.num_clips + 1, dtype=torch.int32, device=batch.device)
    cu_seqlens[1:] = torch.cumsum(keep_BGhw.flatten(1).sum(1), 0)
    return replace(
        batch,
        tokens=tokens_ND,
        positions=index_N4[:, 1:],
        lengths=batch.lengths.index_select(0, row_N),
        cu_seqlens=cu_seqlens,
        keep=keep_BGhw,
    )


# The regulariser -----------------------------------------------------------------------------------


def erase_tokens(batch: PackedTokens, *, box_B4: torch.Tensor, generator: torch.Generator) -> PackedTokens:
    """Random erasing on tokens: the kept tokens inside each clip's box get random pixels.

    The box is held over the whole clip (VideoMAE's erasing of videos does the same); the values
    are VideoMAE's ``"pixel"`` mode, normal noise in ImageNet-normalised space, brought back to
    uint8. A token stands for its whole run, so the noise is repeated over the run. Not exact: RLT
    on erased frames would also keep the erased patches' later tubelets.

    Args:
        batch: the tokens.
        box_B4: int ``[B, 4]``, (top, left, rows, columns) in patches; an empty box erases nothing.
        generator: the noise's generator, on the batch's device.
    """
    b, _, h, w = batch.keep.shape
    inside_Bhw = _box_mask(_boxes("box_B4", box_B4, b, h, w, batch.device), h, w)
    erased = inside_Bhw[_row_clips(batch), batch.positions[:, 1], batch.positions[:, 2]].nonzero().squeeze(1)
    if len(erased) == 0:
        return batch
    c, d = batch.channels, batch.tokens.shape[1]
    # Other channel counts than RGB's take the mean of ImageNet's statistics for every channel.
    mean_C = IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,) * c
    std_C = IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,) * c
    # Tokens are laid out (t, y, x, c): channel c sits at every C-th value.
    mean_D = torch.tensor(mean_C, device=batch.device).repeat(d // c)
    std_D = torch.tensor(std_C, device=batch.device).repeat(d // c)
    z_MD = torch.randn((len(erased), d), generator=generator, device=batch.device)
    tokens_ND = batch.tokens.clone()
    tokens_ND[erased] = ((mean_D + std_D * z_MD) * 255).round_().clamp_(0, 255).to(torch.uint8)
    return replace(batch, tokens=tokens_ND)


def soft_targets(
    labels_B: torch.Tensor,
    num_classes: int,
    *,
    smoothing: float = 0.0,
    partner_B: torch.Tensor | None = None,
    lam_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 ``[B, K]`` targets: smoothed one-hot labels, mixed with the partners' by ``lam_B``.

    As timm's ``mixup_target``: each label gets ``1 - smoothing + smoothing / K``, the other classes
    ``smoothing / K``; clip ``b`` then takes ``lam_B[b]`` of its own and the rest of its partner's.
    ``F.cross_entropy(logits, targets)`` takes them as they are.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    bad_B = (labels_B < 0) | (labels_B >= num_classes)
    if bool(bad_B.any()):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels_B[bad_B].unique().tolist()}")
    off = smoothing / num_classes
    targets_BK = torch.full((len(labels_B), num_classes), off, device=labels_B.device)
    targets_BK.scatter_(1, labels_B[:, None].long(), 1 - smoothing + off)
    if partner_B is None or lam_B is None:
        return targets_BK
    lam_B1 = lam_B.to(targets_BK)[:, None]
    return lam_B1 * targets_BK + (1 - lam_B1) * targets_BK[partner_B.to(labels_B.device)]


# Drawing them --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Augmentation:
    """What `draw_augmentation` drew for one batch; `apply` does it, in the order of the fields.

    Boxes are (top, left, rows, columns) in patches of the grid after the crop; a box of no rows
    leaves its clip alone.

    Attributes:
        crop_top, crop_left: int64 ``[B]``, each clip's window corner in patches (None: no crop).
        crop_size: the windows' (rows, columns) in patches (None: no crop).
        flip: bool ``[B]``, the clips flipped.
        partner: int64 ``[B]``, each clip's CutMix partner (the batch reversed, as timm's).
        cutmix_box: int64 ``[B, 4]``, the box taken from the partner.
        erase_box: int64 ``[B, 4]``, the box of tokens erased.
        erase_seed: the seed of the erasing noise (a generator on the batch's device).
    """

    crop_top: torch.Tensor | None
    crop_left: torch.Tensor | None
    crop_size: tuple[int, int] | None
    flip: torch.Tensor
    partner: torch.Tensor
    cutmix_box: torch.Tensor
    erase_box: torch.Tensor
    erase_seed: int

    def apply(self, batch: PackedTokens) -> PackedTokens:
        """Crop, flip, CutMix and erasing, on ``batch``'s device.

        The same as `crop_tokens`, `flip_tokens`, `cutmix_tokens` and `erase_tokens` one after the
        other, with the tokens copied once for the first three.
        """
        b, device = batch.num_clips, batch.device
        moved = False
        rows_BGhw = _token_rows(batch)
        if self.crop_size is not None and self.crop_top is not None and self.crop_left is not None:
            top_B, left_B = _crop_corners(batch, self.crop_top, self.crop_left, self.crop_size)
            rows_BGhw, moved = _crop_rows(rows_BGhw, top_B, left_B, self.crop_size), True
        flip_B = _clip_values("flip", self.flip, b, device, flags=True)
        if self.flip.any():
            rows_BGhw, moved = _flip_rows(rows_BGhw, flip_B), True
        if (self.cutmix_box[:, 2:] > 0).all(1).any():
            _, _, rows, cols = rows_BGhw.shape
            box_B4 = _boxes("cutmix_box", self.cutmix_box, b, rows, cols, device)
            partner_B = _clip_values("partner", self.partner, b, device)
            rows_BGhw, moved = _paste_rows(rows_BGhw, partner_B, box_B4), True
        if moved:
            batch = _gather(batch, rows_BGhw, mirror_B=flip_B)
        if (self.erase_box[:, 2:] > 0).all(1).any():
            generator = torch.Generator(device=batch.device).manual_seed(self.erase_seed)
            batch = erase_tokens(batch, box_B4=self.erase_box, generator=generator)
        return batch

    def lam(self, grid: tuple[int, int]) -> torch.Tensor:
        """float64 ``[B]``: each clip's own share of the grid (rows, columns) after CutMix."""
        return 1 - self.cutmix_box[:, 2:].prod(1).double() / (grid[0] * grid[1])

    def __repr__(self) -> str:
        return (
            f"Augmentation(clips={len(self.flip)}, crop={self.crop_size}, flipped={int(self.flip.sum())}, "
            f"cutmix={int((self.cutmix_box[:, 2:] > 0).all(1).sum())}, "
            f"erased={int((self.erase_box[:, 2:] > 0).all(1).sum())})"
        )


def draw_augmentation(
    config: AugmentConfig, *, clips: int, grid: tuple[int, int], patch_size: int, rng: Seed
) -> Augmentation:
    """Draws one batch's augmentation: a pure function of the config, the batch's shape and ``rng``.

    Args:
        config: what to draw.
        clips: B, the batch's clips.
        grid: the stored patch grid (rows, columns).
        patch_size: pixels per patch side, to turn ``config.crop`` into patches.
        rng: a numpy Generator, or its seed: ``(seed, epoch, batch)`` draws anew each epoch.

    Raises:
        ValueError: a crop that is no multiple of the patch size or larger than the stored frames.
    """
    rng = np.random.default_rng(rng)
    h, w = grid
    top = left = size = None
    if config.crop is not None:
        side = crop_side(config.crop, grid=grid, patch_size=patch_size)
        top = torch.from_numpy(rng.integers(0, h - side + 1, clips))
        left = torch.from_numpy(rng.integers(0, w - side + 1, clips))
        size, h, w = (side, side), side, side
    flip = torch.from_numpy(rng.random(clips) < 0.5) if config.flip else torch.zeros(clips, dtype=torch.bool)
    cutmix_box = torch.zeros((clips, 4), dtype=torch.int64)
    if config.cutmix > 0:
        for b in range(clips):
            if rng.random() < config.cutmix_prob:
                cutmix_box[b] = torch.tensor(_cutmix_box(rng, config.cutmix, h, w))
    erase_box = torch.zeros((clips, 4), dtype=torch.int64)
    for b in range(clips):
        if rng.random() < config.erase_prob:
            erase_box[b] = torch.tensor(_erase_box(rng, config, h, w))
    return Augmentation(
        crop_top=top,
        crop_left=left,
        crop_size=size,
        flip=flip,
        partner=torch.arange(clips - 1, -1, -1),
        cutmix_box=cutmix_box,
        erase_box=erase_box,
        erase_seed=int(rng.integers(2**62)),
    )


def crop_side(crop: int, *, grid: tuple[int, int], patch_size: int) -> int:
    """``crop`` pixels in patches, checked to fit a grid of (rows, columns) patches.

    Raises:
        ValueError: a crop that is no multiple of the patch size or larger than the frames.
    """
    h, w = grid
    if crop % patch_size or crop > patch_size * min(h, w):
        raise ValueError(
            f"crop={crop} must be a multiple of patch_size={patch_size} and fit the stored "
            f"{h * patch_size} x {w * patch_size} frames"
        )
    return crop // patch_size


def centre_crop_tokens(batch: PackedTokens, size: int) -> PackedTokens:
    """Each clip cut to its centre ``size`` x ``size`` pixels, on the patch grid (where the margin is
    an odd number of patches, the window sits one patch nearer the top left): how a model trained
    on crops of larger stored frames is evaluated. The batch itself when it is that size already.
    """
    return view_crop_tokens(batch, size, view=0, views=1)


def view_crop_tokens(batch: PackedTokens, size: int, *, view: int, views: int) -> PackedTokens:
    """Spatial view ``view`` of ``views`` (VideoMAE's test crops): ``size`` x ``size`` windows spread
    evenly along the grid's longer margin (first edge, ..., last edge; one view is the centre),
    centred across the other. The batch itself when it is that size already.
    """
    _, _, h, w = batch.keep.shape
    side = crop_side(size, grid=(h, w), patch_size=batch.patch_size)
    if (side, side) == (h, w):
        return batch
    along = (h - side, (w - side) // 2) if h - side > w - side else (w - side, (h - side) // 2)
    offset = along[0] // 2 if views == 1 else round(view * along[0] / (views - 1))
    top, left = (offset, along[1]) if h - side > w - side else (along[1], offset)
    b = batch.num_clips
    top_B = torch.full((b,), top, dtype=torch.int64)
    left_B = torch.full((b,), left, dtype=torch.int64)
    return crop_tokens(batch, top_B=top_B, left_B=left_B, size=(side, side))


def _cutmix_box(rng: np.random.Generator, alpha: float, h: int, w: int) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox`` on the patch grid: a box of about ``1 - lam`` of it, centred anywhere,
    cut by the grid's edges (the label mix then follows the box's real area)."""
    cut = math.sqrt(1 - rng.beta(alpha, alpha))
    rows, cols = round(h * cut), round(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - rows // 2, 0), min(cy - rows // 2 + rows, h)
    left, right = max(cx - cols // 2, 0), min(cx - cols // 2 + cols, w)
    return top, left, max(bottom - top, 0), max(right - left, 0)


def _erase_box(rng: np.random.Generator, config: AugmentConfig, h: int, w: int) -> tuple[int, int, int, int]:
    """timm's ``RandomErasing`` box on the patch grid: up to 10 tries for one that fits."""
    log_aspect = (math.log(config.erase_aspect[0]), math.log(config.erase_aspect[1]))
    for _ in range(10):
        area = rng.uniform(*config.erase_area) * h * w
        aspect = math.exp(rng.uniform(*log_aspect))
        rows, cols = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < rows < h and 0 < cols < w:
            return int(rng.integers(h - rows + 1)), int(rng.integers(w - cols + 1)), rows, cols
    return 0, 0, 0, 0


def augment(
    batch: PackedTokens, config: AugmentConfig, *, num_classes: int, rng: Seed
) -> tuple[PackedTokens, torch.Tensor]:
    """One training batch's augmentation, drawn from ``rng`` and applied on the batch's device.

    Args:
        batch: the tokens, with labels.
        config: what to do.
        num_classes: K, for the targets.
        rng: a numpy Generator, or its seed; ``(seed, epoch, batch index)`` gives every epoch new
            draws and a resumed run the same ones.

    Returns:
        The augmented batch (its ``labels`` stay each clip's own), and float32 ``[B, K]`` targets:
        the labels smoothed and mixed by CutMix, for ``F.cross_entropy(logits, targets)``.
    """
    labels_B = batch.require_labels()
    _, _, h, w = batch.keep.shape
    drawn = draw_augmentation(config, clips=batch.num_clips, grid=(h, w), patch_size=batch.patch_size, rng=rng)
    out = drawn.apply(batch)
    _, _, rows, cols = out.keep.shape
    targets_BK = soft_targets(
        labels_B,
        num_classes,
        smoothing=config.label_smoothing,
        partner_B=drawn.partner,
        lam_B=drawn.lam((rows, cols)),
    )
    return out, targets_BK


def one_clip_per_video(videos: Sequence[str], *, seed: int, epoch: int) -> np.ndarray:
    """The rows to train on in ``epoch``: one of each video's rows, drawn uniformly and anew every
    epoch, a pure function of (rows, seed, epoch).

    Args:
        videos: the video of each row of the dataset (``V`` rows; a video's stored clips share it).

    Returns:
        int64 row indices, ascending, one per distinct video.
    """
    if not videos:
        return np.zeros(0, dtype=np.int64)
    _, video_V = np.unique(np.asarray(videos, dtype=object).astype(str), return_inverse=True)
    key_V = np.random.default_rng([seed, epoch]).random(len(video_V))
    # Sorted by video, then by key: the first row of each video is its smallest key, a uniform pick.
    order = np.lexsort((key_V, video_V))
    first = np.ones(len(order), dtype=bool)
    first[1:] = video_V[order][1:] != video_V[order][:-1]
    return np.sort(order[first]).astype(np.int64)


def _clip_values(name: str, value: torch.Tensor, b: int, device: torch.device, *, flags: bool = False) -> torch.Tensor:
    """``value`` on ``device``, checked to be ``[B]`` bool flags or int64 indices."""
    value = torch.as_tensor(value)
    is_bool = value.dtype == torch.bool
    if tuple(value.shape) != (b,) or value.is_floating_point() or value.is_complex() or is_bool != flags:
        kind = "bool" if flags else "int"
        raise ValueError(f"{name} must be {kind} [{b}], one per clip, got {value.dtype} {list(value.shape)}")
    return value.to(device=device, dtype=torch.bool if flags else torch.int64)


def _boxes(name: str, box_B4: torch.Tensor, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    box_B4 = torch.as_tensor(box_B4)
    if tuple(box_B4.shape) != (b, 4) or box_B4.is_floating_point() or box_B4.dtype == torch.bool:
        raise ValueError(f"{name} must be int [{b}, 4] (top, left, rows, columns), got {list(box_B4.shape)}")
    top, left, rows, cols = box_B4.unbind(1)
    if bool(((box_B4 < 0).any(1) | (top + rows > h) | (left + cols > w)).any()):
        raise ValueError(f"{name} must lie inside the {h} x {w} patch grid, got {box_B4.tolist()}")
    return box_B4.to(device=device, dtype=torch.int64)


def _box_mask(box_B4: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """bool ``[B, h, w]``: the patches inside each clip's box."""
    top, left, rows, cols = (v[:, None, None] for v in box_B4.unbind(1))
    i_1h1 = torch.arange(h, device=box_B4.device)[None, :, None]
    j_11w = torch.arange(w, device=box_B4.device)[None, None, :]
    return (i_1h1 >= top) & (i_1h1 < top + rows) & (j_11w >= left) & (j_11w < left + cols)
