"""The packed ViT: packing never changes a clip's logits; VideoMAE weights load into it."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from rlt import run_length_tokenize
from rlt.train import PRESETS, VideoViT, load_videomae_state_dict, sinusoid_table, tiny, vit_b
from rlt.train._model import drop_path
from tests.clips import batch
from tests.conftest import DEVICES


def model_and_batch(run_lengths: bool = False, **options: object) -> tuple[VideoViT, object]:
    torch.manual_seed(0)
    config = tiny(5, num_frames=8, image_size=32, patch_size=8, run_length_embedding=run_lengths, **options)
    clips = torch.from_numpy(batch(["moving_square", "jitter", "static"], seed=1, t=8, h=32, w=32))
    return VideoViT(config).eval(), run_length_tokenize(clips, patch_size=8)


# The options other checkpoints bring (tests/test_weights.py): the first token's norm for pooling,
# layer scale, the RLT authors' learned run-length table.
OTHER_MODELS = {"pooling": "first", "layer_scale": True, "learned_length_embedding": True}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("run_lengths, options", [(False, {}), (True, {}), (False, OTHER_MODELS)])
def test_a_packed_batch_gives_each_clip_its_own_logits(device: str, run_lengths: bool, options: dict) -> None:
    model, packed = model_and_batch(run_lengths, **options)
    model, packed = model.to(device), packed.to(device)
    with torch.no_grad():
        together = model(packed.tokens, packed.positions, packed.lengths, packed.cu_seqlens)
        for b in range(packed.num_clips):
            one = packed.clip(b)
            alone = model(one.tokens, one.positions, one.lengths, one.cu_seqlens)
            torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_no_token_attends_to_another_clip() -> None:
    model, packed = model_and_batch()
    with torch.no_grad():
        before = model(packed.tokens, packed.positions, packed.lengths, packed.cu_seqlens)
        tokens = packed.tokens.clone()
        start = int(packed.cu_seqlens[1])
        tokens[start:] = 255 - tokens[start:]  # change every clip but the first
        after = model(tokens, packed.positions, packed.lengths, packed.cu_seqlens)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1:], before[1:])


def test_run_length_embedding_follows_each_token() -> None:
    model, packed = model_and_batch(run_lengths=True)
    with torch.no_grad():
        base = model(packed.tokens, packed.positions, packed.lengths, packed.cu_seqlens)
        longer = model(packed.tokens, packed.positions, packed.lengths + 1, packed.cu_seqlens)
    assert not torch.allclose(base, longer)


def test_videomae_state_dict_loads_and_its_tubelet_embedding_is_preserved() -> None:
    config = tiny(7, num_frames=8, image_size=32, patch_size=8)
    source = VideoViT(config)
    conv = nn.Conv3d(3, config.width, kernel_size=(2, 8, 8), stride=(2, 8, 8))
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("patch_embed")}
    state["module.patch_embed.proj.weight"] = conv.weight.detach().clone()
    state["module.patch_embed.proj.bias"] = conv.bias.detach().clone()
    state["module.pos_embed"] = sinusoid_table(4 * 4 * 4, config.width)[None]  # fixed: VideoMAE's table
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location="cpu", weights_only=True)

    model = VideoViT(config)
    load_videomae_state_dict(model, loaded)
    # The linear map of (t, y, x, c) token pixels equals VideoMAE's Conv3d on the normalised clip.
    clip = torch.from_numpy(batch(["jitter"], seed=2, t=8, h=32, w=32))
    packed = run_length_tokenize(clip, patch_size=8, drop_policy="none")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    x = (clip.permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    with torch.no_grad():
        expected = conv(x).flatten(2).transpose(1, 2)[0]  # [G*h*w, d] in (t, h, w) order
        tokens = packed.tokens.float() * model.pixel_scale + model.pixel_shift
        torch.testing.assert_close(model.patch_embed(tokens), expected, rtol=1e-4, atol=1e-4)
    for key in ("blocks.1.attn.q_bias", "head.weight", "fc_norm.bias"):
        torch.testing.assert_close(model.state_dict()[key], source.state_dict()[key])
    with pytest.raises(ValueError, match="unexpected"):
        load_videomae_state_dict(model, {**loaded, "blocks.0.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="pos_embed is learned"):
        load_videomae_state_dict(model, {**loaded, "module.pos_embed": torch.zeros(1, 4 * 4 * 4, config.width)})


def test_presets_have_videomae_dimensions() -> None:
    assert set(PRESETS) == {"tiny", "vit_s", "vit_b", "vit_l", "vit_h"}
    config = vit_b(400)
    assert (config.width, config.depth, config.heads) == (768, 12, 12)
    parameters = sum(p.numel() for p in VideoViT(config).parameters())
    assert 86e6 < parameters < 88e6  # VideoMAE ViT-B with a 400-class head: ~87M


def test_drop_path_drops_whole_clips_in_training_only() -> None:
    x_Nd = torch.randn(9, 4)
    cu_seqlens = torch.tensor([0, 2, 2, 7, 9], dtype=torch.int32)
    torch.manual_seed(0)
    out = drop_path(x_Nd, cu_seqlens, 0.5)
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        part, source = out[start:end], x_Nd[start:end]
        assert torch.equal(part, torch.zeros_like(part)) or torch.equal(part, source * 2)
    assert drop_path(x_Nd, cu_seqlens, 0.0) is x_Nd

    # VideoMAE's schedule over the blocks; in eval the model is the one without drop path.
    model, packed = model_and_batch(drop_path=0.2)
    assert [block.drop_path for block in model.blocks] == pytest.approx([0.0, 0.2])
    plain = VideoViT(tiny(5, num_frames=8, image_size=32, patch_size=8))
    plain.load_state_dict(model.state_dict())
    args = (packed.tokens, packed.positions, packed.lengths, packed.cu_seqlens)
    with torch.no_grad():
        torch.testing.assert_close(model(*args), plain.eval()(*args))
        model.train()
        torch.manual_seed(1)
        noisy = [model(*args) for _ in range(4)]
    assert any(not torch.allclose(noisy[0], other) for other in noisy[1:])
    with pytest.raises(ValueError, match="drop_path must be in"):
        tiny(5, drop_path=1.0)
