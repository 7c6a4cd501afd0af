"""Watch mode (`rlt-prep serve DATASET --watch SOURCE`): new videos become new shards and a new index
generation, committed shards are never rewritten, failures are reported once and retried when
asked, a following loader takes new shards in at epoch boundaries and resumes exactly, and the
server's lifecycle: SIGTERM drains, a restart resumes, a second server on the DATASET is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlt.dataset import SHARDS, open_dataset, read_index
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.serve import Client
from rlt.serve._watch import Source, Watcher
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset
from rlt.tokenize_offline._append import GrowingDataset
from rlt.tokenize_offline._executor import Executor
from rlt.tokenize_offline._output import Output
from rlt.train import TokenLoader, TokenStream
from tests.chromium import render
from tests.s3 import S3
from tests.test_serve import _free_port
from tests.test_serve_page import _text

SMALL = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=1, size=64, crop=64)
CONFIG = TokenizeConfig(shard_size=2, sampling=SMALL, backend="decord")
CLI_OPTIONS = ["--num-frames", "8", "--frame-interval", "2", "--size", "64", "--backend", "decord", "--shard-size", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("samples")
    make_samples(folder, num_videos=8, num_frames=16, height=64, width=96)
    return sorted(folder.glob("*.mp4"))


class Watching:
    """A watcher over a folder, run round by round in this process (one worker: no Ray)."""

    def __init__(self, source: Path, out: Path, *, workers: int = 1) -> None:
        self.executor = Executor(CONFIG, address=None, workers=workers, gpus_per_task=0, videos_per_batch=8)
        self.executor.__enter__()
        self.dataset = GrowingDataset(Output(out), CONFIG, self.executor)
        self.watcher = Watcher(self.dataset, Source(str(source)), poll_s=0.05)

    def settle(self) -> None:
        """Two rounds: a file is taken once two scans in a row see it the same."""
        self.watcher.round()
        self.watcher.round()

    def status(self) -> dict[str, Any]:
        return self.watcher.status()


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / SHARDS).rglob("*")) if p.is_file()}


def test_new_videos_become_new_shards_and_generations_and_committed_shards_never_change(
    tmp_path: Path, videos: list[Path]
) -> None:
    source, out = tmp_path / "incoming", tmp_path / "ds"
    (source / "jump").mkdir(parents=True)
    (source / "run").mkdir()
    shutil.copy(videos[0], source / "jump" / "a.mp4")
    shutil.copy(videos[1], source / "run" / "b.mp4")
    (source / "run" / ".c.mp4").write_bytes(videos[2].read_bytes())  # hidden: never taken
    (source / "run" / "d.mp4.part").write_bytes(videos[3].read_bytes())  # a download under way
    (source / "notes.txt").write_text("not a video")
    w = Watching(source, out)

    w.watcher.round()
    assert not (out / "index.json").exists(), "a file is taken only once two scans see it the same"
    w.watcher.round()
    first = read_index(out)
    assert first.generation == 1 and first.classes == ("jump", "run") and first.totals.videos == 2
    before = shard_bytes(out)

    # A file still growing is not taken; once it stops, it is.
    growing = source / "jump" / "e.mp4"
    data = videos[4].read_bytes()
    growing.write_bytes(data[: len(data) // 2])
    w.watcher.round()
    with growing.open("ab") as f:
        f.write(data[len(data) // 2 :])
    w.watcher.round()
    assert read_index(out).generation == 1
    w.watcher.round()
    assert read_index(out).generation == 2
    shutil.copy(videos[5], source / "walk.mp4")  # directly in SOURCE: class index 0, refused among names
    (source / "new").mkdir()
    shutil.copy(videos[6], source / "new" / "f.mp4")  # a class that appears later is numbered after the others
    w.settle()
    second = read_index(out)
    assert second.generation == 3
    assert second.shards[: len(first.shards)] == first.shards
    assert second.classes == ("jump", "run", "new") and second.totals.videos == 4
    after = shard_bytes(out)
    assert {k: after[k] for k in before} == before, "a committed shard was rewritten"
    labels = {r.video: r.label for r in open_dataset(out, columns=["video", "label"])}
    assert labels == {"jump/a.mp4": 0, "run/b.mp4": 1, "jump/e.mp4": 0, "new/f.mp4": 2}
    errors = w.status()["errors"]
    assert [e["video"] for e in errors] == ["walk.mp4"] and "class index 0" in errors[0]["reason"]

    # Nothing new: no new generation, and the refused video is not reported again.
    w.settle()
    assert read_index(out).generation == 3 and len(w.status()["errors"]) == 1
    status = w.status()
    assert (status["videos_done"], status["videos_failed"], status["shards"]) == (4, 0, len(second.shards))


def test_a_failed_video_is_reported_once_and_retried_only_when_asked_into_a_new_shard(
    tmp_path: Path, videos: list[Path]
) -> None:
    source, out = tmp_path / "incoming", tmp_path / "ds"
    source.mkdir()
    shutil.copy(videos[0], source / "a.mp4")
    (source / "broken.mp4").write_bytes(b"not a video at all")
    w = Watching(source, out)
    w.settle()
    w.settle()
    index = read_index(out)
    assert index.totals.failed == 1 and index.generation == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["video"] for e in errors] == ["broken.mp4"]
    assert [e["video"] for e in w.status()["errors"]] == ["broken.mp4"]
    before = shard_bytes(out)

    # Fixed, and asked for: tried again in a new shard; the old shard stays as it was.
    shutil.copy(videos[1], source / "broken.mp4")
    w.watcher.request_retry()
    w.watcher.round()
    retried = read_index(out)
    assert retried.generation == 2 and len(retried.shards) == len(index.shards) + 1
    assert {k: v for k, v in shard_bytes(out).items() if k in before} == before
    assert (out / "errors.jsonl").read_text() == "", "the last attempt succeeded"
    status = w.status()
    assert (status["videos_done"], status["videos_failed"]) == (2, 0)
    assert sorted(r.video for r in open_dataset(out, columns=["video"])) == ["a.mp4", "broken.mp4"]


def test_a_manifest_source_takes_appended_rows_and_survives_a_torn_write(tmp_path: Path, videos: list[Path]) -> None:
    manifest, out = tmp_path / "manifest.csv", tmp_path / "ds"
    manifest.write_text(f"path,label\n{videos[0]},3\n")
    w = Watching(manifest, out)
    w.settle()
    assert read_index(out).totals.videos == 1
    manifest.write_text(f"path,label\n{videos[0]},3\n{videos[1]},oops-a-name\n")  # a slip, or half written
    w.settle()
    assert "cannot be read now" in w.status()["errors"][-1]["reason"]
    manifest.write_text(f"path,label\n{videos[0]},3\n{videos[1]},5\n")
    w.settle()
    index = read_index(out)
    assert index.generation == 2 and index.totals.videos == 2 and index.classes is None
    # A tokenized file that changes afterwards is reported, and the dataset keeps the first version.
    os.utime(videos[1], ns=(time.time_ns(), time.time_ns()))
    w.settle()
    assert "changed after it was tokenized" in w.status()["errors"][-1]["reason"]
    assert read_index(out).generation == 2


def test_an_object_store_prefix_is_watched_into_a_dataset_at_a_url(tmp_path: Path, videos: list[Path], s3: S3) -> None:
    bucket = s3.bucket()
    incoming, out = f"{bucket}/incoming", f"{bucket}/dataset"
    s3.put(f"{incoming}/cat/a.mp4", videos[0].read_bytes())
    s3.put(f"{incoming}/.hidden/b.mp4", videos[1].read_bytes())
    executor = Executor(CONFIG, address=None, workers=1, gpus_per_task=0, videos_per_batch=8)
    with executor:
        dataset = GrowingDataset(Output(out), CONFIG, executor)
        watcher = Watcher(dataset, Source(incoming), poll_s=0.05)
        watcher.round()
        watcher.round()
        s3.put(f"{incoming}/dog/c.mp4", videos[2].read_bytes())
        watcher.round()
        watcher.round()
    index = read_index(out)
    assert index.generation == 2 and index.classes == ("cat", "dog") and index.totals.videos == 2
    assert {r.video: r.label for r in open_dataset(out, columns=["video", "label"])} == {"cat/a.mp4": 0, "dog/c.mp4": 1}
    assert "index.json" in s3.objects(out)


def test_the_grown_dataset_holds_what_one_tokenize_run_makes(tmp_path: Path, videos: list[Path]) -> None:
    source, out = tmp_path / "incoming", tmp_path / "ds"
    source.mkdir()
    w = Watching(source, out)
    for video in videos[:5]:
        shutil.copy(video, source / video.name)
        w.settle()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{source / v.name},0\n" for v in videos[:5]))
    tokenize_dataset(manifest, tmp_path / "once", CONFIG, workers=1)
    grown, once = open_dataset(out), open_dataset(tmp_path / "once")
    assert read_index(out).generation == 5 and len(grown) == len(once)
    by_video = {grown[i].video: grown[i] for i in range(len(grown))}
    for i in range(len(once)):
        theirs = once[i]
        mine = by_video[Path(theirs.video).name]
        np.testing.assert_array_equal(mine.tokens, theirs.tokens)
        np.testing.assert_array_equal(mine.positions, theirs.positions)
        np.testing.assert_array_equal(mine.lengths, theirs.lengths)


def test_a_following_loader_takes_new_shards_at_the_epoch_boundary_and_resumes_exactly(
    tmp_path: Path, videos: list[Path]
) -> None:
    source, out = tmp_path / "incoming", tmp_path / "ds"
    source.mkdir()
    for video in videos[:3]:
        shutil.copy(video, source / video.name)
    w = Watching(source, out)
    w.settle()

    def loader() -> TokenLoader:
        return TokenLoader(TokenStream(out, max_tokens=64, shuffle_buffer=4, seed=1, follow=True))

    follower = loader()
    fixed = TokenLoader(TokenStream(out, max_tokens=64, shuffle_buffer=4, seed=1))
    clips = lambda batches: sum(b.num_clips for b in batches)  # noqa: E731
    assert clips(list(follower)) == clips(list(fixed)) == 3

    for video in videos[3:6]:
        shutil.copy(video, source / video.name)
    w.settle()
    assert read_index(out).generation == 2
    # Epoch 1 takes the new shards in (the fixed loader keeps the dataset it opened).
    assert clips(list(fixed)) == 3
    epoch1 = iter(follower)
    seen = [next(epoch1) for _ in range(2)]
    state = follower.state_dict()
    rest = list(epoch1)
    assert clips(seen + rest) == 6 and state["shards"] == len(read_index(out).shards)

    # More shards arrive; a loader resumed from the mid-epoch state reads the same remaining batches,
    # over the epoch's shards, and takes the newest in at its next epoch.
    for video in videos[6:8]:
        shutil.copy(video, source / video.name)
    w.settle()
    assert read_index(out).generation == 3
    resumed = loader()
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest)
    for a, b in zip(again, rest, strict=True):
        assert a.videos == b.videos
        assert np.array_equal(a.tokens.numpy(), b.tokens.numpy())
    assert clips(list(resumed)) == 8

    # A loader that does not follow refuses a state made over fewer shards than it has.
    with pytest.raises(ValueError, match="follow=True"):
        TokenLoader(TokenStream(out, max_tokens=64, shuffle_buffer=4, seed=1)).load_state_dict(state)


def test_stop_commits_or_discards_running_shards_and_a_restart_finishes_them(
    tmp_path: Path, videos: list[Path]
) -> None:
    source, out = tmp_path / "incoming", tmp_path / "ds"
    source.mkdir()
    for video in videos:
        shutil.copy(video, source / video.name)
    w = Watching(source, out)
    w.watcher.round()  # the first scan sees them; the next round plans and runs them
    w.watcher.stop()  # before the round that would run them, as SIGTERM may come
    w.watcher.round()
    assert not (out / "index.json").exists() and not list((out / SHARDS).glob("shard-*"))

    # A watcher stopped while its round runs: the running shards commit, no other starts.
    w = Watching(source, out)
    w.watcher.round()  # a new watcher's first scan
    plan_shards: list[str] = []
    original = w.dataset.run

    def run_then_stop(on_shard: Any = None) -> int:
        def first_commits_then_stop(meta: Any) -> None:
            w.watcher.stop()
            plan_shards.append(meta.name)

        return original(first_commits_then_stop)

    w.dataset.run = run_then_stop  # type: ignore[method-assign]
    w.watcher.round()
    index = read_index(out)
    # The shard that committed, and the one the worker had already started: no other.
    planned = len(w.dataset.shards())
    assert plan_shards[0] == "shard-00000" and 1 <= len(index.shards) <= 2 < planned == 4
    assert [s.name for s in index.shards] == sorted(p.name for p in (out / SHARDS).glob("shard-*"))
    assert len(w.dataset.pending()) == planned - len(index.shards)
    # A restart runs the shards the stopped run planned, before anything new.
    w = Watching(source, out)
    w.watcher.round()
    final = read_index(out)
    assert final.shards[0] == index.shards[0] and final.totals.videos == len(videos)


def test_the_cli_needs_both_dataset_and_watch(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rlt.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "--watch SOURCE" in result.output
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "ds"), "--watch", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


# The server, as a process: SIGTERM drains, a restart resumes, a second server is refused -------------------


def _get(url: str, timeout: float = 10) -> tuple[int, Any]:
    """The status and JSON body (None for another body: Serve's own 404 while it starts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    try:
        return code, json.loads(body)
    except ValueError:
        return code, None


def _serve(out: Path, source: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "rlt", "serve", str(out), "--watch", str(source), "--poll", "0.3"]
    return subprocess.Popen(
        [*command, "--port", str(port), *CLI_OPTIONS],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )


def _wait_for(what: Any, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = what()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(message)


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "serve.log"
    yield log
    if log.exists():
        print(log.read_text()[-5000:])


def test_the_server_watches_drains_on_sigterm_refuses_a_second_and_resumes(
    tmp_path: Path, videos: list[Path], server_log: Path
) -> None:
    pytest.importorskip("ray.serve")
    source, out = tmp_path / "incoming", tmp_path / "ds"
    source.mkdir()
    for video in videos[:2]:
        shutil.copy(video, source / video.name)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(out, source, port, server_log)
    try:
        status = _wait_for(
            lambda: (s := _get(f"{url}/v1/status")[1]) and s["watch"] and s["watch"]["generation"] >= 1 and s,
            120,
            "the server did not publish a first generation",
        )
        assert status["watch"]["videos_done"] == 2 and status["draining"] is False
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert "rlt_serve_watch_generation 1" in metrics
        # The status page shows the watch job's numbers.
        dom = render(f"{url}/", tmp_path / "profile", budget_ms=3000)
        assert (_text(dom, "watch-generation"), _text(dom, "watch-videos_done")) == ("1", "2")
        if save := os.environ.get("RLT_PREP_SAVE_WATCH_SCREENSHOT"):  # docs/serve-status-page-watch.png
            render(f"{url}/", tmp_path / "profile", budget_ms=3000, screenshot=Path(save), window=(1200, 1100))

        # A second server on the same DATASET is refused, before it starts anything.
        second = subprocess.run(
            [sys.executable, "-m", "rlt", "serve", str(out), "--watch", str(source), "--port", str(_free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and "being written by another run" in second.stdout + second.stderr

        # POST /v1/retry is taken (nothing failed: nothing changes).
        Client(url).retry()

        # New videos, then SIGTERM: the server drains and exits 0, leaving a dataset whose index
        # lists committed shards only.
        for video in videos[2:8]:
            shutil.copy(video, source / video.name)
        time.sleep(0.8)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=90) == 0
    finally:
        if server.poll() is None:
            server.kill()
    index = read_index(out)
    assert not (out / ".rlt-lock").exists()
    committed = sorted(p.name for p in (out / SHARDS).glob("shard-*"))
    assert [s.name for s in index.shards] == committed[: len(index.shards)]
    assert len(list(open_dataset(out))) == index.totals.clips  # every listed shard reads, checksums checked

    # A restart resumes: every video ends in the dataset (one more came while it was down), the
    # shards published before first.
    shutil.copy(videos[0], source / "while-down.mp4")
    restarted = _serve(out, source, port, server_log)
    try:
        _wait_for(
            lambda: (s := _get(f"{url}/v1/status")[1]) and s["watch"] and s["watch"]["videos_done"] == 9,
            120,
            "the restarted server did not finish the videos",
        )
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=90) == 0
    finally:
        if restarted.poll() is None:
            restarted.kill()
    final = read_index(out)
    assert final.shards[: len(index.shards)] == index.shards and final.totals.videos == 9
    assert final.generation > index.generation


def test_draining_refuses_new_work_with_503_and_answers_the_requests_in_flight(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from concurrent.futures import ThreadPoolExecutor

    from rlt.serve import ServeConfig, start

    long_video = make_samples(tmp_path / "long", num_videos=1, num_frames=384).parent / "sample_000_right.mp4"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    try:
        with start(ServeConfig(port=_free_port())) as server, ThreadPoolExecutor(1) as pool:
            client = Client(server.url, timeout=120)
            assert _get(f"{server.url}/healthz") == (200, {"status": "ok"})
            answer = pool.submit(client.tokenize, long_video, clips_per_video=8)
            deadline = time.monotonic() + 30
            while client.status()["videos_queued"] != 1 and not answer.done():
                assert time.monotonic() < deadline, "the request never reached the replica"
                time.sleep(0.02)
            # SIGTERM's first step: new work gets 503 (within the replicas' 0.5 s cache of the flag).
            ray.get(server.control.drain.remote())
            time.sleep(0.6)
            assert _get(f"{server.url}/healthz") == (503, {"status": "draining"})
            request = urllib.request.Request(f"{server.url}/v1/tokenize", data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(request, timeout=10)
            assert e.value.code == 503 and "shutting down" in e.value.read().decode()
            assert _get(f"{server.url}/v1/status")[1]["draining"] is True
            # Then stopping answers the request in flight, in full.
            in_flight = not answer.done()
            server.stop()
            assert answer.result(timeout=120).num_clips == 8
        if not in_flight:  # a machine fast enough to answer before the server could be stopped
            pytest.skip("the request was answered before the server was stopped: the drain of requests is untested")
    finally:
        ray.shutdown()
