"""`Client`: the HTTP API from Python, with the standard library alone."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rlt.pipeline import PackedTokens
from rlt.serve._wire import from_arrow_stream


class ServeError(RuntimeError):
    """The server answered with an error; ``status`` is its HTTP status, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """Talks to `rlt-prep serve`.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        token: the bearer token, where the server wants one.
        timeout: seconds to wait for each answer.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 300.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def tokenize(
        self, video: bytes | str | os.PathLike[str] | None = None, *, server_path: str | None = None, **options: Any
    ) -> PackedTokens:
        """One video's clips, tokenized by the server: a batch that says what each clip is (video,
        clip number, source frames, padded tubelets).

        Args:
            video: the video's bytes, or a local file whose bytes are uploaded.
            server_path: instead of ``video``, a file under the server's ``--allow-root`` (relative
                to it, or absolute), read where the server runs.
            **options: the fields of `ClipSampling` and `RLTConfig`, and ``backend``; ``name``
                names the video in the response (default: the file's name, or ``upload``).

        Raises:
            ServeError: the server refused the request (its message says why).
        """
        if (video is None) == (server_path is None):
            raise ValueError("give either video (bytes or a local file) or server_path")
        query = {k: "none" if v is None else str(v) for k, v in options.items()}
        body: bytes | None = None
        if server_path is not None:
            query["path"] = server_path
        elif isinstance(video, bytes):
            body = video
        else:
            path = Path(os.fspath(video))  # type: ignore[arg-type]
            query.setdefault("name", path.name)
            body = path.read_bytes()
        data = self._call("POST", "/v1/tokenize?" + urllib.parse.urlencode(query), body)
        return from_arrow_stream(data)

    def status(self) -> dict[str, Any]:
        """Videos done, queued and failed, throughput, kept ratio and requests by HTTP status; in
        watch mode, the watch job's under ``"watch"``."""
        return json.loads(self._call("GET", "/v1/status"))

    def retry(self) -> None:
        """Watch mode: the failed videos are tried again at the next round (``POST /v1/retry``).

        Raises:
            ServeError: 404 from a server that watches nothing.
        """
        self._call("POST", "/v1/retry")

    def health(self) -> bool:
        """Whether the server answers ``/healthz`` with OK."""
        try:
            return json.loads(self._call("GET", "/healthz")).get("status") == "ok"
        except (ServeError, OSError):
            return False

    def metrics(self) -> str:
        """``/metrics``, in Prometheus' text format."""
        return self._call("GET", "/metrics").decode()

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except ValueError:
                message = raw.decode(errors="replace")
            raise ServeError(e.code, str(message)) from None
