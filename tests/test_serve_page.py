"""The status page of `rlt-prep serve` (``GET /``), rendered in headless Chromium: it shows what
``/v1/status`` says, asks for the token on a server that has one, keeps its last numbers when the
server goes away, and draws the watch job's section when the status has one; and the history and
errors behind it, in `Stats`."""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rlt.samples import synthetic_clip, write_video
from rlt.serve import Client, ServeConfig, ServeError, start
from rlt.serve._page import PAGE
from rlt.serve._stats import ERRORS_KEPT, HISTORY_EVERY_S, HISTORY_SAMPLES, Stats
from tests.chromium import chromium, render

TOKEN = "page-token-456"
OPTIONS = {"size": 64, "num_frames": 8, "clips_per_video": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A server with a token that has tokenized one video and failed one (``broken.mp4``)."""
    chromium()  # before Ray starts: without a browser there is nothing to test here
    ray = pytest.importorskip("ray")
    cache = tmp_path_factory.mktemp("cache")
    before = os.environ.get("RLT_PREP_CACHE")
    os.environ["RLT_PREP_CACHE"] = str(cache)  # set before Ray starts, so the replica sees it too
    video = write_video(tmp_path_factory.mktemp("videos") / "a.mp4", synthetic_clip(24, 80, 112, seed=1))
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    try:
        with start(ServeConfig(port=_free_port(), token=TOKEN)) as server:
            client = Client(server.url, token=TOKEN, timeout=60)
            client.tokenize(video, **OPTIONS)
            with pytest.raises(ServeError, match="not a video"):
                client.tokenize(b"not a video at all", name="broken.mp4", **OPTIONS)
            yield client
    finally:
        ray.shutdown()
        if before is None:
            del os.environ["RLT_PREP_CACHE"]
        else:
            os.environ["RLT_PREP_CACHE"] = before


def _text(dom: str, id: str) -> str:
    """The text of the element with this id (one without children, as the page's numbers are)."""
    found = re.search(rf'id="{re.escape(id)}"[^>]*>([^<]*)<', dom)
    assert found, f"no element #{id} in the page"
    return html.unescape(found.group(1))


def _chart_line(dom: str, id: str) -> str:
    """The ``d`` of the line of the chart with this id."""
    svg = re.search(rf'<svg[^>]*id="{id}".*?</svg>', dom, re.S)
    assert svg, f"no chart #{id}"
    line = re.search(r'<path class="line" d="([^"]+)"', svg.group(0))
    assert line, f"chart #{id} has no line"
    return line.group(1)


def _assert_not_blank(png: Path) -> None:
    from PIL import Image  # matplotlib's dependency, so always installed

    with Image.open(png) as image:
        assert image.format == "PNG"
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, f"{png} looks blank: {len(colours or [])} colours"


def test_the_page_shows_the_status(client: Client, tmp_path: Path) -> None:
    status = client.status()
    assert (status["videos_done"], status["videos_failed"]) == (1, 1)
    dom = render(f"{client.url}/#token={TOKEN}", tmp_path / "profile", budget_ms=3000)
    assert _text(dom, "videos_done") == "1"
    assert _text(dom, "videos_failed") == "1"
    assert _text(dom, "videos_queued") == "0"
    assert _text(dom, "clips") == f"{status['clips']:,}"
    assert _text(dom, "kept_tokens") == f"{status['kept_tokens']:,}"
    assert _text(dom, "kept_ratio") == f"{100 * status['kept_ratio']:.1f} %"
    assert _text(dom, "requests-200") == "200" and _text(dom, "requests-422") == "422"
    errors = re.search(r'<table id="errors">.*?</table>', dom, re.S)
    assert errors and "broken.mp4" in errors.group(0) and "not" in errors.group(0)
    assert _chart_line(dom, "chart-videos").startswith("M")
    assert _chart_line(dom, "chart-tokens").startswith("M")
    assert 'id="banner" hidden' in dom
    assert 'id="watch" hidden' in dom  # this server runs no watch job

    png = tmp_path / "page.png"
    render(f"{client.url}/#token={TOKEN}", tmp_path / "profile", budget_ms=3000, screenshot=png, window=(1200, 660))
    _assert_not_blank(png)
    if save := os.environ.get("RLT_PREP_SAVE_SCREENSHOT"):  # the README's picture: docs/serve-status-page.png
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, save)


def test_the_page_needs_the_token_for_its_data(client: Client, tmp_path: Path) -> None:
    # The page itself loads without the token, and holds no data: it is the same static text.
    with urllib.request.urlopen(f"{client.url}/", timeout=30) as response:
        assert response.status == 200 and response.read().decode() == PAGE
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    dom = render(f"{client.url}/", tmp_path / "profile", budget_ms=3000)
    assert "401: this server needs its bearer token" in html.unescape(dom)
    assert _text(dom, "videos_done") == "\u2013"  # nothing was shown
    wrong = render(f"{client.url}/status#token=wrong", tmp_path / "profile", budget_ms=3000)
    assert "401: the token in this page's address" in html.unescape(wrong)


# --- the page against a stand-in for the server, which can answer anything --------------------


class _Stub(ThreadingHTTPServer):
    """Serves the page, and answers /v1/status with ``answers`` in turn (the last one again and
    again): a dict as JSON, an int as that HTTP status, None by closing the connection unanswered."""

    def __init__(self, answers: list[dict[str, Any] | int | None]) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.answers, self.authorization = answers, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    server: _Stub

    def do_GET(self) -> None:
        if self.path == "/":
            return self._send(200, "text/html", PAGE.encode())
        self.server.authorization.append(self.headers.get("Authorization"))
        answer = self.server.answers.pop(0) if len(self.server.answers) > 1 else self.server.answers[0]
        if answer is None:
            self.close_connection = True  # no response at all: to the browser, the server is gone
        elif isinstance(answer, int):
            self._send(answer, "application/json", b'{"detail": "no"}')
        else:
            self._send(200, "application/json", json.dumps(answer).encode())

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub([])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _status(**watch: Any) -> dict[str, Any]:
    now = 1_700_000_000.0
    status: dict[str, Any] = {
        "videos_done": 12, "videos_queued": 3, "videos_failed": 2, "clips": 24, "kept_tokens": 123_456,
        "dense_tokens": 200_000, "kept_ratio": 0.61728, "uptime_s": 3725.0, "videos_per_s": 0.5,
        "clips_per_s": 1.0, "tokens_per_s": 4567.8, "requests": {"200": 12, "422": 2},
        "history": [[now - 60, 0, 0, 0], [now - 30, 5, 50_000, 1], [now, 12, 123_456, 2]],
        "errors": [{"time": now - 20, "video": "<b>bold</b>.mp4", "reason": "moov atom not found"}],
    }  # fmt: skip
    if watch:
        status["watch"] = watch
    return status


WATCH = {
    "source": "s3://bucket/incoming", "dataset": "/data/tokens", "state": "tokenizing", "generation": 7,
    "shards": 41, "videos_done": 900, "videos_queued": 35, "videos_failed": 4, "clips": 1800,
    "kept_tokens": 9_876_543, "dense_tokens": 20_000_000, "kept_ratio": 0.4938, "videos_per_s": 3.2,
    "tokens_per_s": 35_000.0, "errors": [{"time": 1_699_999_990.0, "video": "w/late.webm", "reason": "truncated"}],
    "history": [[1_699_999_000.0, 0, 0, 0], [1_699_999_500.0, 400, 4_000_000, 2], [1_700_000_000.0, 900, 9_876_543, 4]],
}  # fmt: skip


def test_the_page_draws_the_watch_job(stub: _Stub, tmp_path: Path) -> None:
    chromium()
    stub.answers = [_status(**WATCH)]
    dom = render(stub.url + "/", tmp_path / "profile", budget_ms=1000)
    assert stub.authorization and set(stub.authorization) == {None}  # no token in the address, none sent
    assert 'id="watch" hidden' not in dom
    assert _text(dom, "watch-state") == "tokenizing"
    assert _text(dom, "watch-source") == "s3://bucket/incoming"
    assert (_text(dom, "watch-generation"), _text(dom, "watch-shards")) == ("7", "41")
    assert (_text(dom, "watch-videos_done"), _text(dom, "watch-videos_queued")) == ("900", "35")
    assert _text(dom, "watch-kept_tokens") == "9,876,543"
    assert "w/late.webm" in dom and "truncated" in dom
    assert _chart_line(dom, "watch-chart-videos").count("H") == 2  # two intervals between three samples
    assert _text(dom, "uptime_s") == "1h 02m"
    # A video's name is text, never markup.
    assert "&lt;b&gt;bold&lt;/b&gt;.mp4" in dom and "<b>bold" not in dom


def test_the_page_keeps_its_numbers_when_the_server_goes(stub: _Stub, tmp_path: Path) -> None:
    chromium()
    stub.answers = [_status(), None]
    dom = html.unescape(render(stub.url + "/#token=abc", tmp_path / "profile", budget_ms=3000))
    assert len(stub.authorization) >= 2 and stub.authorization[0] == "Bearer abc"
    assert "Cannot reach the server" in dom
    assert _text(dom, "videos_done") == "12" and _text(dom, "kept_tokens") == "123,456"
    assert _text(dom, "kept_ratio") == "61.7 %"


# --- the history and errors behind the page -----------------------------------------------------


def test_stats_keep_a_bounded_history_and_the_last_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("rlt.serve._stats.time.time", lambda: clock[0])
    stats = Stats()
    clock[0] += 1
    stats.done(clips=2, kept=10, dense=20)  # within HISTORY_EVERY_S of the start: not sampled
    assert stats.snapshot()["history"] == [[1000.0, 0, 0, 0], [1001.0, 1, 10, 0]]  # ends with now's
    clock[0] += HISTORY_EVERY_S
    stats.failed(video="x.mp4", reason="bad")
    snapshot = stats.snapshot()
    assert snapshot["history"] == [[1000.0, 0, 0, 0], [1006.0, 1, 10, 1]]
    assert snapshot["errors"] == [{"time": 1006.0, "video": "x.mp4", "reason": "bad"}]
    for k in range(2 * HISTORY_SAMPLES):
        clock[0] += HISTORY_EVERY_S
        stats.failed(video=f"{k}.mp4", reason="bad")
    snapshot = stats.snapshot()
    assert len(snapshot["history"]) == HISTORY_SAMPLES
    assert snapshot["history"][-1] == [clock[0], 1, 10, 2 * HISTORY_SAMPLES + 1]
    assert [e["video"] for e in snapshot["errors"]] == [f"{k}.mp4" for k in range(2 * HISTORY_SAMPLES)][-ERRORS_KEPT:]
    assert f"rlt_serve_videos_failed_total {2 * HISTORY_SAMPLES + 1}" in stats.prometheus()
