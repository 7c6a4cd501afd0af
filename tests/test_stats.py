"""`rlt-prep stats`: every figure recomputed from the raw arrays; the HTML report renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rlt import open_dataset
from rlt.cli import app
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples, synthetic_clip, write_video
from rlt.stats import dataset_stats, threshold_sweep, write_html
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from tests.chromium import chromium, render

SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-name labels, two short videos (padded clips) and one broken file, in Zarr."""
    import ray

    folder = tmp_path_factory.mktemp("stats")
    make_samples(folder, num_videos=6, num_frames=24, height=64, width=96)
    write_video(folder / "short_a.mp4", synthetic_clip(5, 64, 96, seed=7))
    write_video(folder / "short_b.mp4", synthetic_clip(9, 64, 96, seed=8, direction=1))
    (folder / "broken.mp4").write_bytes(b"not a video")
    rows = [
        (f"sample_00{i}_{'right' if i % 2 == 0 else 'left'}.mp4", "right" if i % 2 == 0 else "left") for i in range(6)
    ]
    rows += [("short_a.mp4", "right"), ("short_b.mp4", "left"), ("broken.mp4", "left")]
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, logging_level="ERROR")
    try:
        config = TokenizeConfig(storage="zarr", shard_size=3, sampling=SAMPLING, backend="decord")
        tokenize_dataset(manifest, folder / "out", config)
    finally:
        ray.shutdown()
    return folder / "out"


def test_every_figure_equals_a_recomputation_from_the_raw_arrays(dataset: Path) -> None:
    report = dataset_stats(dataset)
    records = list(open_dataset(dataset))
    g, grid = 4, 16  # 8 frames / tubelet 2; (64 / 16) ** 2 patches
    counts = np.array([r.num_tokens for r in records])
    assert (report["videos"], report["failed"], report["clips"]) == (9, 1, 16)
    assert report["videos_with_clips"] == len({r.video for r in records}) == 8
    assert report["tokens"]["kept"] == counts.sum() and report["tokens"]["dense"] == 16 * g * grid
    assert report["tokens"]["kept_ratio"] == pytest.approx(counts.sum() / (16 * g * grid))
    for p, value in report["tokens"]["per_clip_kept_ratio_percentiles"].items():
        assert value == pytest.approx(np.percentile(counts / (g * grid), int(p)))

    # Padding: short_a (5 frames) and short_b (9 frames) have clips of repeated last frames.
    padded = np.stack([r.padded for r in records])
    kept_padded = sum(int(r.padded[r.positions[:, 0]].sum()) for r in records)
    assert report["padding"]["padded_tubelets"] == padded.sum() > 0
    assert report["padding"]["clips_with_padding"] == padded.any(axis=1).sum()
    assert report["padding"]["kept_in_padded_tubelets"] == kept_padded
    assert report["padding"]["real_kept"] == counts.sum() - kept_padded
    assert report["padding"]["real_dense"] == (16 * g - padded.sum()) * grid

    for name in ("left", "right"):
        mine = [r for r in records if (r.label == 0) == (name == "left")]
        assert report["per_class"][name]["clips"] == len(mine)
        assert report["per_class"][name]["kept"] == sum(r.num_tokens for r in mine)

    lengths = np.concatenate([r.lengths for r in records])
    assert report["run_lengths"] == {str(k): int((lengths == k).sum()) for k in range(1, g + 1)}
    for t in range(g):
        real = [r for r in records if not r.padded[t]]
        kept = sum(int((r.positions[:, 0] == t).sum()) for r in real)
        assert report["keep_rate_per_tubelet"][t] == pytest.approx(kept / (len(real) * grid))
    assert report["keep_rate_per_tubelet"][0] == 1.0

    index = json.loads((dataset / "index.json").read_text())
    assert report["disk"]["bytes_per_clip"] == pytest.approx(index["totals"]["bytes"] / 16)
    assert report["disk"]["compression"] == pytest.approx(16 * 8 * 64 * 64 * 3 / index["totals"]["bytes"])

    def flops(n: np.ndarray) -> float:  # per layer: QKV, projection, 4x MLP, and QK^T, AV
        d = 768
        return float(12 * sum(2 * (3 * k * d * d + k * d * d + 8 * k * d * d) + 2 * 2 * k * k * d for k in n))

    assert report["compute"]["predicted_speedup"] == pytest.approx(flops(np.full(16, g * grid)) / flops(counts))


def test_stats_read_no_pixels(tmp_path: Path, dataset: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    for tokens in (copy / "shards").glob("*/tokens"):
        shutil.rmtree(tokens)  # the pixels are gone; the report does not need them
    report = dataset_stats(copy)
    assert report["tokens"] == dataset_stats(dataset)["tokens"]


def test_cli_writes_json_and_html(tmp_path: Path, dataset: Path) -> None:
    result = CliRunner().invoke(
        app, ["stats", str(dataset), "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    assert "predicted speed-up" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == 1
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 4
    assert CliRunner().invoke(app, ["stats"]).exit_code == 2


def test_html_report_renders_in_headless_chromium(tmp_path: Path, dataset: Path) -> None:
    chromium()
    page = write_html(dataset_stats(dataset), tmp_path / "report.html")
    dom = render(page.as_uri(), tmp_path / "profile")
    assert 'data-plots-loaded="4/4"' in dom
    assert "Predicted speed-up" in dom


def test_threshold_sweep_on_raw_videos(dataset: Path) -> None:
    manifest = dataset.parent / "manifest.csv"
    report = threshold_sweep(
        manifest, thresholds=(0.02, 0.1, 0.5), sample=None, target_reduction=0.6, sampling=SAMPLING, backend="decord"
    )
    assert report["videos"] == 9 and len(report["failed"]) == 1 and report["clips"] == 16
    values = list(report["reduction"].values())
    assert values == sorted(values) and values[0] > 0
    found = report["threshold_for_target"]
    check = threshold_sweep(manifest, thresholds=(found,), sample=None, sampling=SAMPLING, backend="decord")
    assert check["reduction"][str(found)] >= 0.6
