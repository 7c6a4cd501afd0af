"""The checkpoints users download load with their source's logits, and a model trained here exports to HF.

Each kind is written by the library or the save call that writes it: transformers' ``save_pretrained``
for Hugging Face folders; ``torch.save`` of the dicts VideoMAE's, VideoMAE-v2's and DeepSpeed's scripts
save, of a model with VideoMAE's names (tests/videomae_reference.py), for ``.pth`` files. Logits are
compared with the source model's own forward on the same clips, with every token kept.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rlt import run_length_tokenize
from rlt.cli import app
from rlt.pipeline import ClipSampling, PackedTokens, RLTConfig
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import (
    PretrainedWeights,
    TrainConfig,
    VideoViT,
    ViTConfig,
    export_hf,
    find_checkpoint,
    load_model,
    param_groups,
    read_pretrained,
    tiny,
    train,
)
from rlt.train._checkpoint import save_checkpoint
from rlt.train._sources import DataSpec
from tests.clips import batch
from tests.videomae_reference import VisionTransformer

transformers = pytest.importorskip("transformers")

SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=1, size=64, crop=64)
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
TINY: dict[str, Any] = {"num_frames": 8, "image_size": 64, "patch_size": 16}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight videos of squares moving left or right, tokenized in this process (no Ray)."""
    folder = tmp_path_factory.mktemp("weights")
    manifest = make_samples(folder / "videos", num_videos=8, num_frames=24, height=64, width=96)
    tokenize_dataset(manifest, folder / "data", TokenizeConfig(shard_size=8, sampling=SAMPLING), workers=1)
    return folder / "data"


def clips(kept: str = "all") -> tuple[PackedTokens, torch.Tensor]:
    """Two clips as our model reads them (packed uint8 tokens) and as theirs do (normalised pixels)."""
    frames = torch.from_numpy(batch(["moving_square", "jitter"], seed=3, t=8, h=64, w=64))
    packed = run_length_tokenize(frames, patch_size=16, drop_policy="none" if kept == "all" else "rlt")
    pixels_BCTHW = ((frames.float() / 255 - MEAN) / STD).permute(0, 4, 1, 2, 3)
    return packed, pixels_BCTHW


def logits(model: VideoViT, packed: PackedTokens) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(packed.tokens, packed.positions, packed.lengths, packed.cu_seqlens)


def shake(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Moves every weight away from its initial value, so that norms, biases and gammas all count."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return module.eval()


def hf_model(*, mean_pooling: bool = True, classes: int = 5, width: int = 64) -> Any:
    config = transformers.VideoMAEConfig(
        image_size=64, patch_size=16, num_channels=3, num_frames=8, tubelet_size=2, hidden_size=width,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=4 * width, use_mean_pooling=mean_pooling,
        num_labels=classes,
    )  # fmt: skip
    torch.manual_seed(0)
    return shake(transformers.VideoMAEForVideoClassification(config))


def hf_logits(model: Any, pixels_BCTHW: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels_BCTHW.permute(0, 2, 1, 3, 4)).logits


def loaded(path: Path, config: ViTConfig) -> tuple[VideoViT, PretrainedWeights]:
    """Our model from the weights at ``path``, as ``--init`` builds it."""
    weights = read_pretrained(path)
    model = VideoViT(weights.config_for(config))
    assert weights.load_into(model) == []  # nothing of ours kept: every tensor came from the file
    return model, weights


def videomae(**options: Any) -> VisionTransformer:
    torch.manual_seed(0)
    kw: dict[str, Any] = dict(img_size=64, patch_size=16, num_frames=8, embed_dim=64, depth=2, num_heads=2)
    return shake(VisionTransformer(**kw, num_classes=5, **options))  # type: ignore[return-value]


def videomae_args() -> argparse.Namespace:
    """The kind of ``args`` VideoMAE's run_class_finetuning.py saves with every checkpoint."""
    return argparse.Namespace(
        model="vit_base_patch16_224", batch_size=8, epochs=30, lr=1e-3, layer_decay=0.75, opt_betas=[0.9, 0.999],
        output_dir="/runs/k400", data_set="Kinetics-400", nb_classes=5, num_frames=8, tubelet_size=2,
        use_mean_pooling=True, init_scale=0.001, dist_on_itp=False, enable_deepspeed=False, seed=0, resume="",
    )  # fmt: skip


# Hugging Face folders, as transformers writes them and as the Hub holds them.


@pytest.mark.parametrize("mean_pooling", [True, False])
@pytest.mark.parametrize("given", ["folder", "safetensors", "config.json", "transformers-4 names"])
def test_a_hugging_face_checkpoint_gives_transformers_logits(tmp_path: Path, mean_pooling: bool, given: str) -> None:
    source = hf_model(mean_pooling=mean_pooling)
    source.save_pretrained(tmp_path, safe_serialization=True)
    weights = tmp_path / "model.safetensors"
    if given == "transformers-4 names":  # the Hub's files: q_bias / v_bias, which transformers 5 renames on load
        renamed = {
            k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v for k, v in load_file(weights).items()
        }
        assert any(k.endswith("q_bias") for k in renamed)
        save_file(renamed, weights, metadata={"format": "pt"})
        source = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path).eval()
    path = {"folder": tmp_path, "safetensors": weights, "config.json": tmp_path / "config.json"}.get(given, tmp_path)

    model, read = loaded(path, tiny(5, **TINY))
    # transformers' epsilons (the config's 1e-12 in blocks and norm, 1e-5 in fc_norm) are too small to
    # show in these logits: check the modules that use them.
    assert model.blocks[0].norm1.eps == model.blocks[1].norm2.eps == 1e-12
    assert model.fc_norm.eps == 1e-5 if mean_pooling else model.norm.eps == 1e-12
    assert model.config.pooling == ("mean" if mean_pooling else "first")
    packed, pixels = clips()
    expected = hf_logits(source, pixels)
    assert expected.abs().max() > 1  # logits big enough for the tolerance to mean something
    torch.testing.assert_close(logits(model, packed), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_a_hugging_face_pretraining_checkpoint_gives_its_encoder(tmp_path: Path, mean_pooling: bool) -> None:
    source = hf_model(mean_pooling=mean_pooling)
    pretraining = transformers.VideoMAEForPreTraining(source.config)
    pretraining.videomae.load_state_dict(source.videomae.state_dict())
    pretraining.save_pretrained(tmp_path)
    weights = read_pretrained(tmp_path)
    model = VideoViT(weights.config_for(tiny(5, **TINY)))
    # The decoder is left out; the classifier (and fc_norm, which pre-training has not) start afresh.
    fresh = ["head.weight", "head.bias"] + (["fc_norm.weight", "fc_norm.bias"] if mean_pooling else [])
    assert weights.load_into(model) == fresh
    attention = source.videomae.encoder.layer[1].attention.attention
    qkv = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, qkv, atol=0, rtol=0)
    if not mean_pooling:
        torch.testing.assert_close(model.norm.weight, source.videomae.layernorm.weight, atol=0, rtol=0)


def test_train_init_from_a_hugging_face_folder_keeps_its_config(tmp_path: Path, dataset: Path) -> None:
    source = hf_model(classes=2)
    source.save_pretrained(tmp_path / "hf")
    config = TrainConfig(epochs=None, max_steps=1, max_tokens=512, lr=1e-9, min_lr=0.0, weight_decay=0.0)
    train(dataset, tmp_path / "run", config, init=tmp_path / "hf")
    model, _, _ = load_model(tmp_path / "run")
    assert (model.config.norm_eps, model.config.fc_norm_eps) == (1e-12, 1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["norm_eps"] == 1e-12
    packed, pixels = clips()
    torch.testing.assert_close(logits(model, packed), hf_logits(source, pixels), atol=1e-5, rtol=1e-5)


# VideoMAE and VideoMAE-v2 .pth files, as their scripts save them; the RLT authors'.


@pytest.mark.parametrize(
    "kind", ["finetune", "deepspeed", "layer-scale", "no-mean-pooling", "no-qkv-bias", "pretraining-prefix"]
)
def test_a_videomae_pth_gives_the_logits_of_its_model(tmp_path: Path, kind: str) -> None:
    options = {
        "layer-scale": {"init_values": 0.1},  # VideoMAE-v2's giant models
        "no-mean-pooling": {"use_mean_pooling": False},
        "no-qkv-bias": {"qkv_bias": False},
    }.get(kind, {})
    source = videomae(**options)
    state = source.state_dict()
    path = tmp_path / "checkpoint-3.pth"
    if kind == "deepspeed":  # DeepSpeed's mp_rank_00_model_states.pt, as VideoMAE's --enable_deepspeed writes it
        path = tmp_path / "mp_rank_00_model_states.pt"
        torch.save({"module": state, "ds_version": "0.9.5", "global_steps": 30, "epoch": 3, "optimizer": None}, path)
    elif kind == "pretraining-prefix":
        # VideoMAE's encoder names with its decoder (left out), and the last norm as the RLT authors map it.
        prefixed = {f"encoder.{k.replace('fc_norm', 'norm')}": v for k, v in state.items() if "head" not in k}
        prefixed |= {"decoder.head.weight": torch.zeros(3, 64), "mask_token": torch.zeros(1, 1, 64)}
        torch.save({"model": prefixed}, path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    else:  # utils.save_model: model, optimizer, epoch, scaler and args
        optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(len(state)))}]}
        scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
        torch.save(
            {"model": state, "optimizer": optimizer, "epoch": 3, "scaler": scaler, "args": videomae_args()}, path
        )

    weights = read_pretrained(path)
    model = VideoViT(weights.config_for(tiny(5, **TINY)))
    kept = weights.load_into(model)
    assert kept == (["head.weight", "head.bias"] if kind == "pretraining-prefix" else [])
    assert set(weights.state) | set(kept) == set(model.state_dict())  # every key mapped, none dropped
    if kind == "pretraining-prefix":
        model.head.load_state_dict(source.head.state_dict())
    packed, pixels = clips()
    with torch.no_grad():
        expected = source(pixels)
    torch.testing.assert_close(logits(model, packed), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", ["backbone.", "encoder."])
@pytest.mark.parametrize("kept", ["all", "rlt"])
def test_an_rlt_authors_checkpoint_with_its_learned_length_embedding(tmp_path: Path, prefix: str, kept: str) -> None:
    # Their model: VideoMAE's names, LayerNorm's default epsilon, length_embed[length - 1].
    source = videomae(use_length_embed=True, eps=1e-5)
    names = {
        k: f"encoder.norm.{k[8:]}" if prefix == "encoder." and k.startswith("fc_norm.") else prefix + k
        for k in source.state_dict()
    }
    torch.save({"model": {names[k]: v for k, v in source.state_dict().items()}}, tmp_path / "rlt.pth")

    model, weights = loaded(tmp_path / "rlt.pth", tiny(5, **TINY))
    assert model.config.learned_length_embedding and weights.fields["norm_eps"] == 1e-5
    packed, pixels = clips(kept)
    lengths = torch.zeros(packed.keep.shape, dtype=torch.long)
    lengths[packed.keep] = packed.lengths
    if kept == "rlt":
        assert packed.lengths.max() > 1 and not packed.keep.all()
    with torch.no_grad():
        expected = source(pixels, keep=packed.keep, lengths=lengths.clamp(min=1))
    torch.testing.assert_close(logits(model, packed), expected, atol=1e-5, rtol=1e-5)


def test_a_prefixed_checkpoint_for_another_number_of_classes_keeps_our_head(tmp_path: Path) -> None:
    source = videomae()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.head.weight"], state["module.head.bias"] = torch.zeros(7, 64), torch.zeros(7)
    torch.save({"model": state, "args": videomae_args()}, tmp_path / "k7.pth")
    ours = VideoViT(tiny(5, **TINY))
    head = ours.head.weight.detach().clone()
    weights = read_pretrained(tmp_path / "k7.pth")
    assert weights.load_into(ours) == ["head.weight", "head.bias"]
    torch.testing.assert_close(ours.head.weight, head)
    torch.testing.assert_close(ours.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_a_pickled_function_is_refused_and_never_run(tmp_path: Path, dataset: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint-3.pth"
    torch.save({"model": videomae().state_dict(), "args": Payload()}, path)
    with pytest.raises(ValueError, match=r"pickles posix\.system"):
        read_pretrained(path)
    result = CliRunner().invoke(app, ["train", str(dataset), "--out", str(tmp_path / "run"), "--init", str(path)])
    error = next((line for line in result.output.splitlines() if line.startswith("error: ")), "")
    assert result.exit_code == 2 and str(path) in error and "posix.system" in error, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not marker.exists()


# Our own runs as --init, and export to Hugging Face.


def test_export_hf_round_trip_after_training(tmp_path: Path, dataset: Path) -> None:
    run = tmp_path / "run"
    train(dataset, run, TrainConfig(epochs=None, max_steps=2, max_tokens=256))
    result = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]

    ours, _, _ = load_model(run)
    theirs = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    packed, pixels = clips()
    # Hugging Face's fc_norm has epsilon 1e-5, ours 1e-6: the only difference.
    torch.testing.assert_close(hf_logits(theirs, pixels), logits(ours, packed), atol=1e-5, rtol=1e-5)
    runner = CliRunner()
    again = runner.invoke(app, ["export", str(run), str(tmp_path / "hf"), "--format", "hf"])
    assert again.exit_code == 2 and "not an empty folder" in again.output
    as_rows = runner.invoke(app, ["export", str(run), str(tmp_path / "rows"), "--format", "parquet"])
    assert as_rows.exit_code == 2 and "is a training run" in as_rows.output
    as_model = runner.invoke(app, ["export", str(dataset), str(tmp_path / "model"), "--format", "hf"])
    assert as_model.exit_code == 2 and "exports a trained model" in as_model.output
    # The export and our run folder are both --init sources.
    for source in (tmp_path / "hf", run, find_checkpoint(run)):
        model, _ = loaded(source, tiny(2, **TINY))
        torch.testing.assert_close(logits(model, packed), logits(ours, packed), atol=1e-5, rtol=1e-5)


def test_export_folds_layer_scale_and_length_embedding(tmp_path: Path) -> None:
    config = ViTConfig(
        width=64, depth=2, heads=2, num_classes=3, **TINY, pooling="first", layer_scale=True,
        learned_length_embedding=True,
    )  # fmt: skip
    torch.manual_seed(1)
    model = shake(VideoViT(config))
    spec = DataSpec(SAMPLING, RLTConfig(), 3, ["left", "right", "still"])
    save_checkpoint(
        tmp_path / "ckpt", 5, {"model": model.state_dict(), "model_config": asdict(config), "data": spec.to_dict()}
    )
    export_hf(tmp_path, tmp_path / "hf")
    theirs = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label == {0: "left", 1: "right", 2: "still"}
    packed, pixels = clips()
    torch.testing.assert_close(hf_logits(theirs, pixels), logits(model, packed), atol=1e-5, rtol=1e-5)


# Every failure to load is `error: <file>: <reason>`, exit 2.


def test_init_errors_name_the_file_and_exit_2(tmp_path: Path, dataset: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    no_weights = tmp_path / "no-weights"
    hf_model().save_pretrained(no_weights)
    (no_weights / "model.safetensors").unlink()
    wrong_shapes = tmp_path / "wrong-shapes"
    hf_model().save_pretrained(wrong_shapes)
    save_file(
        {
            k: v[..., :-1].contiguous() if "intermediate.dense.weight" in k else v
            for k, v in load_file(wrong_shapes / "model.safetensors").items()
        },
        wrong_shapes / "model.safetensors",
        metadata={"format": "pt"},
    )
    wider = tmp_path / "wider"
    hf_model(width=96).save_pretrained(wider)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    cases = {
        tmp_path / "missing.pth": "no such file",
        empty: "neither a Hugging Face model folder",
        bert: "model_type 'bert' is not 'videomae'",
        no_weights: "no model.safetensors",
        wrong_shapes: "another model shape",
        wider: "width 96",
        damaged: "not a readable safetensors file",
    }
    runner = CliRunner()
    for k, (path, reason) in enumerate(cases.items()):
        result = runner.invoke(app, ["train", str(dataset), "--out", str(tmp_path / f"run{k}"), "--init", str(path)])
        error = next((line for line in result.output.splitlines() if line.startswith("error: ")), "")
        assert result.exit_code == 2, (path, result.output)
        assert str(path) in error and reason in error, result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_layer_scale_and_a_learned_length_table_take_no_weight_decay() -> None:
    model = VideoViT(tiny(3, **TINY, layer_scale=True, learned_length_embedding=True))
    by_name = {name: g for g in param_groups(model, weight_decay=0.05, layer_decay=0.5) for name in g["names"]}
    assert by_name["length_embed"]["weight_decay"] == 0.0 and by_name["length_embed"]["lr_scale"] == 0.5**3
    assert by_name["blocks.1.gamma_2"]["weight_decay"] == 0.0 and by_name["blocks.1.gamma_2"]["lr_scale"] == 0.5
