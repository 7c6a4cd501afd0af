"""The trainer: it learns, resumes a killed run exactly, matches one process with two (DDP), and evals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlt.cli import app
from rlt.dataset import open_dataset
from rlt.pipeline import ClipSampling, FrameAugment, OnlinePipeline, RLTConfig
from rlt.samples import make_samples, synthetic_clip, write_video
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.train import (
    AugmentConfig,
    TrainConfig,
    VideoViT,
    WarmupCosine,
    evaluate,
    find_checkpoint,
    load_model,
    param_groups,
    tiny,
    train,
)
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)


@pytest.fixture(scope="module")
def direction(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The direction task (squares moving right or left): 256 training and 32 held-out videos,
    tokenized by the real job on an embedded Ray."""
    import ray

    folder = tmp_path_factory.mktemp("direction")
    paths: dict[str, Path] = {}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, logging_level="ERROR")
    try:
        for split, videos, seed in (("train", 256, 0), ("val", 32, 10_000)):
            manifest = make_samples(
                folder / f"{split}_videos", num_videos=videos, num_frames=40, height=64, width=96, seed=seed
            )
            config = TokenizeConfig(shard_size=32, sampling=SAMPLING, backend="decord")
            tokenize_dataset(manifest, folder / split, config)
            paths[f"{split}_manifest"] = manifest
            paths[split] = folder / split
    finally:
        ray.shutdown()
    return paths


@pytest.fixture(scope="module")
def motion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A task that flips and crops leave alone: squares that move (right or left, either class) or
    stand still, in 64 x 64 videos stored at 64 px, for crops of 48. 96 training and 32 held-out
    videos, tokenized by the real job in this process (about 4 s)."""
    folder = tmp_path_factory.mktemp("motion")
    paths: dict[str, Path] = {}
    for split, videos, seed in (("train", 96, 0), ("val", 32, 10_000)):
        rows = []
        for i in range(videos):
            moving, direction = i % 2, (i // 2) % 2
            clip = synthetic_clip(40, 64, 64, seed=seed + i, direction=direction, speed=3 * moving)
            write_video(folder / f"{split}_videos" / f"{i:03d}.mp4", clip)
            rows.append(f"{i:03d}.mp4,{('still', 'moving')[moving]}")
        manifest = folder / f"{split}_videos" / "manifest.csv"
        manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
        config = TokenizeConfig(shard_size=32, sampling=SAMPLING, backend="decord")
        tokenize_dataset(manifest, folder / split, config, workers=1)
        paths[split] = folder / split
    return paths


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlt", *args]


def cpu_env() -> dict[str, str]:
    """The environment of a `rlt-prep train` that runs on the CPU, with one thread, on a GPU machine
    too (losses equal step for step, gloo for DDP)."""
    return child_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def test_tiny_learns_the_direction_of_motion(tmp_path: Path, direction: dict[str, Path]) -> None:
    # About 25 s on two CPU cores; the loss falls from ~0.69 to ~0.01 by epoch 15.
    config = TrainConfig(preset="tiny", epochs=25, max_tokens=1024, warmup_steps=5, layer_decay=1.0)
    summary = train(direction["train"], tmp_path / "run", config, device="cpu")
    assert summary.steps > 300 and summary.epoch == 25
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == summary.steps
    assert sum(m["loss"] for m in metrics[-20:]) < 0.2 * sum(m["loss"] for m in metrics[:20])
    assert all(0 < m["kept_ratio"] < 0.8 for m in metrics)  # RLT dropped tokens of the static background
    scores = evaluate(tmp_path / "run", direction["val"], device="cpu")
    assert scores.videos == 32 and scores.clips == 64
    assert scores.top1 > 0.9, scores


def test_the_videomae_recipe_still_learns_a_flip_invariant_task(tmp_path: Path, motion: dict[str, Path]) -> None:
    # The tiny preset on random 48 px crops of clips stored at 64, flipped, CutMixed, erased, with
    # smoothed targets and drop path: about 6 s on two CPU cores.
    recipe = AugmentConfig(crop=48)  # and VideoMAE's flip, CutMix, label smoothing and erasing
    config = TrainConfig(epochs=20, max_tokens=512, warmup_steps=5, layer_decay=1.0, drop_path=0.1, augment=recipe)
    summary = train(motion["train"], tmp_path / "run", config)
    assert summary.steps >= 100 and summary.epoch == 20
    model, _, _ = load_model(tmp_path / "run")
    assert model.config.image_size == 48 and model.config.grid == (4, 3, 3) and model.config.drop_path == 0.1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["kept_ratio"] < 1 for m in metrics)  # of the 3 x 3 crops
    # Soft targets: label smoothing keeps the loss above its entropy, whatever the model.
    assert min(m["loss"] for m in metrics) > 0.1
    scores = evaluate(tmp_path / "run", motion["val"])  # on the centre 48 px of each clip
    assert scores.videos == 32 and scores.clips == 64
    assert scores.top1 > 0.9, scores
    # VideoMAE's test protocol: 2 temporal clips x 3 spatial crops of each video, probabilities averaged.
    views = evaluate(tmp_path / "run", motion["val"], spatial_crops=3)
    assert views.videos == 32 and views.clips == 192 and views.top1 > 0.9, views
    # The same clips with every token (the dense model RLT is compared with): 3 x 3 x 4 tubelets a view.
    dense = evaluate(tmp_path / "run", motion["val"], tokens="dense")
    assert dense.clips == 64 and dense.tokens == 64 * 36 > scores.tokens > 0


def test_eval_averages_each_videos_clips(tmp_path: Path, direction: dict[str, Path]) -> None:
    train(direction["val"], tmp_path / "run", TrainConfig(max_steps=3, max_tokens=512))
    result = evaluate(tmp_path / "run", direction["val"], max_tokens=300)
    # The same by hand: every clip alone, probabilities averaged per video.
    model, _, _ = load_model(tmp_path / "run")
    per_video: dict[str, list] = {}
    labels: dict[str, int] = {}
    clip_hits = 0
    with torch.no_grad():
        for record in open_dataset(direction["val"]):
            cu = torch.tensor([0, record.num_tokens], dtype=torch.int32)
            logits = model(
                torch.tensor(record.tokens),
                torch.from_numpy(record.positions.astype("int64")),
                torch.from_numpy(record.lengths.astype("int64")),
                cu,
            )
            per_video.setdefault(record.video, []).append(logits.softmax(1)[0])
            labels[record.video] = int(record.label)
            clip_hits += int(logits.argmax() == record.label)
    top1 = sum(int(torch.stack(p).mean(0).argmax() == labels[v]) for v, p in per_video.items()) / len(per_video)
    assert result.top1 == pytest.approx(top1)
    assert result.clip_top1 == pytest.approx(clip_hits / 64)
    assert result.top5 == 1.0  # two classes


@pytest.mark.parametrize("source", ["dataset", "online", "recipe", "online-recipe"])
def test_a_killed_run_resumes_with_the_same_losses_step_for_step(
    tmp_path: Path, direction: dict[str, Path], motion: dict[str, Path], source: str
) -> None:
    # Micro-batches of ~2 clips, steps of a few micro-batches (accumulation by tokens), steps crossing
    # epoch ends: resuming must restore the loader mid-epoch, the optimiser and the schedule; with the
    # recipe, also the draws of crops, flips, CutMix, erasing, drop path and each epoch's clip per video.
    if source == "dataset":
        args = ["train", str(direction["val"]), "--max-steps", "40", "--max-tokens", "256", "--tokens-per-step", "600"]
    elif source == "recipe":
        args = ["train", str(motion["train"]), "--max-steps", "40", "--max-tokens", "128", "--tokens-per-step", "300"]
        args += ["--recipe", "videomae", "--crop", "48", "--one-clip-per-video"]
    else:  # one training clip per video, at an offset that changes with the epoch
        args = ["train", "--online", str(direction["val_manifest"]), "--epochs", "3", "--videos-per-batch", "2"]
        args += ["--num-frames", "8", "--frame-interval", "2", "--size", "64", "--backend", "decord"]
        args += ["--tokens-per-step", "100" if source == "online" else "40"]
        if source == "online-recipe":  # random resized crops of the pixels (fewer tokens), then the recipe
            args += ["--frame-crop", "48", "--recipe", "videomae"]
    args += ["--warmup-steps", "5", "--checkpoint-every", "4"]
    env = cpu_env()
    whole = tmp_path / "whole"
    subprocess.run(cli(*args, "--out", str(whole)), check=True, env=env, capture_output=True)
    expected = losses(whole)

    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*args, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before_kill = len(metrics.read_text().splitlines())
    assert done_before_kill < len(expected), "the run finished before it could be killed"
    subprocess.run(cli(*args, "--out", str(killed), "--resume"), check=True, env=env, capture_output=True)

    got = losses(killed)
    assert len(expected) == len(got) >= 20
    assert got == expected


@pytest.mark.parametrize("mode", ["one-batch-steps", "accumulated-steps", "online"])
def test_two_processes_follow_the_one_process_loss_curve(tmp_path: Path, direction: dict[str, Path], mode: str) -> None:
    # Every step takes the whole epoch: in one micro-batch per rank (a budget that holds it all), or
    # gathered from micro-batches of ~10 clips until the step holds every token (the DDP ranks
    # keep their gradients local until the step's last micro-batch), or, online, one batch of every
    # video's training clip per rank. One process then takes every clip per step and each of two
    # ranks half of them, so both runs see the same clips.
    total = json.loads((direction["val"] / "index.json").read_text())["totals"]["tokens"]
    args = ["train", "--max-steps", "6", "--lr", "3e-3", "--checkpoint-every", "3"]
    if mode == "one-batch-steps":
        args += [str(direction["val"]), "--max-tokens", "100000"]
    elif mode == "accumulated-steps":
        args += [str(direction["val"]), "--max-tokens", "300", "--tokens-per-step", str(total)]
    else:
        args += ["--online", str(direction["val_manifest"]), "--backend", "decord"]
        args += ["--num-frames", "8", "--frame-interval", "2", "--size", "64"]
    env = cpu_env()
    single, double = tmp_path / "single", tmp_path / "ddp"
    per_rank = ["--videos-per-batch", "32"] if mode == "online" else []
    subprocess.run(cli(*args, *per_rank, "--out", str(single)), check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rlt"]
    per_rank = ["--videos-per-batch", "16"] if mode == "online" else []
    command = [*torchrun, *args, *per_rank, "--out", str(double)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(single), losses(double)
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=1e-4)
    assert len(set(one)) == 6  # the weights moved at every step
    metrics = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    assert {m["clips"] for m in metrics} == {32 if mode == "online" else 64}  # both ranks' clips, every step
    if mode == "accumulated-steps":
        assert min(m["micro_batches"] for m in metrics) >= 2  # micro-batches per rank in every step
    ckpt = torch.load(find_checkpoint(double), weights_only=True)
    assert [s["rank"] for s in ckpt["loaders"]] == [0, 1]


def test_layer_decay_scales_and_no_decay_for_biases_and_norms() -> None:
    model = VideoViT(tiny(3, num_frames=4, image_size=32, patch_size=8))
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    by_name = {name: g for g in groups for name in g["names"]}
    depth = model.config.depth
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5 ** (depth - 1)
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == 0.5**depth
    assert by_name["patch_embed.weight"]["lr_scale"] == 0.5 ** (depth + 1)
    assert by_name["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    for name in ("blocks.0.attn.q_bias", "blocks.0.norm1.weight", "head.bias", "fc_norm.bias"):
        assert by_name[name]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_warmup_then_cosine() -> None:
    schedule = WarmupCosine(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [schedule(s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(10, 0.0) == 1.0
    assert schedule(10, 0.5) == pytest.approx(0.55)
    assert schedule(10, 1.0) == pytest.approx(0.1)
    assert schedule(10, 3.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_lr"):
        WarmupCosine(lr=1.0, min_lr=2.0, warmup_steps=0)


def test_a_plain_cuda_device_is_trained_on_with_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.cuda.set_device(torch.device("cuda")) raises: the run's device must name its GPU.
    from rlt.train._loop import _run_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _run_device("cuda", local_rank=0, world=1) == torch.device("cuda", 3)
    assert _run_device(torch.device("cuda"), local_rank=1, world=2) == torch.device("cuda", 1)
    assert _run_device("cuda:2", local_rank=1, world=2) == torch.device("cuda", 2)
    assert _run_device("cpu", local_rank=0, world=1) == torch.device("cpu")


def test_more_torchrun_processes_than_gpus_is_an_error_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rather than CUDA's "invalid device ordinal" on the rank past the last GPU, and the others waiting.
    from rlt.train._loop import _check_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"torchrun started 2 processes .* 1 GPU\(s\).*--nproc-per-node 1"):
        _check_device(torch.device("cuda", 0), None, local_world=2)  # rank 0 refuses too
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES="):
        _check_device(torch.device("cuda", 1), "cuda", local_world=2)
    with pytest.raises(ValueError, match=r"there is no cuda:3 on this machine"):
        _check_device(torch.device("cuda", 3), "cuda:3", local_world=1)
    _check_device(torch.device("cuda", 0), "cuda:0", local_world=2)  # both ranks on the GPU the caller named
    _check_device(torch.device("cuda", 0), None, local_world=1)
    _check_device(torch.device("cpu"), "cpu", local_world=8)  # gloo, however many
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="torch sees none"):
        _check_device(torch.device("cuda", 0), "cuda", local_world=1)


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path: Path, direction: dict[str, Path]) -> None:
    train(direction["val"], tmp_path / "run", TrainConfig(max_steps=2, max_tokens=512))
    path = find_checkpoint(tmp_path / "run")
    assert path.name == "step-00000002.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "model_config", "train_config", "data", "optimizer", "schedule", "loaders", "rng", "step"):
        assert key in state, key
    assert state["loaders"][0]["batches"] == 2 and state["schedule"]["last_lr"] > 0

    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=str(path)):
        evaluate(path, direction["val"])


def test_a_run_folder_is_not_overwritten_and_resume_refuses_other_options(
    tmp_path: Path, direction: dict[str, Path]
) -> None:
    run = tmp_path / "run"
    train(direction["val"], run, TrainConfig(max_steps=1, max_tokens=512))
    with pytest.raises(FileExistsError, match="resume"):
        train(direction["val"], run, TrainConfig(max_steps=1, max_tokens=512))
    with pytest.raises(ValueError, match="lr"):
        train(direction["val"], run, TrainConfig(max_steps=2, max_tokens=512, lr=0.5), resume=True)
    # More steps is fine: the run goes on from step 1.
    summary = train(direction["val"], run, TrainConfig(max_steps=2, max_tokens=512), resume=True)
    assert summary.steps == 2 and len(losses(run)) == 2


def test_a_run_folder_has_one_writer_and_a_run_dead_before_its_first_checkpoint_starts_again(
    tmp_path: Path, direction: dict[str, Path]
) -> None:
    from rlt._lock import OutputLockedError, lock_output

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(max_steps=1, max_tokens=512)
    with lock_output(run), pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        train(direction["val"], run, config)
    # What a run killed during its first steps leaves: its config, some metrics, a torn last line.
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    (run / ".config.json.tmp12345").write_text("")
    assert train(direction["val"], run, config).steps == 1
    assert len(losses(run)) == 1 and losses(run)[0] != 9.0
    assert sorted(p.name for p in run.iterdir()) == ["ckpt", "config.json", "metrics.jsonl"]


def test_online_training_from_raw_videos_and_eval_on_the_manifest(tmp_path: Path, direction: dict[str, Path]) -> None:
    manifest = direction["val_manifest"]
    sampling = ClipSampling(num_frames=8, frame_interval=2, size=64, crop=64)
    config = TrainConfig(epochs=1, videos_per_batch=8, backend="decord")
    summary = train(manifest, tmp_path / "run", config, online=True, sampling=sampling, rlt=RLTConfig())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary.steps == 4 and [m["clips"] for m in metrics] == [8] * 4  # one training clip per video
    assert all(0 < m["kept_ratio"] < 1 for m in metrics)
    result = evaluate(tmp_path / "run", manifest, clips_per_video=2, backend="decord")
    assert result.videos == 32 and result.clips == 64


def test_online_training_on_random_resized_crops_and_eval_at_their_size(
    tmp_path: Path, direction: dict[str, Path]
) -> None:
    manifest = direction["val_manifest"]
    sampling = ClipSampling(num_frames=8, frame_interval=2, size=64, crop=None)  # 64 x 96 frames, cropped to 48
    config = TrainConfig(epochs=1, videos_per_batch=8, backend="decord")
    with pytest.raises(ValueError, match="online=True"):
        train(direction["val"], tmp_path / "offline", config, frame_augment=FrameAugment(size=48))
    summary = train(manifest, tmp_path / "run", config, online=True, sampling=sampling, frame_augment=FrameAugment(48))
    assert summary.steps == 4
    model, spec, _ = load_model(tmp_path / "run")
    assert model.config.image_size == 48 and spec.augment == FrameAugment(48) and spec.sampling.crop is None
    # Eval resizes the short side to 48 and takes the centre, as VideoMAE's test does.
    result = evaluate(tmp_path / "run", manifest, clips_per_video=2, backend="decord")
    assert result.videos == 32 and result.clips == 64


def test_online_pipeline_shares_videos_between_ranks_and_resumes(direction: dict[str, Path]) -> None:
    manifest = direction["val_manifest"]
    sampling = ClipSampling(num_frames=8, frame_interval=2, size=64, crop=64, mode="train")

    def pipeline(rank: int) -> OnlinePipeline:
        return OnlinePipeline(
            manifest, sampling=sampling, backend="decord", videos_per_batch=4, shuffle=True, seed=3, rank=rank,
            world_size=2,
        )  # fmt: skip

    seen = [[v for b in pipeline(r) for v in b.videos] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 16 and not set(seen[0]) & set(seen[1])
    first = pipeline(0)
    first.set_epoch(1)
    order = [b.videos for b in first]
    assert order != [seen[0][i : i + 4] for i in range(0, 16, 4)]  # another epoch, another order
    resumed = pipeline(0)
    resumed.set_epoch(1)
    resumed.start_batch = 2
    assert [b.videos for b in resumed] == order[2:]


def test_train_and_eval_commands(tmp_path: Path, direction: dict[str, Path]) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(direction["val"]), "--out", str(run), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "steps" in result.output and (run / "config.json").exists()
    result = runner.invoke(app, ["eval", str(run), str(direction["val"]), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["videos"] == 32
    # The paper's training-free claim on the user's data: the same checkpoint on RLT and on every token.
    args = ["eval", str(run), str(direction["val_manifest"]), "--compare-dense", "--json", str(tmp_path / "d.json")]
    result = runner.invoke(app, [*args, "--spatial-crops", "3"])
    assert result.exit_code == 0 and "the dense throughput" in result.output, result.output
    compared = json.loads((tmp_path / "d.json").read_text())
    # 2 clips x 3 views of each of 32 videos, 64 x 64 squares of their 64 x 96 frames (8 frames).
    assert compared["rlt"]["clips"] == compared["dense"]["clips"] == 192
    assert compared["dense"]["tokens"] == 192 * 4 * 4 * 4 > compared["rlt"]["tokens"]
    both = runner.invoke(app, ["train", str(direction["val"]), "--online", str(direction["val_manifest"])])
    assert both.exit_code == 2 and "either" in both.output
    missing = runner.invoke(app, ["eval", str(tmp_path / "nothing"), str(direction["val"])])
    assert missing.exit_code == 2 and "no checkpoint" in missing.output


@pytest.mark.needs_cuda
def test_bf16_training_on_the_gpu_with_varlen_attention(tmp_path: Path, direction: dict[str, Path]) -> None:
    # epochs=None: the 32 held-out clips make 2 steps an epoch at this budget; the steps are what count.
    config = TrainConfig(epochs=None, max_steps=5, max_tokens=2048)
    summary = train(direction["val"], tmp_path / "run", config, device="cuda")
    found = losses(tmp_path / "run")
    assert summary.steps == 5 and all(torch.isfinite(torch.tensor(found)))
    scores = evaluate(tmp_path / "run", direction["val"], device="cuda")
    assert scores.videos == 32


def test_init_from_a_videomae_checkpoint_with_another_head(tmp_path: Path, direction: dict[str, Path]) -> None:
    # A VideoMAE-style fine-tuning checkpoint for 400 classes, as its authors save it ({"module": ...}),
    # with layer scale (gamma_1, gamma_2), which the tiny preset has not.
    source = VideoViT(tiny(400, num_frames=8, image_size=64, patch_size=16, layer_scale=True))
    conv = torch.nn.Conv3d(3, source.config.width, kernel_size=(2, 16, 16), stride=(2, 16, 16))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("patch_embed")}
    state["patch_embed.proj.weight"] = conv.weight.detach().clone()
    state["patch_embed.proj.bias"] = conv.bias.detach().clone()
    torch.save({"module": state}, tmp_path / "videomae.pth")

    config = TrainConfig(max_steps=1, max_tokens=512, lr=1e-9, min_lr=0.0)
    train(direction["val"], tmp_path / "run", config, init=tmp_path / "videomae.pth")
    model, spec, _ = load_model(tmp_path / "run")
    assert spec.num_classes == 2 and model.head.weight.shape == (2, source.config.width)
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"], atol=1e-6, rtol=0)
    expected = conv.weight.detach().permute(0, 2, 3, 4, 1).reshape(source.config.width, -1)
    torch.testing.assert_close(loaded["patch_embed.weight"], expected, atol=1e-6, rtol=0)
    # Resumed, the run goes on with the model of its checkpoint, not the preset's.
    assert model.config.layer_scale
    summary = train(direction["val"], tmp_path / "run", replace(config, max_steps=2), resume=True)
    assert summary.steps == 2 and load_model(tmp_path / "run")[0].config.layer_scale


def test_bad_data_and_checkpoints_are_errors_naming_the_file_not_tracebacks(
    tmp_path: Path, direction: dict[str, Path]
) -> None:
    import re
    import shutil

    runner = CliRunner()

    def fails(*args: str, naming: str) -> None:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        flat = re.sub(r"\s", "", result.output)
        assert "error:" in flat and re.sub(r"\s", "", naming) in flat, result.output

    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(direction["val"]), "--out", str(run), "--max-steps", "1"]).exit_code == 0
    # A shard whose tokens were altered after the job wrote them, in train and in eval.
    damaged = tmp_path / "damaged"
    shutil.copytree(direction["val"], damaged)
    tokens = next((damaged / "shards").glob("shard-*/tokens.arrow"))
    data = bytearray(tokens.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tokens.write_bytes(bytes(data))
    fails("train", str(damaged), "--out", str(tmp_path / "run2"), "--max-steps", "1", naming=str(tokens.parent))
    fails("eval", str(run), str(damaged), naming=str(tokens.parent))
    # A meta.json that is not JSON, and a plan.json that is not text.
    broken = tmp_path / "broken"
    shutil.copytree(direction["val"], broken)
    meta = next((broken / "shards").glob("shard-*/meta.json"))
    meta.write_text("[1, 2")
    fails("train", str(broken), "--out", str(tmp_path / "run3"), "--max-steps", "1", naming=str(meta))
    (broken / "plan.json").write_bytes(b"\x00\xff{")
    fails("tokenize", str(direction["val_manifest"]), str(broken), naming=str(broken / "plan.json"))
    # Checkpoints: bytes that are not one, and the weights of another model shape.
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    fails("train", str(direction["val"]), "--out", str(tmp_path / "run4"), "--init", str(garbage), naming=str(garbage))
    other = tmp_path / "run-s"
    fails("train", str(direction["val"]), "--out", str(other), "--preset", "vit_s", "--init", str(run), naming=str(run))


def test_a_run_is_bound_to_its_data(tmp_path: Path, direction: dict[str, Path]) -> None:
    # --resume on another dataset of the same geometry and classes is refused, naming what changed.
    run = tmp_path / "run"
    config = TrainConfig(max_steps=1, max_tokens=512)
    train(direction["val"], run, config)
    with pytest.raises(ValueError, match=r"the dataset \(its shards' checksums\)"):
        train(direction["train"], run, TrainConfig(max_steps=2, max_tokens=512), resume=True)
    # eval compares class names, not only how many there are.
    rows = direction["val_manifest"].read_text().splitlines()[1:5]
    datasets = {}
    for names in (("cat", "dog"), ("dog", "zebra")):
        manifest = direction["val_manifest"].with_name(f"named-{names[1]}.csv")
        lines = [f"{row.split(',')[0]},{names[k % 2]}" for k, row in enumerate(rows)]
        manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
        datasets[names] = tmp_path / names[1]
        tokenize_dataset(manifest, datasets[names], TokenizeConfig(sampling=SAMPLING, backend="decord"), workers=1)
    named = tmp_path / "named"
    train(datasets[("cat", "dog")], named, config)
    assert evaluate(named, datasets[("cat", "dog")]).videos == 4
    with pytest.raises(ValueError, match="names its classes dog, zebra, the checkpoint was trained on cat, dog"):
        evaluate(named, datasets[("dog", "zebra")])
