"""The online pipeline: manifests, tokenize_video, batches, skipping broken videos."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlt import VideoDecodeError
from rlt.pipeline import (
    ClipSampling,
    FrameAugment,
    OnlinePipeline,
    RLTConfig,
    read_manifest,
    resize_and_crop,
    tokenize_video,
)
from rlt.samples import read_frame_index
from tests.conftest import DEVICES

SMALL = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)


def write_manifest(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "manifest.csv"
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_tokenize_video_cuts_the_sampled_frames(videos: dict[str, Path]) -> None:
    result = tokenize_video(videos["h264"], sampling=SMALL, backend="decord")
    assert result.num_clips == 2
    assert result.num_clips == 2 and result.keep.shape == (2, 4, 4, 4)
    # 40 frames, window 15: clips start at 0 and 25.
    assert result.frame_indices[0].tolist() == list(range(0, 16, 2))
    assert result.frame_indices[1].tolist() == list(range(25, 41, 2))[:8]
    assert not result.padded.any()


def test_frames_reach_rlt_in_clip_order(videos: dict[str, Path]) -> None:
    # At native size the barcode survives: unpack the tokens and read each frame's index back.
    native = ClipSampling(num_frames=4, frame_interval=3, clips_per_video=2, size=None, crop=None)
    result = tokenize_video(videos["vp9"], sampling=native, rlt=RLTConfig(drop_policy="none"), backend="dali-cpu")
    frames = result.unpack()
    for indices, clip_frames in zip(result.frame_indices, frames, strict=True):
        assert [read_frame_index(f) for f in clip_frames.numpy()] == indices.tolist()


def test_short_video_marks_padded_tubelets(videos: dict[str, Path]) -> None:
    result = tokenize_video(videos["one_frame"], sampling=SMALL, backend="decord")
    # One real frame: tubelet 0 holds it and a repeat; the rest are padding and dropped.
    assert result.padded[:, 0].logical_not().all() and result.padded[:, 1:].all()
    assert not result.keep[:, 1:].any()


def test_video_smaller_than_the_crop_is_resized_up(videos: dict[str, Path]) -> None:
    sampling = ClipSampling(num_frames=4, frame_interval=1, size=128, crop=128)
    result = tokenize_video(videos["small"], sampling=sampling, backend="decord")  # 64x96 source
    assert result.keep.shape == (1, 2, 8, 8)


def test_pipeline_yields_every_clip_and_records_broken_videos(tmp_path: Path, videos: dict[str, Path]) -> None:
    good = ["h264", "vp9", "mjpeg", "odd_size", "gray"]
    rows = [(str(videos[k]), str(i % 2)) for i, k in enumerate(good)]
    rows.insert(2, (str(videos["random"]), "1"))
    rows.append((str(videos["missing"]), "0"))
    pipeline = OnlinePipeline(
        write_manifest(tmp_path, rows), sampling=SMALL, backend="decord", videos_per_batch=2, prefetch=2
    )
    seen = []
    for batch in pipeline:
        assert batch.num_clips == len(batch.videos) == len(batch.clip_ids) == batch.labels.shape[0]
        assert batch.frame_indices.shape == (len(batch.videos), 8) and batch.padded.shape == (len(batch.videos), 4)
        seen += list(zip(batch.videos, batch.clip_ids, batch.labels.tolist(), strict=True))
    expected = [(str(videos[k]), c, i % 2) for i, k in enumerate(good) for c in (0, 1)]
    assert seen == expected
    assert [e.path for e in pipeline.errors] == [str(videos["random"]), str(videos["missing"])]
    assert "no such file" in pipeline.errors[1].reason


def test_pipeline_raise_policy_stops_at_the_broken_video(tmp_path: Path, videos: dict[str, Path]) -> None:
    rows = [(str(videos["h264"]), "0"), (str(videos["text"]), "1")]
    pipeline = OnlinePipeline(write_manifest(tmp_path, rows), sampling=SMALL, backend="decord", on_error="raise")
    with pytest.raises(VideoDecodeError, match=r"text\.mp4: not a readable video"):
        list(pipeline)


def test_pipeline_matches_tokenize_video(tmp_path: Path, videos: dict[str, Path]) -> None:
    rows = [(str(videos["h264"]), "0"), (str(videos["mjpeg"]), "1")]
    (batch,) = list(OnlinePipeline(write_manifest(tmp_path, rows), sampling=SMALL, backend="decord"))
    for k, kind in enumerate(("h264", "mjpeg")):
        alone = tokenize_video(videos[kind], sampling=SMALL, backend="decord")
        for clip in range(2):
            a, b = batch.clip(2 * k + clip), alone.clip(clip)
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)


@pytest.mark.parametrize("device", DEVICES)
def test_tokenizes_on_the_requested_device(videos: dict[str, Path], device: str) -> None:
    result = tokenize_video(videos["h264"], sampling=SMALL, backend="decord", device=device)
    assert result.tokens.device.type == device
    cpu = tokenize_video(videos["h264"], sampling=SMALL, backend="decord")
    # The GPU resize may round differently from the CPU's exact uint8 path; the shapes agree.
    assert result.keep.shape == cpu.keep.shape


@pytest.mark.needs_cuda
def test_dali_gpu_pipeline_stays_on_the_gpu(tmp_path: Path, videos: dict[str, Path]) -> None:
    rows = [(str(videos["h264"]), "0"), (str(videos["vp9"]), "1"), (str(videos["random"]), "0")]
    pipeline = OnlinePipeline(write_manifest(tmp_path, rows), sampling=SMALL, backend="dali")
    batches = list(pipeline)
    assert all(b.tokens.device.type == "cuda" for b in batches)
    assert sum(b.num_clips for b in batches) == 4
    assert [e.path for e in pipeline.errors] == [str(videos["random"])]


def test_resize_and_crop() -> None:
    frames = torch.zeros(2, 120, 160, 3, dtype=torch.uint8)
    frames[:, :, 80:] = 200  # right half bright
    out = resize_and_crop(frames, size=60, crop=60)
    assert out.shape == (2, 60, 60, 3) and out.is_contiguous()
    # Short side 120 -> 60: width 80, centre crop columns 10..70; the bright half starts at 40 - 10.
    assert out[0, 30, 25, 0].item() == 0 and out[0, 30, 35, 0].item() == 200
    assert resize_and_crop(frames, size=None, crop=None).shape == frames.shape
    assert resize_and_crop(frames, size=None, crop=100).shape == (2, 100, 100, 3)


# Every core busy, decisions per video, DALI's graph against the CPU path ---------------------------


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.videos == y.videos and x.clip_ids == y.clip_ids and torch.equal(x.labels, y.labels)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.lengths, y.lengths)
        assert torch.equal(x.positions, y.positions)


def test_a_pool_of_workers_keeps_order_determinism_and_exact_resume(tmp_path: Path, videos: dict[str, Path]) -> None:
    kinds = ["h264", "vp9", "mjpeg", "odd_size", "gray", "h264_vfr", "vp9_vfr", "small"]
    manifest = write_manifest(tmp_path, [(str(videos[k]), str(i % 3)) for i, k in enumerate(kinds)])
    options = {"sampling": SMALL, "backend": "decord", "videos_per_batch": 2, "shuffle": True, "seed": 5}
    one = list(OnlinePipeline(manifest, workers=1, **options))  # type: ignore[arg-type]
    pool = OnlinePipeline(manifest, workers=3, prefetch=1, **options)  # type: ignore[arg-type]
    assert_same_batches(one, list(pool))

    # Stop after two groups, then resume from the state: the rest matches, nothing twice.
    stopped = OnlinePipeline(manifest, workers=3, **options)  # type: ignore[arg-type]
    first = []
    for batch in stopped:
        first.append(batch)
        if len(first) == 2:
            break
    resumed = OnlinePipeline(manifest, workers=2, **options)  # type: ignore[arg-type]
    resumed.load_state_dict(stopped.state_dict())
    assert_same_batches(first + list(resumed), one)


def test_workers_default_to_the_usable_cores(tmp_path: Path, videos: dict[str, Path]) -> None:
    import os

    pipeline = OnlinePipeline(write_manifest(tmp_path, [(str(videos["h264"]), "0")]), backend="decord")
    assert pipeline.workers == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="workers must be >= 1"):
        OnlinePipeline(write_manifest(tmp_path, [(str(videos["h264"]), "0")]), backend="decord", workers=0)


def test_a_chain_decides_per_video_in_the_online_pipeline(tmp_path: Path, videos: dict[str, Path]) -> None:
    # dali-cpu stands in for NVDEC here: VP9 and MJPEG go to DALI, H.264 to decord.
    kinds = ["h264", "vp9", "mjpeg", "odd_size", "vp9_vfr"]
    manifest = write_manifest(tmp_path, [(str(videos[k]), "0") for k in kinds])
    (batch,) = list(OnlinePipeline(manifest, sampling=SMALL, backend="dali-cpu,decord", videos_per_batch=8))
    assert list(batch.videos) == [str(videos[k]) for k in kinds for _ in (0, 1)]
    for k, kind in enumerate(kinds):
        alone = "decord" if kind in ("h264", "odd_size") else "dali-cpu"
        tokens = tokenize_video(videos[kind], sampling=SMALL, backend=alone)
        for clip in range(2):
            assert torch.equal(batch.clip(2 * k + clip).tokens, tokens.clip(clip).tokens), kind


def test_dali_keep_masks_agree_with_the_decord_path(tmp_path: Path) -> None:
    from rlt.samples import make_samples

    manifest = make_samples(tmp_path, num_videos=4, num_frames=48, height=180, width=320, codec="vp9")
    sampling = ClipSampling(num_frames=16, frame_interval=2, clips_per_video=2, size=112, crop=112)
    agree = total = kept = 0
    for row in read_manifest(manifest).rows:
        dali = tokenize_video(row.path, sampling=sampling, backend="dali-cpu").keep
        decord = tokenize_video(row.path, sampling=sampling, backend="decord").keep
        # Tubelet 0 is always kept: count the decisions RLT makes.
        agree += int((dali[:, 1:] == decord[:, 1:]).sum())
        total += dali[:, 1:].numel()
        kept += int(decord[:, 1:].sum())
    assert 0 < kept < total  # the clips have both static and moving patches
    assert agree / total >= 0.97


@pytest.mark.needs_cuda
@pytest.mark.parametrize(
    ("drop_policy", "compare"), [("rlt", "previous"), ("rlt", "run_start"), ("random", "previous")]
)
def test_decode_to_rlt_has_one_host_synchronisation(
    tmp_path: Path, videos: dict[str, Path], drop_policy: str, compare: str
) -> None:
    import warnings

    from rlt.pipeline import decode_clips, tokenize_clips

    (decoded,) = decode_clips([("v", videos["h264"])], sampling=SMALL, backend="dali")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenize_clips([decoded], RLTConfig(drop_policy=drop_policy, compare=compare))  # type: ignore[arg-type]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # keep.nonzero() sizes the packed output; nothing else waits for the GPU.
    assert len(syncs) == 1, [str(w.message) for w in syncs]


@pytest.mark.needs_cuda
def test_cpu_decoded_clips_reach_the_gpu_like_the_cpu_path(tmp_path: Path, videos: dict[str, Path]) -> None:
    manifest = write_manifest(tmp_path, [(str(videos[k]), "0") for k in ("h264", "vp9", "mjpeg")])
    on_gpu = list(OnlinePipeline(manifest, sampling=SMALL, backend="decord", device="cuda", workers=2))
    on_cpu = list(OnlinePipeline(manifest, sampling=SMALL, backend="decord", device="cpu", workers=2))
    assert all(b.tokens.device.type == "cuda" for b in on_gpu)
    assert_same_batches([_to_cpu(b) for b in on_gpu], on_cpu)


def _to_cpu(batch):  # type: ignore[no-untyped-def]
    return batch.to("cpu")


def test_a_resumed_pass_skips_its_done_groups_only_once(tmp_path: Path, videos: dict[str, Path]) -> None:
    manifest = write_manifest(tmp_path, [(str(videos[k]), "0") for k in ("h264", "vp9", "mjpeg", "gray")])
    pipeline = OnlinePipeline(manifest, sampling=SMALL, backend="decord", videos_per_batch=1)
    pipeline.load_state_dict({**pipeline.state_dict(), "batches": 3})
    assert len(list(pipeline)) == 1 and pipeline.batches_done == 4
    assert len(list(pipeline)) == 4  # the next pass starts from its first group


def test_pipeline_augments_pixels_before_rlt_anew_each_epoch(tmp_path: Path, videos: dict[str, Path]) -> None:
    # Decoded uncropped at a short side of 64 (the videos differ in shape), cut to 48 x 48 windows.
    manifest = write_manifest(tmp_path, [(str(videos[k]), "0") for k in ("h264", "odd_size")])
    options = {"sampling": replace(SMALL, crop=None), "backend": "decord", "augment": FrameAugment(size=48)}
    pipeline = OnlinePipeline(manifest, **options)  # type: ignore[arg-type]
    (first,) = list(pipeline)
    assert first.keep.shape == (4, 4, 3, 3)
    (again,) = list(OnlinePipeline(manifest, **options))  # type: ignore[arg-type]
    assert torch.equal(again.tokens, first.tokens)
    pipeline.set_epoch(1)
    (other,) = list(pipeline)
    assert not torch.equal(other.keep, first.keep) or not torch.equal(other.tokens, first.tokens)
