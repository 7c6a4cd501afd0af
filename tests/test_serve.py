"""`rlt-prep serve` on loopback: responses equal `tokenize_video` bit for bit, bad requests get their
4xx and leave the server healthy, and the counters and metrics say what happened."""

from __future__ import annotations

import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlt.cli import app
from rlt.pipeline import ClipSampling, PackedTokens, RLTConfig, tokenize_video
from rlt.samples import synthetic_clip, write_video
from rlt.serve import Client, ServeConfig, ServeError, from_arrow_stream, start, to_arrow_stream
from tests.s3 import S3

TOKEN = "test-token-123"
OPTIONS = {"size": 64, "num_frames": 8, "clips_per_video": 2}
FIELDS = ("tokens", "positions", "lengths", "cu_seqlens", "keep", "frame_indices", "padded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed root, with two videos; a link in it points at a video outside."""
    folder = tmp_path_factory.mktemp("served")
    write_video(folder / "a.mp4", synthetic_clip(40, 96, 128, seed=1), codec="h264")
    write_video(folder / "b.webm", synthetic_clip(24, 80, 112, seed=2, direction=1), codec="vp9")
    outside = write_video(tmp_path_factory.mktemp("outside") / "c.mp4", synthetic_clip(12, 64, 64, seed=3))
    (folder / "link.mp4").symlink_to(outside)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cache root, set before Ray starts so the replica sees it too."""
    folder = tmp_path_factory.mktemp("cache")
    before = os.environ.get("RLT_PREP_CACHE")
    os.environ["RLT_PREP_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["RLT_PREP_CACHE"]
    else:
        os.environ["RLT_PREP_CACHE"] = before


@pytest.fixture(scope="module")
def client(root: Path, cache: Path) -> Iterator[Client]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    try:
        # A token on loopback too, so that one server also serves the tests of authentication.
        config = ServeConfig(port=_free_port(), allow_root=str(root), token=TOKEN, max_body_mb=1)
        with start(config) as server:
            yield Client(server.url, token=TOKEN, timeout=60)
    finally:
        ray.shutdown()


def reference(path: Path, **options: object) -> PackedTokens:
    opts = {**OPTIONS, **options}
    sampling = {k: v for k, v in opts.items() if k in ("size", "num_frames", "clips_per_video", "frame_interval")}
    rlt = {k: v for k, v in opts.items() if k in ("threshold", "compare", "drop_policy")}
    sampling.setdefault("crop", sampling.get("size", 224))
    return tokenize_video(path, sampling=ClipSampling(**sampling), rlt=RLTConfig(**rlt))  # type: ignore[arg-type]


def assert_same(got: PackedTokens, want: PackedTokens) -> None:
    # Compared on the CPU: the wire brings every response there, while `tokenize_video` leaves its
    # tokens where it made them (on a GPU machine, the GPU).
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), name
    assert got.clip_ids == want.clip_ids
    assert (got.tubelet_size, got.patch_size) == (want.tubelet_size, want.patch_size)


def test_wire_round_trip(root: Path) -> None:
    packed = reference(root / "a.mp4")
    back = from_arrow_stream(to_arrow_stream(packed))
    assert_same(back, packed)
    assert back.videos == packed.videos


def test_upload_and_path_equal_tokenize_video(client: Client, root: Path) -> None:
    want = reference(root / "a.mp4")
    assert_same(client.tokenize((root / "a.mp4").read_bytes(), **OPTIONS), want)
    by_path = client.tokenize(server_path="a.mp4", **OPTIONS)
    assert_same(by_path, want)
    assert by_path.videos == ("a.mp4", "a.mp4")
    assert_same(client.tokenize(server_path=f"file://{root / 'a.mp4'}", **OPTIONS), want)
    # A local file is uploaded under its name.
    assert client.tokenize(root / "b.webm", **OPTIONS).videos == ("b.webm", "b.webm")


def test_concurrent_requests_are_correct(client: Client, root: Path) -> None:
    cases = [("a.mp4", {}), ("b.webm", {}), ("a.mp4", {"compare": "run_start"}), ("b.webm", {"threshold": 0.3})] * 2
    wants = [reference(root / name, **options) for name, options in cases]

    def post(case: tuple[str, dict[str, object]]) -> PackedTokens:
        name, options = case
        return client.tokenize((root / name).read_bytes(), **{**OPTIONS, **options})

    with ThreadPoolExecutor(4) as pool:
        gots = list(pool.map(post, cases))
    for got, want in zip(gots, wants, strict=True):
        assert_same(got, want)


def _post(client: Client, query: str, body: bytes | None, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{client.url}/v1/tokenize?{query}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize(
    ("query", "body", "token", "status", "says"),
    [
        ("size=64", b"this is a text file, not a video\n" * 20, TOKEN, 422, "not a video"),
        ("size=64", b"\0" * (1 << 20) + b"!", TOKEN, 413, "at most 1048576"),
        ("size=64", b"", TOKEN, 400, "the body is empty"),
        ("path=/etc/passwd", None, TOKEN, 403, "outside the allowed root"),
        ("path=../outside/c.mp4", None, TOKEN, 403, "outside the allowed root"),
        ("path=link.mp4", None, TOKEN, 403, "outside the allowed root"),
        ("path=missing.mp4", None, TOKEN, 404, "no such file"),
        ("path=s3://bucket/a.mp4", None, TOKEN, 403, "outside the allowed root"),
        ("path=a.mp4&sise=64", None, TOKEN, 400, "unknown option 'sise'"),
        ("path=a.mp4&num_frames=many", None, TOKEN, 422, "num_frames must be an int"),
        ("path=a.mp4&compare=never", None, TOKEN, 422, "compare must be one of"),
        ("path=a.mp4&num_frames=7", None, TOKEN, 422, "not a multiple of tubelet_size"),
        ("path=a.mp4", None, None, 401, "missing bearer token"),
        ("path=a.mp4", None, "not-the-token", 401, "wrong bearer token"),
    ],
)
def test_bad_requests_get_4xx(
    client: Client, query: str, body: bytes | None, token: str | None, status: int, says: str
) -> None:
    code, text = _post(client, query, body, token)
    assert code == status, text
    assert says in text
    assert client.health()


def test_a_chunked_body_over_the_limit_gets_413(client: Client) -> None:
    """No Content-Length to refuse early: the limit holds while the body streams in."""
    url = urllib.parse.urlsplit(client.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    chunks = iter([b"\0" * (256 << 10)] * 6)  # 1.5 MiB against 1 MiB
    headers = {"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"}
    try:
        connection.request("POST", "/v1/tokenize?size=64", body=chunks, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert "the most this server takes" in response.read().decode()
    finally:
        connection.close()
    assert client.health()


def test_status_counts_what_was_posted(client: Client, root: Path) -> None:
    before = client.status()
    client.tokenize((root / "a.mp4").read_bytes(), **OPTIONS)
    client.tokenize(server_path="b.webm", **OPTIONS)
    with pytest.raises(ServeError, match="not a video") as failed:
        client.tokenize(b"not a video at all", **OPTIONS)
    assert failed.value.status == 422
    # The reason names the video, never the replica's temporary copy of the upload.
    assert "uploads-" not in failed.value.message and ".video" not in failed.value.message
    assert "uploads-" not in client.status()["errors"][-1]["reason"]
    with pytest.raises(ServeError) as unknown:
        client.tokenize(b"x", wrong_option=1)
    assert unknown.value.status == 400
    after = client.status()
    assert after["videos_done"] - before["videos_done"] == 2
    assert after["videos_failed"] - before["videos_failed"] == 1
    assert after["clips"] - before["clips"] == 4
    assert after["videos_queued"] == 0
    assert 0 < after["kept_ratio"] <= 1
    delta = {code: n - before["requests"].get(code, 0) for code, n in after["requests"].items()}
    assert {code: n for code, n in delta.items() if n} == {"200": 2, "422": 1, "400": 1}


_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? \S+$'
)


def test_metrics_are_prometheus_text(client: Client) -> None:
    text = client.metrics()
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert _SAMPLE.match(line), line
            float(line.rsplit(" ", 1)[1])
            name = line.split("{")[0].split(" ")[0]
            assert re.sub(r"_(bucket|sum|count)$", "", name) in typed, name
    assert "rlt_serve_videos_done_total" in typed
    with pytest.raises(ServeError) as e:
        Client(client.url).metrics()
    assert e.value.status == 401


def test_uploads_are_removed(client: Client, cache: Path, root: Path) -> None:
    client.tokenize((root / "a.mp4").read_bytes(), **OPTIONS)
    folders = list((cache / "serve").iterdir())
    assert folders and all(f.name.startswith("uploads-") for f in folders)
    assert [p for f in folders for p in f.iterdir()] == []


def test_other_hosts_need_a_token() -> None:
    with pytest.raises(ValueError, match="give a bearer token with --token"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="0.0.0.0", token="secret")
    ServeConfig(host="localhost")
    result = CliRunner().invoke(app, ["serve", "--host", "192.0.2.7", "--port", str(_free_port())], env={})
    assert result.exit_code == 2
    assert "give a bearer token" in result.output


def test_the_command_serves_until_sigterm(root: Path, cache: Path, tmp_path: Path, s3_server: S3) -> None:
    """`rlt-prep serve` as a user runs it: an embedded Ray of its own, objects under an allowed root
    on S3 (moto on loopback) answered as `tokenize_video` answers for the same file, others refused,
    and exit 0 on SIGTERM."""
    bucket = s3_server.bucket()
    for name in ("a.mp4", "b.webm"):
        s3_server.put(f"{bucket}/videos/{name}", (root / name).read_bytes())
    s3_server.put(f"{bucket}/other/c.mp4", (root / "a.mp4").read_bytes())
    port = _free_port()
    env = {**os.environ, **s3_server.env, "RLT_PREP_CACHE": str(cache), "RLT_PREP_SERVE_TOKEN": TOKEN}
    command = [sys.executable, "-m", "rlt", "serve", "--port", str(port), "--allow-root", f"{bucket}/videos"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = Client(f"http://127.0.0.1:{port}", token=TOKEN, timeout=60)
        deadline = time.monotonic() + 90
        while not client.health():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert_same(client.tokenize(server_path="a.mp4", **OPTIONS), reference(root / "a.mp4"))
        assert_same(client.tokenize(server_path=f"{bucket}/videos/b.webm", **OPTIONS), reference(root / "b.webm"))
        assert_same(client.tokenize(root / "a.mp4", **OPTIONS), reference(root / "a.mp4"))
        for path, status in [
            (f"{bucket}/other/c.mp4", 403),
            (f"{bucket}/videos/../other/c.mp4", 403),
            ("/etc/passwd", 403),
            ("missing.mp4", 404),
        ]:
            with pytest.raises(ServeError) as refused:
                client.tokenize(server_path=path, **OPTIONS)
            assert refused.value.status == status, refused.value
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
    assert not client.health()


def test_retry_on_a_server_that_watches_nothing_is_404(client: Client) -> None:
    with pytest.raises(ServeError) as e:
        client.retry()
    assert e.value.status == 404 and "--watch SOURCE" in str(e.value)
    assert client.health() and client.status()["draining"] is False
